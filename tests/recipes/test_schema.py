"""The recipe schema: every shipped recipe loads, and every mistake names the file, the line, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from adapter_registry.recipes import RecipeError, load_recipe, load_recipes, parse_recipe
from adapter_registry.recipes.load import recipe_hash
from adapter_registry.recipes.schema import Gate

ROOT = Path(__file__).resolve().parents[2]
VALID = {
    "name": "ok",
    "base": {"offline": "smollm2-135m-instruct"},
    "task": {"type": "causal_lm_sft"},
    "data": {"format": "completion", "train": "a.jsonl", "test": "b.jsonl"},
    "method": {"type": "lora"},
    "training": {"max_steps": 2},
    "evaluation": {"metrics": ["exact_match"]},
}


def with_(path: str, value: object) -> dict:
    """VALID with one key (dotted path) replaced or added."""
    recipe = yaml.safe_load(yaml.safe_dump(VALID))
    *parents, last = path.split(".")
    node = recipe
    for key in parents:
        node = node[key]
    node[last] = value
    return recipe


def test_every_shipped_recipe_loads() -> None:
    recipes = load_recipes(ROOT)
    assert {"acme_support_lora", "globex_support_qlora", "intent_router"} <= set(recipes)
    for recipe in recipes.values():
        assert recipe.evaluation.gates, f"{recipe.name} ships without promotion gates"


def test_valid_recipe_fills_defaults() -> None:
    recipe = parse_recipe(VALID)
    assert recipe.method.r == 16 and recipe.training.batch_size == 8 and recipe.model_name == "ok"
    assert recipe.evaluation.task_metric == "exact_match"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "training.learing_rate",
            1e-3,
            r"training.learing_rate: unknown key. Fix: did you mean 'learning_rate'\?",
        ),
        ("method.rank", 8, r"method.rank: unknown key.*allowed keys here: .*\br\b"),
        ("colour", "red", r"colour: unknown key"),
        ("training.batch_size", "eight", r"training.batch_size: Input should be a valid integer.*'eight'"),
        ("training.batch_size", 0, r"training.batch_size: Input should be greater than or equal to 1"),
        ("training.learning_rate", 2, r"training.learning_rate: Input should be less than 1"),
        ("method.type", "lorax", r"method.type: unknown type 'lorax'. Fix: use one of"),
        ("task.type", "translation", r"task.type: unknown type 'translation'"),
        ("method.dropout", 1.5, r"method.dropout: Input should be less than 1"),
        (
            "base",
            {"offline": "gpt5"},
            r"base.offline: Input should be 'smollm2-135m-instruct' or 'all-minilm-l6-v2'",
        ),
        ("base", {"hub_id": "org/model"}, r"base: 'hub_id' needs 'revision'"),
        (
            "base",
            {"offline": "all-minilm-l6-v2", "path": "/x"},
            r"give exactly one of 'offline', 'path' or 'hub_id'",
        ),
        (
            "evaluation.gates",
            ["accuracy > 0.5"],
            r"gates use \['accuracy'\] but metrics does not report them",
        ),
        ("evaluation.gates", ["exact_match is good"], r"is not 'METRIC OP NUMBER'"),
        ("evaluation.gates", ["bleu >= 3"], r"names unknown metric 'bleu'"),
        ("evaluation.metrics", ["accuracy"], r"do not apply to causal_lm_sft"),
        ("data.format", "classification", r"task causal_lm_sft needs an SFT format"),
        ("training", {"batch_size": 4}, r"give 'epochs' or 'max_steps'"),
        ("task.prompt_template", "no placeholder", r"must contain the placeholder \{prompt\}"),
        ("name", "Bad Name", r"name: String should match pattern"),
    ],
)
def test_bad_recipes_name_the_key_and_the_fix(path: str, value: object, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        parse_recipe(with_(path, value))


def test_missing_block_is_named() -> None:
    recipe = dict(VALID)
    del recipe["training"]
    with pytest.raises(RecipeError, match=r"training: required key is missing. Fix: add 'training:'"):
        parse_recipe(recipe)


def test_errors_carry_line_numbers_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    text = yaml.safe_dump(with_("training.learing_rate", 0.1), sort_keys=False)
    path.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "learing_rate" in row)
    with pytest.raises(RecipeError, match=rf"{path}: line {line}: training.learing_rate: unknown key"):
        load_recipe(path)


def test_all_problems_reported_at_once() -> None:
    recipe = with_("training.learing_rate", 1)
    recipe["method"]["rr"] = 3
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe)
    assert len(info.value.problems) == 2


def test_name_must_equal_file_name(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(VALID))
    with pytest.raises(RecipeError, match=r"name: 'ok' must equal the file name 'other'"):
        load_recipe(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name: [unclosed", r"not valid YAML"),
        ("- a\n- b\n", r"a recipe is a YAML mapping of keys, got list"),
        (b"\xff\xfe", r"not UTF-8 text"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = tmp_path / "ok.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_missing_file() -> None:
    with pytest.raises(RecipeError, match=r"no such recipe file"):
        load_recipe("pipelines/does_not_exist.yaml")


def test_broken_recipe_among_good_ones_is_reported(tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "ok.yaml").write_text(yaml.safe_dump(VALID))
    (tmp_path / "pipelines" / "bad.yaml").write_text(yaml.safe_dump({**VALID, "name": "bad", "oops": 1}))
    with pytest.raises(RecipeError, match=r"bad.yaml: line \d+: oops: unknown key"):
        load_recipes(tmp_path)


def test_recipe_hash_ignores_key_order_and_sees_values() -> None:
    a = parse_recipe(VALID)
    b = parse_recipe(dict(reversed(list(VALID.items()))))
    c = parse_recipe(with_("training.max_steps", 3))
    assert recipe_hash(a) == recipe_hash(b) != recipe_hash(c)


def test_gate_semantics() -> None:
    gate = Gate.parse("accuracy >= 0.8")
    assert gate.passes(0.8) and not gate.passes(0.79) and str(gate) == "accuracy >= 0.8"
    assert Gate.parse("loss < 1e-1").passes(0.05)


def test_metric_and_split_names_are_the_shared_tuples() -> None:
    """The schema's choices are ``vocabulary``'s tuples, and each task's metrics are among them."""
    from adapter_registry.recipes.schema import TASK_METRICS, EvaluationSpec, ExtraExpectation
    from adapter_registry.vocabulary import METRICS, SPLITS

    metrics = EvaluationSpec.model_json_schema()["properties"]["metrics"]["items"]["enum"]
    splits = ExtraExpectation.model_json_schema()["properties"]["splits"]["items"]["enum"]
    assert (tuple(metrics), tuple(splits)) == (METRICS, SPLITS)
    assert set().union(*TASK_METRICS.values()) == set(METRICS)
