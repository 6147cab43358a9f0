"""Served = evaluated: a trained adapter, registered with its serving contract, answers over HTTP each test row's
raw request exactly as evaluation answered that row (no mocks: tiny real Llama, real peft training, real sqlite
MLflow registry, real uvicorn server, requests sent concurrently so that they are batched together)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.contract import CONTRACT_FILE
from adapter_registry.data.formats import read_records
from adapter_registry.evaluation.evaluate import answer_key, evaluate_adapter
from adapter_registry.recipes import parse_recipe
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.serving.app import ServeOptions
from adapter_registry.training.adapter import train_adapter
from adapter_registry.training.models import save_adapter
from helpers import sft_recipe, splits

from .conftest import attest, serve_in_thread
from .test_app import free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]

# the two kinds of default generation recipe: acme (LoRA, constrained to its categories, the reply free after
# " | ") and globex (QLoRA on a 4-bit NF4 base, greedy)
KINDS = {
    "lora_constrained": ({"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0}, "constrained"),
    "qlora_greedy": ({"type": "qlora", "r": 4, "alpha": 8, "dropout": 0.0}, "greedy"),
}


@contextmanager
def serving(base: Path, store: AdapterStore, tmp_path: Path, quantization: str = "") -> Iterator[str]:
    port = free_port()
    options = ServeOptions(
        tracking_uri=store.tracking_uri, port=port, poll_seconds=0.5, tenants_file=tmp_path / "no-tenants.yml",
        request_log=tmp_path / "requests.jsonl", quantization=quantization,
    )  # fmt: skip
    (tmp_path / "no-tenants.yml").write_text("tenants: {}\n")
    with serve_in_thread(base, options):
        yield f"http://127.0.0.1:{port}"


def registered(
    kind: str, tiny_llama: Path, sft_data: Path, tmp_path: Path, empty_db: Path
) -> tuple[AdapterStore, Any, Any, list[dict]]:
    """Train, evaluate, save and register one adapter of ``kind``; put it in production (audited)."""
    method, decoding = KINDS[kind]
    raw = sft_recipe(tiny_llama, sft_data, name=kind, method=method)
    raw["training"].update(max_steps=24)
    raw["evaluation"].update(decoding=decoding, max_new_tokens=12)
    recipe = parse_recipe(raw)
    train_x, val_x, test_x = splits(raw)
    trained = train_adapter(recipe, describe_folder(tiny_llama), train_x, val_x)
    report = evaluate_adapter(trained, test_x, recipe.evaluation, recipe.max_length)
    folder = save_adapter(trained.model, tmp_path / "adapter", contract=trained.contract)
    shutil.copyfile(empty_db, tmp_path / "mlflow.db")
    store = AdapterStore(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tags = {Tag.BASE_FINGERPRINT: describe_folder(tiny_llama).fingerprint, Tag.TASK: "causal_lm_sft"}
    version = store.register_adapter(kind, folder, tags=tags, metrics=report.flat_metrics())
    attest(store, kind, version.version)
    return store, trained, report, read_records(raw["data"]["test"])


@pytest.mark.parametrize("kind", list(KINDS))
def test_served_answers_equal_evaluated_answers_row_for_row(
    kind: str,
    tiny_llama: Path,
    sft_data: Path,
    tmp_path: Path,
    empty_db: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    store, trained, report, records = registered(kind, tiny_llama, sft_data, tmp_path, empty_db)
    assert len(report.outputs) == len(records) > 0
    with serving(tiny_llama, store, tmp_path, trained.contract.base_quantization) as url:
        listing = httpx.get(f"{url}/v1/adapters").json()
        assert [a["name"] for a in listing["adapters"]] == [kind], listing
        with ThreadPoolExecutor(
            4
        ) as pool:  # concurrent: the server batches them, in other shapes than evaluation
            answers = list(
                pool.map(
                    lambda r: httpx.post(
                        f"{url}/v1/generate", json={"adapter": kind, "input": r["prompt"]}, timeout=60
                    ),
                    records,
                )
            )
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    served = [a.json()["text"] for a in answers]
    evaluated = [row["adapter"].strip() for row in report.outputs]
    differences = [
        (i, s, e) for i, (s, e) in enumerate(zip(served, evaluated, strict=True)) if s.strip() != e
    ]
    assert differences == [], differences
    hits = [
        answer_key(s, " | ") == answer_key(r["completion"], " | ")
        for s, r in zip(served, records, strict=True)
    ]
    served_exact_match = sum(hits) / len(hits)
    assert served_exact_match == pytest.approx(store.get_version(kind, 1).metrics["exact_match"])
    first = answers[0].json()
    assert (first["adapter"], first["version"], first["contract"]) == (kind, 1, True)
    assert first["constrained"] is (KINDS[kind][1] == "constrained")


def test_bad_inputs_and_a_folder_without_a_contract(
    tiny_llama: Path, sft_data: Path, tmp_path: Path, empty_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store, trained, _, records = registered("lora_constrained", tiny_llama, sft_data, tmp_path, empty_db)
    legacy = Path(shutil.copytree(tmp_path / "adapter", tmp_path / "legacy"))
    (legacy / CONTRACT_FILE).unlink()  # as registered before serving contracts
    tags = {Tag.BASE_FINGERPRINT: describe_folder(tiny_llama).fingerprint, Tag.TASK: "causal_lm_sft"}
    store.register_adapter("legacy", legacy, tags=tags, metrics={})
    attest(store, "legacy", 1)
    with serving(tiny_llama, store, tmp_path) as url:

        def ask(**body: Any) -> httpx.Response:
            return httpx.post(f"{url}/v1/generate", json=body, timeout=60)

        missing = ask(adapter="lora_constrained", input={"text": "hello"})
        assert missing.status_code == 422
        assert (
            "needs field 'prompt'" in missing.json()["detail"]
            and "(field: prompt)" in missing.json()["detail"]
        )
        both = ask(adapter="lora_constrained", input="hi", prompt="### Request:\nhi\n### Answer:\n")
        assert both.status_code == 422 and "exactly one of 'input'" in both.text
        neither = ask(adapter="lora_constrained")
        assert neither.status_code == 422 and "exactly one of 'input'" in neither.text
        templated = ask(adapter="lora_constrained", prompt=trained.contract.render(records[0]["prompt"]))
        raw = ask(adapter="lora_constrained", input=records[0]["prompt"])
        assert (
            templated.status_code == raw.status_code == 200 and templated.json()["text"] == raw.json()["text"]
        )

        listing = {a["name"]: a for a in httpx.get(f"{url}/v1/adapters").json()["adapters"]}
        assert listing["lora_constrained"]["contract"]["decoding"] == "constrained"
        assert listing["legacy"]["contract"] is None
        assert "registered without a serving contract: no prompt template" in listing["legacy"]["warnings"][0]
        refused = ask(adapter="legacy", input=records[0]["prompt"])
        assert refused.status_code == 422 and "send the full prompt as 'prompt'" in refused.json()["detail"]
        legacy_answer = ask(adapter="legacy", prompt=trained.contract.render(records[0]["prompt"]))
        assert legacy_answer.status_code == 200 and legacy_answer.json()["contract"] is False
