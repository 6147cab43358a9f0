"""Composition: registered LoRA adapters → a new adapter (peft add_weighted_adapter), evaluated and registered
with its parents.

Two tiny LoRA adapters are trained on the tiny Llama and registered in a sqlite store once per module; a
composed recipe then runs end to end with ``kedro run`` in a project in tmp_path. Bad input (an unknown parent,
parents on another base, a non-LoRA parent, a type that needs density) fails with a clear message and
registers nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.cli import app
from adapter_registry.composition import CompositionError, Parent, compose_adapter
from adapter_registry.pipeline_registry import recipe_pipeline
from adapter_registry.pipelines.compose.nodes import compose_adapter_node
from adapter_registry.recipes import RecipeError, parse_recipe
from adapter_registry.recipes.compose import ComposeSpec
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.training.adapter import train_adapter
from adapter_registry.training.features import collate, sft_features
from adapter_registry.training.models import load_adapter, load_tokenizer
from helpers import _drop_overlap, build_tiny_llama, sft_recipe, splits, support_rows, write_jsonl
from test_pipeline import kedro_run, make_project

PARENT_A, PARENT_B = "acme_lora", "globex_lora"


def composed_recipe(base: Path, data: Path, name: str, **compose: object) -> dict:
    """A composed recipe: sft_recipe's blocks, ``compose:`` instead of ``method:`` + ``training:``."""
    recipe = sft_recipe(base, data, name=name)
    del recipe["method"], recipe["training"]
    recipe["compose"] = {"max_length": 64, **compose}
    recipe["evaluation"]["must_beat_base"] = False
    return recipe


def parent_tags(base: Path, method: str = "lora") -> dict[str, str]:
    resolved = describe_folder(base)
    return {
        Tag.BASE_ID: resolved.identity,
        Tag.BASE_FINGERPRINT: resolved.fingerprint,
        Tag.TASK: "causal_lm_sft",
        Tag.METHOD: method,
    }


def train_and_register(
    store: AdapterStore,
    base: Path,
    data: Path,
    folder: Path,
    name: str,
    seed: int,
    method: dict | None = None,
) -> None:
    raw = sft_recipe(base, data, name=name)
    raw["training"] = {**raw["training"], "seed": seed, "learning_rate": 2e-2, "max_steps": 4}
    if method:
        raw["method"] = method
    trained = train_adapter(parse_recipe(raw), describe_folder(base), *splits(raw, ("train", "validation")))
    trained.model.save_pretrained(str(folder))
    store.register_adapter(name, folder, parent_tags(base, raw["method"]["type"]), {"loss": 1.0})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> dict:
    """Data, a sqlite store, and two registered LoRA parents (v1 each) on the tiny Llama."""
    root = tmp_path_factory.mktemp("compose")
    data = root / "data"
    for split, n, seed in (("train", 48, 1), ("validation", 12, 2), ("test", 12, 3)):
        write_jsonl(data / f"{split}.jsonl", support_rows(n, seed))
    _drop_overlap(data, "prompt")
    db = root / "mlflow.db"
    store = AdapterStore(f"sqlite:///{db}")
    for name, seed in ((PARENT_A, 1), (PARENT_B, 2)):
        train_and_register(store, tiny_llama, data, root / name, name, seed)
    return {"root": root, "data": data, "db": db, "store": store}


def logits(model: torch.nn.Module, base: Path, data: Path) -> torch.Tensor:
    raw = sft_recipe(base, data)
    (test,) = splits(raw, ("test",))
    batch = collate(sft_features(test[:6], load_tokenizer(base), 64), 0)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def pulled_logits(store: AdapterStore, ref: str, base: Path, data: Path, dest: Path) -> torch.Tensor:
    store.pull(ref, dest)
    return logits(load_adapter(base, dest, "causal_lm_sft"), base, data)


def parents_from(store: AdapterStore, spec: ComposeSpec, dest: Path) -> list[Parent]:
    out = []
    for i, p in enumerate(spec.parents):
        version = store.pull(p.version, dest / str(i))
        out.append(Parent(p.version, version.ref, p.weight, dest / str(i), version.tags))
    return out


# ------------------------------------------------------------------------------------------------ schema
def test_schema_compose_block(tiny_llama: Path, tmp_path: Path) -> None:
    parents = [
        {"version": f"{PARENT_A}/1", "weight": 0.7},
        {"version": f"{PARENT_B}@production", "weight": 0.3},
    ]
    recipe = parse_recipe(
        composed_recipe(tiny_llama, tmp_path, "mix", parents=parents, combination_type="ties", density=0.5)
    )
    assert recipe.method is None and recipe.training is None and recipe.compose is not None
    assert recipe.compose.weights == [0.7, 0.3] and recipe.max_length == 64
    assert (
        "method" not in recipe.model_dump()
        and "compose" not in parse_recipe(sft_recipe(tiny_llama, tmp_path)).model_dump()
    )
    names = [n.name.rsplit(".", 1)[-1] for n in recipe_pipeline(recipe).nodes]
    assert "compose_adapter_node" in names and "train_adapter_node" not in names


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"combination_type": "ties"}, r"combination_type ties prunes .* give 'density' in \(0, 1\]"),
        (
            {"combination_type": "dare_linear", "density": 0},
            r"compose.density: Input should be greater than 0",
        ),
        (
            {"combination_type": "linear", "density": 0.5},
            r"'density' does not apply to combination_type linear",
        ),
        ({"combination_type": "cat", "svd_rank": 4}, r"'svd_rank' does not apply to combination_type cat"),
        ({"combination_type": "svd", "parents": [{"version": "a/1", "weight": 1}]}, r"at least two parents"),
        ({"combination_type": "linear", "parents": []}, r"compose.parents: List should have at least 1 item"),
        (
            {
                "combination_type": "linear",
                "parents": [{"version": "a/1", "weight": 0}, {"version": "b/1", "weight": 0}],
            },
            r"every parent has weight 0",
        ),
        ({"combination_type": "linear", "parents": [{"version": "a", "weight": 1}]}, r"parents.0.version"),
        ({"combination_type": "avg"}, r"compose.combination_type: Input should be 'linear', 'cat'"),
    ],
)
def test_schema_refuses_bad_compose_blocks(
    tiny_llama: Path, tmp_path: Path, change: dict, message: str
) -> None:
    block = {"parents": [{"version": "a/1", "weight": 0.5}, {"version": "b/2", "weight": 0.5}], **change}
    with pytest.raises(RecipeError, match=message):
        parse_recipe(composed_recipe(tiny_llama, tmp_path, "mix", **block))


def test_schema_compose_or_method_and_training(tiny_llama: Path, tmp_path: Path) -> None:
    both = sft_recipe(
        tiny_llama,
        tmp_path,
        compose={"parents": [{"version": "a/1", "weight": 1}], "combination_type": "linear"},
    )
    with pytest.raises(
        RecipeError, match=r"compose: a recipe either trains .* not both; remove 'method' and"
    ):
        parse_recipe(both)
    neither = sft_recipe(tiny_llama, tmp_path)
    del neither["method"], neither["training"]
    with pytest.raises(RecipeError, match=r"give either 'method' \+ 'training' .* or 'compose'"):
        parse_recipe(neither)
    classifier = composed_recipe(
        tiny_llama, tmp_path, "mix", parents=[{"version": "a/1", "weight": 1}], combination_type="linear"
    )
    classifier["task"] = {"type": "sequence_classification"}
    classifier["data"]["format"] = "classification"
    classifier["evaluation"]["metrics"] = ["accuracy"]
    with pytest.raises(RecipeError, match=r"compose applies to causal_lm_sft only"):
        parse_recipe(classifier)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_kedro_run_composes_evaluates_and_registers_with_parents(
    world: dict, tiny_llama: Path, tmp_path: Path
) -> None:
    store, data = world["store"], world["data"]
    store.set_stage(PARENT_B, 1, "production")
    both = [{"version": f"{PARENT_A}/1", "weight": 0.6}, {"version": f"{PARENT_B}@production", "weight": 0.4}]
    first = [{"version": f"{PARENT_A}/1", "weight": 1.0}, {"version": f"{PARENT_B}/1", "weight": 0.0}]
    project = make_project(
        tmp_path / "project",
        [
            composed_recipe(tiny_llama, data, "mix_ties", parents=both, combination_type="ties", density=0.5),
            composed_recipe(tiny_llama, data, "first_only", parents=first, combination_type="linear"),
        ],
    )
    db = tmp_path / "mlflow.db"
    shutil.copy(world["db"], db)  # the parents, registered in the module's store
    done = kedro_run(project, db)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mix_ties/1 (candidate)" in done.stdout and "composition" in done.stdout

    local = AdapterStore(f"sqlite:///{db}")
    mix = local.get_version("mix_ties", 1)
    assert json.loads(mix.tags[Tag.PARENTS]) == [
        {"version": f"{PARENT_A}/1", "weight": 0.6},
        {"version": f"{PARENT_B}/1", "weight": 0.4},  # the alias resolved to its number
    ]
    assert mix.tags[Tag.METHOD] == "composition" and mix.tags[Tag.METHOD_FAMILY] == "reparameterisation"
    assert mix.tags[Tag.COMPOSE_TYPE] == "ties" and mix.tags[Tag.COMPOSE_DENSITY] == "0.5"
    assert mix.tags[Tag.BASE_FINGERPRINT] == describe_folder(tiny_llama).fingerprint
    assert {"exact_match", "base.exact_match", "loss"} <= set(mix.metrics)
    assert float(mix.tags[Tag.MERGE_PARITY]) < 1e-4  # merges like a trained LoRA adapter

    pulls = tmp_path / "pulled"
    got = {
        ref: pulled_logits(local, ref, tiny_llama, data, pulls / ref.replace("/", "_"))
        for ref in (f"{PARENT_A}/1", f"{PARENT_B}/1", "mix_ties/1", "first_only/1")
    }
    for parent in (f"{PARENT_A}/1", f"{PARENT_B}/1"):
        assert (got["mix_ties/1"] - got[parent]).abs().max() > 1e-4
    assert (got[f"{PARENT_A}/1"] - got[f"{PARENT_B}/1"]).abs().max() > 1e-4
    assert torch.allclose(got["first_only/1"], got[f"{PARENT_A}/1"], atol=1e-5)  # linear [1, 0] = parent A

    result = CliRunner().invoke(app, ["--tracking-uri", f"sqlite:///{db}", "lineage", "mix_ties/1", "--json"])
    assert result.exit_code == 0, result.output
    assert [p["version"] for p in json.loads(result.stdout)["parents"]] == [f"{PARENT_A}/1", f"{PARENT_B}/1"]
    table = CliRunner().invoke(app, ["--tracking-uri", f"sqlite:///{db}", "lineage", "mix_ties/1"])
    assert f"{PARENT_A}/1 weight=0.6" in table.stdout
    graph = CliRunner().invoke(
        app, ["--tracking-uri", f"sqlite:///{db}", "lineage", "mix_ties/1", "--format", "mermaid"]
    )
    assert f"parent {PARENT_B}/1<br/>weight 0.4" in graph.stdout and "-->|composed| run" in graph.stdout


@pytest.mark.slow
def test_cat_is_the_exact_weighted_sum_of_the_parents_updates(
    world: dict, tiny_llama: Path, tmp_path: Path
) -> None:
    spec = ComposeSpec.model_validate(
        {
            "parents": [
                {"version": f"{PARENT_A}/1", "weight": 0.5},
                {"version": f"{PARENT_B}/1", "weight": -1.5},
            ],
            "combination_type": "cat",
        }
    )
    parents = parents_from(world["store"], spec, tmp_path)
    composed = compose_adapter(parents, describe_folder(tiny_llama), "causal_lm_sft", spec)
    assert composed.parents[1] == {"version": f"{PARENT_B}/1", "weight": -1.5}
    models = [load_adapter(tiny_llama, p.folder, "causal_lm_sft") for p in parents]
    checked = 0
    for name, module in composed.model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            expected = sum(
                p.weight * dict(m.named_modules())[name].get_delta_weight("default")
                for p, m in zip(parents, models, strict=True)
            )
            assert torch.allclose(module.get_delta_weight("default"), expected, atol=1e-6)
            checked += 1
    assert checked >= 4


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("svd", {"svd_rank": 4}),
        ("dare_ties", {"density": 0.7}),
        ("magnitude_prune", {"density": 0.5}),
        ("dare_linear_svd", {"density": 0.9}),
    ],
)
def test_every_family_of_combination_builds_a_saveable_adapter(
    world: dict, tiny_llama: Path, tmp_path: Path, kind: str, options: dict
) -> None:
    spec = ComposeSpec.model_validate(
        {
            "parents": [
                {"version": f"{PARENT_A}/1", "weight": 0.5},
                {"version": f"{PARENT_B}/1", "weight": 0.5},
            ],
            "combination_type": kind,
            **options,
        }
    )
    composed = compose_adapter(
        parents_from(world["store"], spec, tmp_path / "p"), describe_folder(tiny_llama), "causal_lm_sft", spec
    )
    composed.model.save_pretrained(str(tmp_path / "out"))
    assert sorted(composed.model.peft_config) == ["default"]
    before = logits(composed.model, tiny_llama, world["data"])
    after = logits(load_adapter(tiny_llama, tmp_path / "out", "causal_lm_sft"), tiny_llama, world["data"])
    assert torch.allclose(before, after, atol=1e-5)  # what was evaluated is what is registered


# ------------------------------------------------------------------------------------------------ bad input
def run_node(recipe: dict, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    parsed = parse_recipe(recipe)
    compose_adapter_node(parsed, describe_folder(Path(recipe["base"]["path"])), {})


@pytest.mark.slow
def test_unknown_parent_is_a_clear_error(
    world: dict, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parents = [{"version": f"{PARENT_A}/1", "weight": 0.5}, {"version": f"{PARENT_B}/7", "weight": 0.5}]
    recipe = composed_recipe(tiny_llama, world["data"], "mix", parents=parents, combination_type="linear")
    with pytest.raises(CompositionError, match=rf"parent {PARENT_B}/7 cannot be pulled .* has no version 7"):
        run_node(recipe, world["db"], monkeypatch)
    assert not world["store"].model_exists("mix")


@pytest.mark.slow
def test_parents_on_another_base_or_of_another_method_are_refused(
    world: dict, tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_base = build_tiny_llama(tmp_path / "other-llama", seed=1)
    parents = [{"version": f"{PARENT_A}/1", "weight": 0.5}, {"version": f"{PARENT_B}/1", "weight": 0.5}]
    recipe = composed_recipe(other_base, world["data"], "mix", parents=parents, combination_type="linear")
    with pytest.raises(
        CompositionError, match=rf"{PARENT_A}/1 was trained on base .* not on this recipe's base"
    ):
        run_node(recipe, world["db"], monkeypatch)

    db = tmp_path / "mlflow.db"
    shutil.copy(world["db"], db)
    store = AdapterStore(f"sqlite:///{db}")
    train_and_register(store, tiny_llama, world["data"], tmp_path / "ia3", "ia3_adapter", 3, {"type": "ia3"})
    train_and_register(
        store,
        tiny_llama,
        world["data"],
        tmp_path / "r8",
        "rank8_lora",
        3,
        {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
    )
    parents[1]["version"] = "ia3_adapter/1"
    recipe = composed_recipe(tiny_llama, world["data"], "mix", parents=parents, combination_type="linear")
    with pytest.raises(
        CompositionError, match=r"ia3_adapter/1 is a ia3 adapter .* combines LoRA adapters only"
    ):
        run_node(recipe, db, monkeypatch)
    parents[1]["version"] = "rank8_lora/1"
    recipe = composed_recipe(tiny_llama, world["data"], "mix", parents=parents, combination_type="linear")
    with pytest.raises(CompositionError, match=r"linear needs parents of one rank .*use cat"):
        run_node(recipe, db, monkeypatch)
    assert not store.model_exists("mix")


@pytest.mark.slow
def test_kedro_run_of_a_bad_composed_recipe_registers_nothing(
    world: dict, tiny_llama: Path, tmp_path: Path
) -> None:
    parents = [{"version": f"{PARENT_A}/1", "weight": 0.5}, {"version": "nobody/1", "weight": 0.5}]
    project = make_project(
        tmp_path / "project",
        [composed_recipe(tiny_llama, world["data"], "mix", parents=parents, combination_type="linear")],
    )
    db = tmp_path / "mlflow.db"
    shutil.copy(world["db"], db)
    done = kedro_run(project, db)
    assert done.returncode != 0
    assert "parent nobody/1 cannot be pulled" in done.stdout + done.stderr
    assert not AdapterStore(f"sqlite:///{db}").model_exists("mix")
    assert not (project / "data" / "06_models" / "mix" / "adapter").exists()
    (project / "pipelines" / "mix.yaml").write_text(
        yaml.safe_dump(
            composed_recipe(tiny_llama, world["data"], "mix", parents=parents, combination_type="dare_ties")
        )
    )
    done = kedro_run(project, db)
    assert done.returncode != 0 and "give 'density'" in done.stdout + done.stderr
