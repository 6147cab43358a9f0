"""benchmarks/vllm_live_check.py's parts that run without vLLM or a GPU, so that the one GPU run does not fail on
them: it refuses to run (writing nothing) without vLLM; the plugin's dist-info; the scaled copies; the contract
of a folder registered before contracts; the throw-away registry; evaluation's decoding of the rows; the report.
The live check itself is owed until a GPU session runs it."""

from __future__ import annotations

import json
from importlib.metadata import distributions
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.contract import ServingContract
from benchmarks import vllm_live_check as live

ROOT = Path(__file__).resolve().parents[2]


def test_without_vllm_it_refuses_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not live.missing_modules():
        pytest.skip("vLLM is installed here: the script would run")
    assert live.main(["--results", str(tmp_path / "results")]) == 2
    assert "not run: missing vllm" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_the_plugin_dist_info_declares_the_entry_point(tmp_path: Path) -> None:
    folder = live.plugin_dist_info(tmp_path / "plugin")
    if folder is None:
        pytest.skip("the project is installed with its entry point")
    [dist] = list(distributions(path=[str(folder)]))
    assert [(e.group, e.name, e.value) for e in dist.entry_points] == [
        ("vllm.general_plugins", "adapter_registry_lora_resolver", "adapter_registry.vllm.resolver:register")
    ]


def test_copies_registry_contract_and_evaluation_side(
    registry: object,
    vllm_base: Path,
    lora_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    legacy = live.scaled_copy(lora_dirs["one"], tmp_path / "legacy", 1.0)
    (legacy / "answers.json").write_text(
        json.dumps({"answers": ["a b", "c"], "separator": " | "})
    )  # pre-contract
    recipe = ROOT / "pipelines" / "acme_support_lora.yaml"
    contract = live.contract_for(legacy, recipe)
    from adapter_registry.recipes.load import load_recipe

    spec = load_recipe(recipe)
    assert (contract.prompt_template, contract.answers, contract.max_new_tokens, contract.decoding) == (
        spec.task.prompt_template, ("a b", "c"), spec.evaluation.max_new_tokens, "constrained",
    )  # fmt: skip
    assert contract.prompt_template == "### Request:\n{prompt}\n### Answer:\n"

    half = load_file(live.scaled_copy(legacy, tmp_path / "half", 0.5) / "adapter_model.safetensors")
    full = load_file(legacy / "adapter_model.safetensors")
    assert all(torch.equal(half[k], full[k] * (0.5 if ".lora_B." in k else 1)) for k in full)

    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = live.build_registry(workdir, legacy, describe_folder(vllm_base), contract)
    assert {n: [v.stage for v in store.list_versions(n)] for n in store.list_models()} == {
        "acme_support_lora": ["candidate", "production"], **{f"bench_{i}": ["production"] for i in range(1, 9)},
    }  # fmt: skip
    assert ServingContract.read(workdir / "acme-1") == contract

    small = ServingContract(task="causal_lm_sft", format="completion", prompt_template="{prompt}",
                            decoding="constrained", answers=("a b", "c"), max_new_tokens=4)  # fmt: skip
    answers = live.evaluation_answers(vllm_base, legacy, small, [{"prompt": "d e f"}, {"prompt": "g"}], 32)
    assert len(answers) == 2 and all(a in ("a b", "c") for a in answers)


def test_the_report(tmp_path: Path) -> None:
    results = {
        "when": "2026-12-01 10:00 UTC", "vllm": "0.x", "device": "H200", "seconds": 300.0, "ready_s": 41.0,
        "checks": {"resolver": {"ok": True, "expected": "acme@sha256:1"},
                   "served_equals_evaluated": {"ok": False, "rows": 150, "equal": 149, "differ": [{"row": 3}]}},
        "throughput": {"one": {"adapters": 1, "requests": 256, "tokens_per_s": 9000.0},
                       "mixed": {"adapters": 8, "requests": 256, "tokens_per_s": 8100.0}},
        "passed": False,
    }  # fmt: skip
    json_path, md_path = live.write_results(results, tmp_path)
    assert json.loads(json_path.read_text())["passed"] is False
    text = md_path.read_text()
    assert '| served_equals_evaluated | **no** | `{"rows": 150, "equal": 149}` |' in text
    assert "one adapter 9000.0 tokens/s, 8 adapters mixed 8100.0 tokens/s (0.90x)" in text
