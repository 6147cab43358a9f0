"""``export --format vllm`` and ``compat --engine vllm`` on a real sqlite registry: the folder is what vLLM's docs ask
for (peft_type LORA, a base id, safetensors, no modules_to_save) and loads in plain peft with the same outputs;
adapters vLLM cannot take are refused before anything is written, with the reason and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner
from vllm_helpers import register, with_contract

from adapter_registry.cli import app
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.vllm.export import ExportRefused, export_version

runner = CliRunner()


def logits(base: Path, adapter: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
    with torch.no_grad():
        return model(input_ids=torch.arange(4, 20).unsqueeze(0)).logits


def test_export_writes_the_folder_vllm_loads_and_peft_loads_it_unchanged(
    registry: AdapterStore, vllm_base: Path, lora_dirs: dict[str, Path], tmp_path: Path
) -> None:
    source = with_contract(lora_dirs["one"], tmp_path)
    register(registry, "acme", source, vllm_base)
    report = export_version(registry, "acme/1", tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "MODEL_CARD.md", "README.md", "adapter_config.json", "adapter_model.safetensors", "export.json",
        "serving.json",
    ]  # fmt: skip
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["modules_to_save"] is None
    assert config["base_model_name_or_path"] == str(vllm_base)  # a local base keeps its path, with a warning
    assert any("local folder" in w for w in report.check.base.warnings)
    digest = registry.get_version("acme", 1).checksums["adapter_model.safetensors"]
    assert report.check.lora_name == f"acme@sha256:{digest}"
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["version"] == "acme/1" and manifest["weights_digest"] == f"sha256:{digest}"
    assert (
        manifest["exported_files"]["adapter_model.safetensors"] == digest
    )  # the registered bytes, unchanged
    assert (out / "serving.json").read_text() == (source / "serving.json").read_text()
    assert torch.equal(logits(vllm_base, out), logits(vllm_base, lora_dirs["one"]))

    readme = (out / "README.md").read_text()
    assert f"--enable-lora --max-lora-rank 8 --lora-modules 'acme@sha256:{digest}={out.resolve()}'" in readme
    assert (
        '"structured_outputs": {"regex": "(refund|damaged_item|cancel_order)( \\\\|[\\\\s\\\\S]*)?"}'
        in readme
    )
    assert '"prompt": "### Request:\\n<your text>\\n### Answer:\\n"' in readme


def test_offline_bases_are_named_by_their_hub_id(
    registry: AdapterStore, vllm_base: Path, lora_dirs: dict[str, Path], tmp_path: Path
) -> None:
    register(registry, "acme", lora_dirs["one"], vllm_base, **{Tag.BASE_ID: "smollm2-135m-instruct"})
    report = export_version(registry, "acme/1", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    warnings = [*report.check.base.warnings, *report.check.warnings]
    assert any("Q4_1 GGUF" in w and "offline_base_path('smollm2-135m-instruct')" in w for w in warnings)
    assert any("has no serving.json" in w for w in warnings)  # registered before contracts


def test_a_bin_weight_file_is_converted_to_safetensors(
    registry: AdapterStore, vllm_base: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from serving.conftest import build_adapter

    folder = build_adapter(vllm_base, tmp_path / "bin", seed=5)
    weights = load_file(folder / "adapter_model.safetensors")
    torch.save(weights, folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    register(registry, "old", folder, vllm_base)
    export_version(registry, "old/1", tmp_path / "out")
    exported = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert exported.keys() == weights.keys() and all(torch.equal(exported[k], weights[k]) for k in weights)
    assert not (tmp_path / "out" / "adapter_model.bin").exists()


def test_adapters_vllm_cannot_take_are_refused_and_nothing_is_written(
    registry: AdapterStore, vllm_base: Path, lora_dirs: dict[str, Path], tmp_path: Path
) -> None:
    register(registry, "dora", lora_dirs["dora"], vllm_base)
    with pytest.raises(
        ExportRefused, match=r"dora/1 cannot be served by vLLM: DoRA: use_dora=true.*Fix: retrain"
    ):
        export_version(registry, "dora/1", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    register(registry, "wide", lora_dirs["wide"], vllm_base)
    with pytest.raises(
        ExportRefused,
        match=r"rank 32 is greater than --max-lora-rank 16\. Fix: start vLLM with --max-lora-rank 32",
    ):
        export_version(registry, "wide/1", tmp_path / "out")
    export_version(registry, "wide/1", tmp_path / "out", max_lora_rank=32)
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def cli(store: AdapterStore, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--tracking-uri", store.tracking_uri, *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_export_and_compat_engine_vllm(
    registry: AdapterStore, vllm_base: Path, lora_dirs: dict[str, Path], tmp_path: Path
) -> None:
    register(registry, "acme", lora_dirs["one"], vllm_base)
    register(registry, "acme", lora_dirs["dora"], vllm_base)

    code, out, err = cli(registry, "compat", "acme/1", "--engine", "vllm", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["outcome"] == "compatible" and report["base"].startswith(
        "vllm (--max-lora-rank 16) as acme@sha256:"
    )
    code, out, err = cli(registry, "compat", "acme/2", "--engine", "vllm")
    assert code == 4
    assert "error: incompatible: DoRA: use_dora=true" in err and "Fix: retrain with `use_dora: false`" in err
    code, _, err = cli(registry, "compat", "acme/1")
    assert code == 1 and "give exactly one of --base BASE or --engine vllm" in err
    code, _, err = cli(registry, "compat", "acme/1", "--engine", "vllm", "--max-lora-rank", "24")
    assert code == 1 and "--max-lora-rank 24 is not a value vLLM accepts: 1, 8, 16, 32" in err

    code, out, err = cli(registry, "export", "acme/1", str(tmp_path / "ok"), "--format", "vllm", "--json")
    assert code == 0, err
    assert json.loads(out)["dest"] == str(tmp_path / "ok") and (tmp_path / "ok" / "README.md").is_file()
    code, _, err = cli(registry, "export", "acme/2", str(tmp_path / "no"), "--format", "vllm")
    assert code == 4 and "acme/2 cannot be served by vLLM: DoRA" in err and not (tmp_path / "no").exists()
    code, _, err = cli(registry, "export", "acme/1", str(tmp_path / "ok"), "--format", "vllm")
    assert code == 1 and "exists and is not an empty folder" in err


def test_a_qlora_adapter_is_served_on_a_bitsandbytes_base(
    registry: AdapterStore, vllm_base: Path, lora_dirs: dict[str, Path], tmp_path: Path
) -> None:
    source = with_contract(lora_dirs["one"], tmp_path, base_quantization="nf4-dq")
    register(registry, "globex", source, vllm_base, **{Tag.METHOD: "qlora"})
    report = export_version(registry, "globex/1", tmp_path / "out")
    assert any("quantised base (nf4-dq, bitsandbytes)" in w for w in report.check.warnings)
    assert (
        " --quantization bitsandbytes \\\n    --enable-lora" in (tmp_path / "out" / "README.md").read_text()
    )
