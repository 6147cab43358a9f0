"""A deterministic generator of the demo datasets (seeded, no network): the ``generate`` stage of dvc.yaml.

Three datasets, one per default recipe:

- ``acme_support``: an online shop's support requests; ``completion`` is ``"<category> | <reply>"``.
- ``globex_support``: a telecom's support requests, its own categories and a terser reply style.
- ``intent_routing``: an employee help desk; ``{"text", "label"}`` rows for sequence classification.

Each category has many request templates with slot fills, greetings, sign-offs, typos and casing
variants, plus a share of deliberately confusable requests whose label is decided by what the customer
asks for (a refund vs. a return of a broken item) and of follow-ups that quote an earlier request of
another category before the real one, so the task is not trivial. The raw output also holds
what a real export holds (repeated rows, stray whitespace, empty requests) for the ``clean`` stage.

Run: ``python -m adapter_registry.data.demo --dataset acme_support --rows 1100 --seed 7 --out data/01_raw/acme_support.jsonl``
"""

from __future__ import annotations

import argparse
import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

from adapter_registry.data.stages import normalise_text


@dataclass(frozen=True)
class Category:
    """A label with the requests that mean it and the one-line replies it gets."""

    name: str
    requests: tuple[str, ...]
    replies: tuple[str, ...] = ()


SLOTS: dict[str, tuple[str, ...]] = {
    "item": (
        "headphones",
        "blender",
        "jacket",
        "phone case",
        "coffee maker",
        "desk lamp",
        "backpack",
        "sneakers",
        "kettle",
        "monitor",
        "keyboard",
        "watch",
        "tent",
        "vacuum",
        "toaster",
        "speaker",
        "jeans",
        "mattress",
        "camera",
        "charger",
        "sofa cover",
        "air fryer",
    ),
    "city": (
        "Leeds",
        "Lyon",
        "Austin",
        "Porto",
        "Dublin",
        "Denver",
        "Munich",
        "Oslo",
        "Seattle",
        "Turin",
        "Ghent",
        "Bristol",
    ),
    "code": ("SAVE10", "SPRING15", "WELCOME5", "FREESHIP", "VIP20", "BLACKFRI", "SUMMER25"),
    "color": ("black", "navy", "red", "white", "olive", "grey", "pink"),
    "device": ("an iPhone", "a Pixel", "a MacBook", "Windows 11", "a Galaxy tab", "a PS5"),
    "plan": ("Basic 50", "Fibre 500", "Unlimited Max", "Family 4", "Starter"),
    "country": ("Spain", "Japan", "Canada", "Mexico", "Italy", "Turkey", "Brazil", "Greece"),
    "app": ("Excel", "Photoshop", "Zoom", "Slack", "Tableau", "Python", "Visual Studio", "Figma"),
    "room": ("Atlas", "Borealis", "Cedar", "the big boardroom", "Delta", "room 4.12"),
    "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"),
}


def _fill(template: str, rng: random.Random) -> str:
    values = {name: rng.choice(options) for name, options in SLOTS.items()}
    values["order"] = f"#{rng.randint(10000, 99999)}"
    values["days"] = str(rng.randint(2, 14))
    values["months"] = str(rng.randint(2, 23))
    values["amount"] = f"${rng.randint(5, 240)}.{rng.randint(0, 99):02d}"
    values["ticket"] = f"INC{rng.randint(1000, 9999)}"
    return template.format(**values)


# ----------------------------------------------------------------------------------------------- acme
ACME = (
    Category(
        "order_status",
        (
            "where is my order {order}?",
            "my {item} hasn't arrived yet, order {order}",
            "when will order {order} be delivered?",
            "tracking for {order} hasn't updated in {days} days",
            "has my {item} shipped yet?",
            "what's the status of order {order}",
            "it's been {days} days and still no {item}",
            "any update on the delivery of my {item}?",
            "the courier says delivered but I have no {item}",
            "is order {order} still coming",
        ),
        (
            "We are tracing your parcel now.",
            "It is with the courier, due soon.",
            "I flagged the delay to the courier.",
        ),
    ),
    Category(
        "refund",
        (
            "I want my money back for the {item}",
            "please refund order {order}",
            "when will I get the refund for my {item}?",
            "I returned the {item} {days} days ago, still no refund",
            "how long do refunds take to reach my card",
            "can I get a refund instead of store credit",
            "refund for {order} has not shown up on my statement",
            "I'd like a full refund for the {item}",
        ),
        (
            "Refund issued; allow 3-5 days.",
            "I have started your refund.",
            "Refund approved to your card.",
        ),
    ),
    Category(
        "return_item",
        (
            "how do I return the {item}?",
            "I'd like to send back the {item}, it doesn't fit",
            "can I exchange the {item} for a {color} one",
            "I need a return label for order {order}",
            "the {item} is the wrong colour, I want to send it back",
            "what's your return window for a {item}",
            "can I drop the {item} return at a shop in {city}",
            "I changed my mind about the {item}, how to return",
        ),
        (
            "A return label is in your inbox.",
            "Returns are free within 30 days.",
            "Exchange set up; label emailed.",
        ),
    ),
    Category(
        "cancel_order",
        (
            "please cancel order {order}",
            "I ordered the {item} by mistake, cancel it",
            "can I still cancel before it ships?",
            "stop order {order}, I don't need it anymore",
            "cancel the {item} from my last order",
            "I want to cancel my order {order} placed today",
            "how do I cancel an order I just made",
            "please don't send the {item}, I cancelled",
        ),
        (
            "Your order is cancelled.",
            "Cancelled before dispatch.",
            "Order stopped; no charge.",
        ),
    ),
    Category(
        "damaged_item",
        (
            "the {item} arrived broken",
            "my {item} came with a crack in it",
            "the box was crushed and the {item} is damaged",
            "parts of the {item} are missing",
            "the {item} was dented on arrival",
            "received a scratched {item} in order {order}",
            "the {item} leaks straight out of the box",
            "my {item} was smashed in delivery",
        ),
        (
            "Sorry! A replacement is on its way.",
            "Send a photo and we will replace it.",
            "Free replacement arranged.",
        ),
    ),
    Category(
        "payment_issue",
        (
            "my card was declined buying the {item}",
            "I was charged twice for order {order}",
            "payment failed but the money left my account",
            "why was I charged {amount}?",
            "PayPal won't go through at checkout",
            "there's a charge of {amount} I don't recognise",
            "checkout keeps saying payment error",
            "can I pay for the {item} in instalments",
        ),
        (
            "Duplicate charge removed.",
            "The pending charge will drop off.",
            "Checkout unlocked; please retry.",
        ),
    ),
    Category(
        "account_access",
        (
            "I can't log in to my account",
            "I forgot my password",
            "the password reset email never arrives",
            "my account is locked after too many attempts",
            "how do I change the email on my account",
            "it says my account doesn't exist",
            "two-factor code isn't coming to my phone",
            "I can't sign in on {device}",
        ),
        (
            "A reset link is in your inbox.",
            "Your account is unlocked.",
            "Login details updated.",
        ),
    ),
    Category(
        "shipping_address",
        (
            "I need to change the delivery address for order {order}",
            "wrong address on my order, I moved to {city}",
            "can you ship order {order} to {city} instead",
            "I typed the wrong postcode for the {item}",
            "please deliver the {item} to my work address",
            "update my address to {city} before it ships",
            "can I send the {item} to a friend in {city}",
        ),
        (
            "Delivery address updated.",
            "The courier has the new address.",
            "Done, it goes to the new address.",
        ),
    ),
    Category(
        "discount_code",
        (
            "my promo code {code} doesn't work",
            "the discount wasn't applied to order {order}",
            "do you have a coupon for the {item}?",
            "code {code} says expired",
            "I forgot to use {code} on my order",
            "is there a student discount",
            "{code} gives an error at checkout",
            "can I combine {code} with the sale price",
        ),
        (
            "Discount applied to your order.",
            "Here is a new code: THANKS10.",
            "I matched the better price.",
        ),
    ),
    Category(
        "product_question",
        (
            "is the {item} waterproof?",
            "does the {item} come in {color}?",
            "what size {item} should I get",
            "is the {item} compatible with {device}?",
            "when will the {item} be back in stock",
            "how heavy is the {item}",
            "what's the difference between the two {item} models",
            "does the {item} need batteries",
        ),
        (
            "See Specifications on the product page.",
            "Back in stock next week.",
            "Yes, see the size guide.",
        ),
    ),
    Category(
        "warranty",
        (
            "my {item} stopped working after {months} months, is it under warranty",
            "how long is the warranty on the {item}?",
            "can the {item} be repaired under guarantee",
            "the {item} broke after {months} months of use",
            "do I need the receipt for a warranty claim",
            "does the warranty cover the {item} battery",
            "my {item} died just outside warranty",
        ),
        (
            "Covered; warranty repair opened.",
            "2-year warranty; claim started.",
            "Send the serial number to claim.",
        ),
    ),
)

ACME_CONFUSABLE: tuple[tuple[str, str], ...] = (
    ("the {item} arrived broken, I just want my money back", "refund"),
    ("the {item} arrived broken, can you send a new one", "damaged_item"),
    ("I'd like to send back the {item} and get a refund", "return_item"),
    ("I cancelled order {order} but was still charged", "refund"),
    ("I was charged {amount} for an order I never placed", "payment_issue"),
    ("order {order} is late, please cancel it", "cancel_order"),
    ("order {order} is late, where is it", "order_status"),
    ("the {item} stopped working after {days} days", "damaged_item"),
    ("the {item} stopped working after {months} months", "warranty"),
    ("I can't log in to check my order {order}", "account_access"),
    ("my order {order} went to my old address", "shipping_address"),
    ("the {item} price dropped, can I get the difference", "discount_code"),
    ("can I return the {item} if it isn't compatible with {device}", "return_item"),
    ("is the {item} covered if it arrives damaged", "warranty"),
)

# ----------------------------------------------------------------------------------------------- globex
GLOBEX = (
    Category(
        "outage",
        (
            "internet is down in {city}",
            "no signal at all since this morning",
            "is there an outage in {city}?",
            "my broadband dropped and won't come back",
            "the whole street has no internet",
            "all lights on the router are red",
            "mobile data stopped working in {city}",
        ),
        (
            "Known outage; fix within 4 hours.",
            "Engineers on it; ETA tonight.",
            "No outage; restart the router.",
        ),
    ),
    Category(
        "slow_speed",
        (
            "my internet is really slow",
            "I pay for {plan} but get 5 Mbps",
            "speeds drop every evening",
            "wifi is slow upstairs",
            "downloads crawl since {weekday}",
            "video calls keep buffering",
            "speed test shows a tenth of my plan",
        ),
        (
            "Line test started; SMS in 1 hour.",
            "Line reset; move the router higher.",
            "Logged; an engineer will call.",
        ),
    ),
    Category(
        "bill_dispute",
        (
            "my bill is {amount} higher than usual",
            "why was I charged {amount} this month",
            "I was billed for a plan I don't have",
            "there's a late fee I don't agree with",
            "my discount disappeared from the bill",
            "charged for roaming I never used",
            "bill shows {amount} in extras",
        ),
        (
            "Charge reviewed; credit applied.",
            "Bill corrected; statement sent.",
            "Dispute opened; billing paused.",
        ),
    ),
    Category(
        "plan_change",
        (
            "I want to upgrade to {plan}",
            "can I move to a cheaper plan",
            "switch me to {plan} please",
            "what plans do you have with more data",
            "downgrade my plan at the end of the month",
            "add a line to my {plan} plan",
            "is {plan} available in {city}",
        ),
        (
            "Plan change from next bill.",
            "Upgrade done; active now.",
            "Options sent by email.",
        ),
    ),
    Category(
        "roaming",
        (
            "does my plan work in {country}?",
            "I'm travelling to {country} next week, will data work",
            "no service since landing in {country}",
            "how much is roaming in {country}",
            "turn on roaming for my number",
            "can I buy a travel pass for {country}",
        ),
        (
            "Roaming on; travel pass added.",
            "Travel pass: 5 per day.",
            "Restart and pick a partner network.",
        ),
    ),
    Category(
        "sim_card",
        (
            "my SIM card isn't recognised",
            "I lost my phone, block my SIM",
            "I need an eSIM for {device}",
            "the SIM says invalid after the update",
            "send me a new SIM card",
            "nano SIM doesn't fit my new phone",
        ),
        (
            "New SIM posted; 2 days.",
            "SIM blocked; replacement sent.",
            "eSIM QR code emailed.",
        ),
    ),
    Category(
        "number_porting",
        (
            "I want to keep my number when I switch to you",
            "transfer my number from my old provider",
            "my number port failed",
            "how long does porting a number take",
            "I have a PAC code, what now",
            "my old number still isn't active after {days} days",
        ),
        (
            "Port booked for tomorrow.",
            "Port retried; live in 24 hours.",
            "Send the PAC code to start.",
        ),
    ),
    Category(
        "router_setup",
        (
            "how do I set up my new router",
            "what's the wifi password on the router",
            "can't connect {device} to the router",
            "I want to change my wifi name",
            "the router light keeps blinking orange after setup",
            "how do I set up a mesh extender",
            "need to open a port on the router",
        ),
        (
            "Setup guide sent by email.",
            "Wifi key: sticker under the router.",
            "Change it at 192.168.1.1.",
        ),
    ),
    Category(
        "contract_cancel",
        (
            "I want to cancel my contract",
            "how much is the early exit fee",
            "cancel my broadband, I'm leaving",
            "my contract ends in {months} months, can I leave now",
            "close my account and stop billing",
            "I'm switching provider, end my contract",
        ),
        (
            "Cancellation booked; final bill sent.",
            "Exit fee shown on your account.",
            "Before you go: 20% off a year?",
        ),
    ),
    Category(
        "relocation",
        (
            "I'm moving to {city}, can I take my broadband",
            "moving house on {weekday}, transfer my service",
            "new address in {city}, what do I do",
            "can I keep my plan after moving",
            "book an install at my new flat in {city}",
            "I moved and the line isn't active",
        ),
        (
            "Move booked for your moving day.",
            "Install slots sent by SMS.",
            "Your plan moves at no cost.",
        ),
    ),
    Category(
        "data_allowance",
        (
            "I ran out of data",
            "how much data do I have left",
            "can I buy extra data",
            "my data runs out too fast",
            "add a data booster to my plan",
            "why did I use 10 GB in {days} days",
        ),
        (
            "Booster added: 5 GB.",
            "2.3 GB left this month.",
            "Usage breakdown sent by SMS.",
        ),
    ),
)

GLOBEX_CONFUSABLE: tuple[tuple[str, str], ...] = (
    ("internet is slow and keeps dropping in {city}", "slow_speed"),
    ("internet dropped completely in {city}", "outage"),
    ("charged for extra data I never used", "bill_dispute"),
    ("ran out of data, can I move to a bigger plan", "plan_change"),
    ("ran out of data, add more for this month", "data_allowance"),
    ("no service since arriving in {country}", "roaming"),
    ("no service since the SIM swap", "sim_card"),
    ("moving to {city}, will the router work there", "relocation"),
    ("leaving because I'm moving abroad, cancel the contract", "contract_cancel"),
    ("switching to you, how do I keep my number", "number_porting"),
    ("new router is slow on {device}", "router_setup"),
)

# ----------------------------------------------------------------------------------------------- intent routing
INTENTS = (
    Category(
        "password_reset",
        (
            "I forgot my password",
            "reset my windows password please",
            "my password expired",
            "locked out of my account after the holidays",
            "can't log in, password not accepted",
            "need to change my password",
            "how do I reset my email password",
        ),
    ),
    Category(
        "vpn_access",
        (
            "VPN won't connect from home",
            "I need VPN access for remote work",
            "VPN keeps dropping",
            "can't reach the intranet from home",
            "VPN says certificate error",
            "request VPN for a contractor",
            "the VPN client asks for a token I don't have",
        ),
    ),
    Category(
        "hardware_fault",
        (
            "my laptop won't turn on",
            "screen flickering on my monitor",
            "keyboard has dead keys",
            "laptop battery drains in an hour",
            "my docking station stopped working",
            "the laptop fan is very loud",
            "mouse stopped responding",
        ),
    ),
    Category(
        "hardware_request",
        (
            "I need a second monitor",
            "can I get a new laptop",
            "request a headset for calls",
            "I'd like an ergonomic keyboard",
            "need a phone for the on-call rota",
            "order a webcam for me",
            "can I have a standing desk",
        ),
    ),
    Category(
        "software_install",
        (
            "please install {app} on my laptop",
            "I need a {app} license",
            "{app} install fails with an error",
            "can I get admin rights to install {app}",
            "update {app} to the latest version",
            "{app} is missing from the software centre",
        ),
    ),
    Category(
        "payroll",
        (
            "my salary is wrong this month",
            "I didn't get paid on {weekday}",
            "where is my payslip",
            "tax code on my payslip looks wrong",
            "overtime missing from my pay",
            "change my bank account for salary",
            "when is the bonus paid",
        ),
    ),
    Category(
        "expense_claim",
        (
            "how do I claim my taxi receipt",
            "my expense claim was rejected",
            "when are expenses reimbursed",
            "submit hotel costs from the {city} trip",
            "I lost the receipt for a client dinner",
            "mileage claim for a visit to {city}",
            "can I expense a {app} subscription",
        ),
    ),
    Category(
        "leave_request",
        (
            "book holiday from {weekday}",
            "how many vacation days do I have left",
            "I'm sick today",
            "request parental leave",
            "cancel my annual leave next week",
            "can I carry over unused days",
            "need a day off on {weekday} for an appointment",
        ),
    ),
    Category(
        "onboarding",
        (
            "new starter joining on {weekday}, what do we need",
            "set up accounts for a new hire",
            "my new team member has no access yet",
            "onboarding checklist for an intern",
            "a contractor starts {weekday}, please prepare",
            "first day tomorrow, where do I go",
        ),
    ),
    Category(
        "security_incident",
        (
            "I clicked a link in a phishing email",
            "my laptop was stolen",
            "someone asked for my password by phone",
            "suspicious login alert on my account",
            "I think I have a virus",
            "I sent customer data to the wrong person",
            "strange pop-ups asking for my credentials",
        ),
    ),
    Category(
        "printer_issue",
        (
            "the printer on floor {days} is jammed",
            "can't print to the office printer",
            "printer out of toner",
            "printing comes out blank",
            "add the new printer to my laptop",
            "scanner won't send to email",
        ),
    ),
    Category(
        "meeting_room",
        (
            "book {room} for {weekday} afternoon",
            "the screen in {room} doesn't work",
            "need a room for 12 people",
            "{room} is double booked",
            "cancel my booking in {room}",
            "video conferencing broken in {room}",
        ),
    ),
)

INTENT_CONFUSABLE: tuple[tuple[str, str], ...] = (
    ("my laptop is slow, can I get a new one", "hardware_request"),
    ("my laptop is slow and keeps freezing", "hardware_fault"),
    ("new starter needs a laptop on {weekday}", "onboarding"),
    ("I got an email asking me to reset my password", "security_incident"),
    ("password expired and now VPN won't connect", "password_reset"),
    ("VPN asks for my password every five minutes", "vpn_access"),
    ("my salary doesn't include the expenses I claimed", "expense_claim"),
    ("overtime from the {city} trip missing from my pay", "payroll"),
    ("the printer in {room} is broken", "printer_issue"),
    ("the screen in {room} is broken", "meeting_room"),
    ("my monitor is broken, I need a replacement", "hardware_fault"),
    ("I need {app} to print to PDF", "software_install"),
    ("I'm off sick, who covers my on-call phone", "leave_request"),
    ("someone used my laptop while I was away", "security_incident"),
    ("my new hire can't log in", "onboarding"),
    ("I can't log in after my password change", "password_reset"),
)

GREETINGS = ("hi, ", "hello, ", "hey, ", "good morning, ", "dear support, ", "hi team, ", "hello there. ")
SIGN_OFFS = (
    " thanks",
    " thank you!",
    ", please help",
    " asap",
    ". cheers",
    ", any help appreciated",
    " - thanks in advance",
    "??",
    "!",
)
GLOBEX_PREFIXES = ("", "", "", "", "account 88{days}41: ", "re: ticket {ticket} - ", "urgent: ")


def _typo(text: str, rng: random.Random) -> str:
    """Swap two neighbouring letters, drop one or double one in a word of four letters or more."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    kind = rng.random()
    if kind < 0.5:
        w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    elif kind < 0.8:
        w = w[:j] + w[j + 1 :]
    else:
        w = w[:j] + w[j] + w[j:]
    words[i] = w
    return " ".join(words)


def _dress(text: str, rng: random.Random, *, prefixes: tuple[str, ...] = ()) -> str:
    """Politeness, typos and casing: how people actually write to support."""
    if rng.random() < 0.15:
        text = _typo(text, rng)
    if rng.random() < 0.35:
        text = rng.choice(GREETINGS) + text
    if rng.random() < 0.3:
        text = text.rstrip("?!.") + rng.choice(SIGN_OFFS)
    if prefixes:
        text = _fill(rng.choice(prefixes), rng) + text
    if rng.random() < 0.25:
        return text.lower()
    return text[0].upper() + text[1:]


def _raw_noise(text: str, rng: random.Random) -> str:
    """What an export adds: stray spaces, tabs and trailing newlines (the clean stage removes them)."""
    roll = rng.random()
    if roll < 0.03:
        return "  " + text + " "
    if roll < 0.05:
        return text.replace(" ", "  ", 1)
    if roll < 0.06:
        return text + "\t\n"
    return text


PIVOTS = (
    "that's sorted now, but",
    "ignore that, my real issue:",
    "old problem fixed. new one:",
    "update: solved. now",
    "scratch that -",
    "never mind that one;",
)


def _pick(
    categories: tuple[Category, ...],
    confusable: tuple[tuple[str, str], ...],
    share: float,
    follow_up_share: float,
    rng: random.Random,
) -> tuple[str, Category]:
    """A template and its category: a plain request, a confusable one, or a follow-up.

    A follow-up quotes a request of another category, then pivots to the real one: the label is the
    request after the pivot (a bag of words mixes both; a model must read the order).
    """
    by_name = {c.name: c for c in categories}
    roll = rng.random()
    if roll < share:
        template, label = rng.choice(confusable)
        return template, by_name[label]
    category = rng.choice(categories)
    if roll < share + follow_up_share:
        earlier = rng.choice([c for c in categories if c is not category])
        first = rng.choice(earlier.requests).rstrip("?!.")
        return f"{first}. {rng.choice(PIVOTS)} {rng.choice(category.requests)}", category
    return rng.choice(category.requests), category


DATASETS: dict[str, tuple[str, tuple[Category, ...], tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "acme_support": ("completion", ACME, ACME_CONFUSABLE, ()),
    "globex_support": ("completion", GLOBEX, GLOBEX_CONFUSABLE, GLOBEX_PREFIXES),
    "intent_routing": ("classification", INTENTS, INTENT_CONFUSABLE, ()),
}


def generate(
    dataset: str,
    rows: int,
    seed: int,
    *,
    confusable_share: float = 0.15,
    follow_up_share: float = 0.12,
    duplicate_share: float = 0.03,
    empty_share: float = 0.01,
) -> list[dict[str, str]]:
    """``rows`` distinct requests (distinct after ``normalise_text``) plus raw-export noise, in a fixed order."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown demo dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    fmt, categories, confusable, prefixes = DATASETS[dataset]
    rng = random.Random(seed * 1_000_003 + zlib.crc32(dataset.encode()))
    seen: set[str] = set()
    out: list[dict[str, str]] = []
    attempts = 0
    while len(seen) < rows:
        attempts += 1
        if attempts > rows * 50:
            raise ValueError(
                f"{dataset}: templates give only {len(seen)} distinct requests; lower rows={rows}"
            )
        template, category = _pick(categories, confusable, confusable_share, follow_up_share, rng)
        text = _dress(_fill(template, rng), rng, prefixes=prefixes)
        key = normalise_text(text)
        if key in seen:
            continue
        seen.add(key)
        if fmt == "classification":
            row = {"text": _raw_noise(text, rng), "label": category.name}
        else:
            row = {
                "prompt": _raw_noise(text, rng),
                "completion": f"{category.name} | {rng.choice(category.replies)}",
            }
        out.append(row)
        if rng.random() < duplicate_share:
            out.append(dict(row))
        if rng.random() < empty_share:
            out.append({**row, ("text" if fmt == "classification" else "prompt"): " "})
    return out


def write_jsonl(rows: list[dict[str, str]], path: Path) -> None:
    """One JSON object per line, UTF-8, ``\\n`` endings: byte-identical for the same rows on any machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--rows", type=int, required=True, help="distinct requests to generate")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--confusable-share", type=float, default=0.15)
    parser.add_argument("--follow-up-share", type=float, default=0.12)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = generate(
        args.dataset,
        args.rows,
        args.seed,
        confusable_share=args.confusable_share,
        follow_up_share=args.follow_up_share,
    )
    write_jsonl(rows, args.out)
    print(f"{args.out}: {len(rows)} raw rows")


if __name__ == "__main__":
    main()
