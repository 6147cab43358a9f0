"""Registry webhooks: the tracking server tells ``serve`` at once when a stage alias moves.

MLflow (3.3 and later, SQL backends) calls registered webhooks on ``model_version_alias.created`` and
``.deleted``, signed with a shared secret (HMAC-SHA256 over ``delivery_id.timestamp.payload``, header
``X-MLflow-Signature: v1,<base64>``, the Standard Webhooks scheme). ``serve --webhook-url URL`` registers one
pointing at its ``POST /v1/registry/events`` with a fresh secret, removes it on shutdown, and re-syncs on each
verified delivery; polling goes on as the safety net (and is all there is on a local sqlite store, which has no
server to call anyone). A delivery with a bad or missing signature, or a stale timestamp (a replay), changes
nothing and is logged.

The tracking server must be allowed to call a private address over http for a server on the same network:
``MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https`` and ``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true`` in its environment.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapter_registry.registry.store import AdapterStore

SIGNATURE = "x-mlflow-signature"
TIMESTAMP = "x-mlflow-timestamp"
DELIVERY = "x-mlflow-delivery-id"
TOLERANCE_S = 300  # a delivery older (or newer) than this is refused as a possible replay


def sign(secret: str, delivery_id: str, timestamp: str, payload: bytes) -> str:
    """The ``X-MLflow-Signature`` value MLflow sends for this delivery."""
    content = f"{delivery_id}.{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_problem(
    secret: str, headers: Mapping[str, str], payload: bytes, now: float | None = None
) -> str | None:
    """Why a delivery is not authentic (None when it is): missing headers, a stale timestamp, a bad signature."""
    lowered = {k.lower(): v for k, v in headers.items()}
    signature, timestamp, delivery = (lowered.get(h) for h in (SIGNATURE, TIMESTAMP, DELIVERY))
    if not signature or not timestamp or not delivery:
        return "unsigned delivery (no X-MLflow-Signature, -Timestamp or -Delivery-Id header)"
    try:
        age = abs((now if now is not None else time.time()) - int(timestamp))
    except ValueError:
        return f"timestamp {timestamp!r} is not a number"
    if age > TOLERANCE_S:
        return f"timestamp is {age:.0f} s away from now (more than {TOLERANCE_S} s): a replay?"
    expected = sign(secret, delivery, timestamp, payload)
    if not any(hmac.compare_digest(expected, given.strip()) for given in signature.split(" ")):
        return "signature does not match the secret this server registered"
    return None


class WebhookRegistration:
    """This server's webhook on the tracking server: registered with a fresh secret when the server starts,
    removed when it stops (also when it could not bind its port)."""

    def __init__(self, store: AdapterStore, url: str) -> None:
        self.store = store
        self.url = url
        self.webhook_id = ""
        self.secret = ""

    def start(self) -> str:
        """Register; the secret deliveries are signed with ("" when the store has no webhooks: poll only)."""
        secret = secrets.token_urlsafe(32)
        self.webhook_id = self.store.create_webhook(
            f"adapter-registry-serve-{uuid.uuid4().hex[:8]}", self.url, secret
        )
        self.secret = secret if self.webhook_id else ""
        return self.secret

    def stop(self) -> None:
        if self.webhook_id:
            with contextlib.suppress(Exception):
                self.store.delete_webhook(self.webhook_id)
            self.webhook_id = ""
