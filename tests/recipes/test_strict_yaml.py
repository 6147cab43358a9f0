"""Strict YAML: what PyYAML and pydantic's lax mode would let through silently is an error with file, line, key
and fix (a duplicated key, a boolean where a number is expected, NAME.yaml beside NAME.yml, two recipes
registering the same model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from adapter_registry.pipeline_registry import register_pipelines
from adapter_registry.recipes import RecipeError, load_recipe, load_recipes, parse_recipe

VALID = {
    "name": "ok",
    "base": {"offline": "smollm2-135m-instruct"},
    "task": {"type": "causal_lm_sft"},
    "data": {"format": "completion", "train": "a.jsonl", "test": "b.jsonl"},
    "method": {"type": "lora"},
    "training": {"max_steps": 2},
    "evaluation": {"metrics": ["exact_match"]},
}
TEXT = """\
name: ok
base:
  offline: smollm2-135m-instruct
task:
  type: causal_lm_sft
data:
  format: completion
  train: a.jsonl
  test: b.jsonl
method:
  type: lora
  r: 8
training:
  max_steps: 2
evaluation:
  metrics: [exact_match]
"""


def _line(text: str, needle: str, nth: int = 1) -> int:
    return [i for i, row in enumerate(text.splitlines(), 1) if needle in row][nth - 1]


def test_a_duplicated_key_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    text = TEXT.replace("  r: 8\n", "  r: 8\n  r: 64\n")
    path = tmp_path / "ok.yaml"
    path.write_text(text)
    first, second = _line(text, "  r: "), _line(text, "  r: ", 2)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == (
        f"{path}: line {second}: method.r: duplicated key (first given on line {first}). "
        "Fix: keep one of the two"
    )


def test_a_duplicated_block_is_reported_once_at_its_top(tmp_path: Path) -> None:
    text = TEXT + "training:\n  max_steps: 5\n"
    path = tmp_path / "ok.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.problems == [
        f"line {_line(text, 'training:', 2)}: training: duplicated key (first given on line "
        f"{_line(text, 'training:')}). Fix: keep one of the two"
    ]


def test_the_same_key_in_different_blocks_is_no_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(TEXT)  # 'type' under task and under method
    assert load_recipe(path).method.r == 8


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        ("method.r", True, "method.r"),  # lax pydantic trains this with r=1
        ("training.learning_rate", False, "training.learning_rate"),
        ("training.max_steps", True, "training.max_steps"),  # int | None
        ("expectations.max_duplicate_share", True, "expectations.max_duplicate_share"),
        ("method.rank_pattern", {"q_proj": True}, "method.rank_pattern"),  # dict[str, int]
    ],
)
def test_a_boolean_where_a_number_is_expected_is_refused(path: str, value: object, key: str) -> None:
    recipe = yaml.safe_load(yaml.safe_dump(VALID))
    *parents, last = path.split(".")
    node = recipe
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    with pytest.raises(
        RecipeError, match=rf"^<recipe>: {key}: a number is expected, not a boolean .*Fix: write a number"
    ):
        parse_recipe(recipe)


def test_a_boolean_number_names_the_line_in_the_file(tmp_path: Path) -> None:
    text = TEXT.replace("  r: 8", "  r: yes")  # YAML 1.1: yes is true
    path = tmp_path / "ok.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=rf"^{path}: line {_line(text, '  r: ')}: method.r: a number is"):
        load_recipe(path)


def test_booleans_stay_booleans_and_numbers_numbers() -> None:
    recipe = parse_recipe({**VALID, "method": {"type": "lora", "r": 4, "use_rslora": True, "alpha": 8}})
    assert recipe.method.r == 4 and recipe.method.use_rslora is True and recipe.method.alpha == 8.0


def _project(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)
    return tmp_path


def test_yaml_and_yml_twins_are_refused_naming_both(tmp_path: Path) -> None:
    root = _project(tmp_path, ok__yaml=TEXT, ok__yml=TEXT.replace("r: 8", "r: 4"))
    with pytest.raises(RecipeError) as info:
        load_recipes(root)
    folder = root / "pipelines"
    assert str(info.value) == (
        f"{folder / 'ok.yaml'} and {folder / 'ok.yml'}: two recipes named 'ok'. Fix: delete or rename one"
    )


def test_two_recipes_sharing_a_model_name_are_refused_naming_both(tmp_path: Path) -> None:
    shared = "registration:\n  model_name: support\n"
    root = _project(
        tmp_path,
        a__yaml=TEXT.replace("name: ok", "name: a") + shared,
        b__yaml=TEXT.replace("name: ok", "name: b") + shared,
    )
    folder = root / "pipelines"
    with pytest.raises(RecipeError) as info:
        register_pipelines(root)
    line = _line(TEXT + shared, "model_name")
    assert str(info.value) == (
        f"{folder / 'b.yaml'}: line {line}: registration.model_name: 'support' is registered by "
        f"{folder / 'a.yaml'} too. Fix: give each recipe its own registration.model_name"
    )


def test_a_default_model_name_clashing_with_an_explicit_one_is_refused(tmp_path: Path) -> None:
    root = _project(
        tmp_path, a__yaml=TEXT.replace("name: ok", "name: a"),
        b__yaml=TEXT.replace("name: ok", "name: b") + "registration:\n  model_name: a\n",
    )  # fmt: skip
    with pytest.raises(
        RecipeError, match=r"b.yaml: line \d+: registration.model_name: 'a' is registered by .*a.yaml"
    ):
        load_recipes(root)
