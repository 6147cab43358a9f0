"""Token-level routing: ``compose: combination_type: arrow`` over two registered experts (peft's Arrow), saved in
a layout plain peft loads back with ``create_arrow_model`` (the same logits), registered by ``kedro run`` with its
experts, top_k, router_temperature and the peft version in lineage; bad experts (another rank, another base) are
refused naming the fix, and nothing is registered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.composition import CompositionError, Parent, compose_adapter
from adapter_registry.recipes import RecipeError, parse_recipe
from adapter_registry.recipes.compose import ComposeSpec
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.routing import route_facts
from adapter_registry.training.features import collate, sft_features
from adapter_registry.training.models import load_adapter, load_base_model, load_tokenizer, save_adapter
from helpers import build_tiny_llama, sft_recipe
from test_pipeline import kedro_run, make_project

from .conftest import ACME, WEATHER, register_expert

ARROW = {"combination_type": "arrow", "top_k": 2, "router_temperature": 0.5}


def arrow_recipe(base: Path, data: Path, name: str = "arrow_mix", **compose: object) -> dict:
    recipe = sft_recipe(base, data, name=name)
    del recipe["method"], recipe["training"]
    parents = [{"version": f"{ACME}/1"}, {"version": f"{WEATHER}/1"}]
    recipe["compose"] = {"max_length": 64, "parents": parents, **ARROW, **compose}
    recipe["evaluation"]["must_beat_base"] = False
    recipe["merge"] = {"enabled": False}
    return recipe


def pulled(store: AdapterStore, refs: list[str], dest: Path) -> list[Parent]:
    out = []
    for i, ref in enumerate(refs):
        version = store.pull(ref, dest / str(i))
        out.append(Parent(ref, version.ref, None, dest / str(i), version.tags))
    return out


def logits(model: torch.nn.Module, base: Path) -> torch.Tensor:
    rows = [{"prompt": "will it rain in oslo", "completion": "forecast | rainy"}]
    from adapter_registry.data.formats import to_sft_examples

    examples = list(
        to_sft_examples(rows, "completion", prompt_template="### Request:\n{prompt}\n### Answer:\n")
    )
    batch = collate(sft_features(examples, load_tokenizer(base), 64), 0)
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return out


def test_arrow_schema(tiny_llama: Path, tmp_path: Path) -> None:
    recipe = parse_recipe(arrow_recipe(tiny_llama, tmp_path))
    assert recipe.routed == "arrow" and recipe.compose is not None
    assert recipe.compose.arrow_top_k == 2 and recipe.compose.arrow_temperature == 0.5
    with pytest.raises(RecipeError, match=r"arrow routes each token .* takes no weights; remove them"):
        parse_recipe(
            arrow_recipe(tiny_llama, tmp_path, parents=[{"version": "a/1", "weight": 1}, {"version": "b/1"}])
        )
    with pytest.raises(RecipeError, match=r"top_k 3 is more than the 2 parents: give at most 2"):
        parse_recipe(arrow_recipe(tiny_llama, tmp_path, top_k=3))
    with pytest.raises(RecipeError, match=r"peft refuses to merge it\); set merge.enabled: false"):
        parse_recipe({**arrow_recipe(tiny_llama, tmp_path), "merge": {"enabled": True}})


def test_an_arrow_mixture_saves_and_loads_back_with_plain_peft(
    experts: dict, tiny_llama: Path, tmp_path: Path
) -> None:
    from peft import ArrowConfig, create_arrow_model

    spec = ComposeSpec.model_validate(
        {"parents": [{"version": f"{ACME}/1"}, {"version": f"{WEATHER}/1"}], **ARROW}
    )
    parents = pulled(experts["store"], [f"{ACME}/1", f"{WEATHER}/1"], tmp_path / "parents")
    mixture = compose_adapter(parents, describe_folder(tiny_llama), "causal_lm_sft", spec)
    assert [p["expert"] for p in mixture.parents] == ["task_0", "task_1"]
    folder = save_adapter(mixture.model, tmp_path / "mix", None, str(tiny_llama), experts=mixture.parents)
    arrow = json.loads((folder / "arrow.json").read_text())
    assert [e["version"] for e in arrow["experts"]] == [f"{ACME}/1", f"{WEATHER}/1"]
    assert arrow["top_k"] == 2 and arrow["router_temperature"] == 0.5 and arrow["peft"]

    expected = logits(mixture.model, tiny_llama)
    plain = create_arrow_model(
        load_base_model(tiny_llama, "causal_lm_sft"),  # type: ignore[arg-type]
        [str(folder / e["folder"]) for e in arrow["experts"]],
        ArrowConfig(
            top_k=arrow["top_k"], router_temperature=arrow["router_temperature"], rng_seed=arrow["rng_seed"]
        ),
    ).eval()
    assert torch.allclose(logits(plain, tiny_llama), expected, atol=1e-5)
    assert torch.allclose(
        logits(load_adapter(tiny_llama, folder, "causal_lm_sft"), tiny_llama), expected, atol=1e-5
    )
    one = load_adapter(tiny_llama, parents[0].folder, "causal_lm_sft")
    assert (logits(one, tiny_llama) - expected).abs().max() > 1e-4  # a mixture, not one expert


def test_arrow_experts_of_another_rank_or_base_are_refused(
    experts: dict, tiny_llama: Path, tmp_path: Path
) -> None:
    db = tmp_path / "mlflow.db"
    shutil.copy(experts["db"], db)
    store = AdapterStore(f"sqlite:///{db}")
    data = experts["data"][ACME]
    register_expert(
        store, tiny_llama, data, tmp_path / "r8", "rank8_lora", 3, {"type": "lora", "r": 8, "alpha": 16}
    )
    other = build_tiny_llama(tmp_path / "other-llama", seed=1)
    register_expert(store, other, data, tmp_path / "elsewhere", "elsewhere_lora", 4)
    base = describe_folder(tiny_llama)
    for odd, message in (
        ("rank8_lora/1", r"arrow needs parents of one rank without rank_pattern, got ranks"),
        ("elsewhere_lora/1", r"elsewhere_lora/1 was trained on base .* not on this recipe's base"),
    ):
        spec = ComposeSpec.model_validate({"parents": [{"version": f"{ACME}/1"}, {"version": odd}], **ARROW})
        with pytest.raises(CompositionError, match=message):
            compose_adapter(
                pulled(store, [f"{ACME}/1", odd], tmp_path / odd.replace("/", "_")),
                base,
                "causal_lm_sft",
                spec,
            )


@pytest.mark.slow
def test_kedro_run_registers_an_arrow_mixture_with_its_experts(
    experts: dict, tiny_llama: Path, tmp_path: Path
) -> None:
    db = tmp_path / "mlflow.db"
    shutil.copy(experts["db"], db)
    project = make_project(tmp_path / "project", [arrow_recipe(tiny_llama, experts["data"][ACME])])
    done = kedro_run(project, db)
    assert done.returncode == 0, done.stderr[-4000:]
    store = AdapterStore(f"sqlite:///{db}")
    version = store.get_version("arrow_mix", 1)
    assert [p["version"] for p in json.loads(version.tags[Tag.PARENTS])] == [f"{ACME}/1", f"{WEATHER}/1"]
    facts = route_facts(version.tags)
    assert (
        facts is not None
        and facts.kind == "arrow"
        and [e.ref for e in facts.experts] == [f"{ACME}/1", f"{WEATHER}/1"]
    )
    assert version.tags[Tag.ROUTE_TOP_K] == "2" and version.tags[Tag.ROUTE_TEMPERATURE] == "0.5"
    assert version.tags[Tag.COMPOSE_TYPE] == "arrow" and version.tags[Tag.library("peft")]
    assert "exact_match" in version.metrics
    pulled_to = store.pull("arrow_mix/1", tmp_path / "pulled")
    assert pulled_to.version == 1 and (tmp_path / "pulled" / "arrow.json").is_file()
    load_adapter(tiny_llama, tmp_path / "pulled", "causal_lm_sft")  # loads back from the registry
