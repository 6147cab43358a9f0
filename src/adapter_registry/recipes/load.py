"""YAML → :class:`Recipe`, with errors that name the file, the line, the key and the fix."""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from adapter_registry.recipes.schema import Recipe

RECIPE_DIR = "pipelines"


class RecipeError(ValueError):
    """A recipe that cannot be used; ``str()`` lists every problem, one per line."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        prefix = f"{self.path}: " if self.path else ""
        super().__init__("\n".join(f"{prefix}{p}" for p in problems))


def _keys(text: str) -> list[tuple[tuple[str | int, ...], int]]:
    """Every key path of a YAML document (list items too) with its 1-based line, in document order."""
    found: list[tuple[tuple[str | int, ...], int]] = []

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, key.value)
                found.append((sub, key.start_mark.line + 1))
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                found.append(((*path, i), item.start_mark.line + 1))
                walk(item, (*path, i))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return found
    if root is not None:
        walk(root, ())
    return found


def _key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each key path in a YAML document to its 1-based line number."""
    return dict(_keys(text))


def _duplicate_keys(text: str) -> list[str]:
    """A problem per key given twice in one mapping (PyYAML would keep the last one silently); the keys inside a
    duplicated block are not reported again."""
    first: dict[tuple[str | int, ...], int] = {}
    problems: list[str] = []
    duplicated: list[tuple[str | int, ...]] = []
    for path, line in _keys(text):
        if any(path[: len(d)] == d for d in duplicated):
            continue
        if path in first:
            duplicated.append(path)
            key = ".".join(str(p) for p in path)
            problems.append(
                f"line {line}: {key}: duplicated key (first given on line {first[path]}). Fix: keep one of the two"
            )
        else:
            first[path] = line
    return problems


def _tag(model: type[BaseModel]) -> Any:
    field = model.model_fields.get("type")
    return get_args(field.annotation)[0] if field is not None and get_args(field.annotation) else None


def _members(annotation: Any) -> list[type[BaseModel]]:
    """The models a field may hold, looking through Optional and Annotated (e.g. ``method: MethodSpec | None``)."""
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    args = getattr(annotation, "__args__", ())
    if not args:
        return [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []
    return [m for a in args for m in _members(a)]


def _model_at(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``path`` (following discriminated unions by their tag)."""
    model: Any = Recipe
    members: list[type[BaseModel]] = []
    for part in path:
        if not isinstance(part, str):
            return None
        field = model.model_fields.get(part)
        if field is None:  # a union tag such as 'lora' in ('method', 'lora', 'r'): the member with that tag
            model = next((m for m in members if _tag(m) == part), model)
            members = []
            continue
        members = _members(field.annotation) if getattr(field.annotation, "__args__", ()) else []
        model = members[0] if members else field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
    return model


def _describe(err: Any, data: dict[str, Any]) -> tuple[tuple[str | int, ...], str]:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind = err["type"]
    # pydantic puts the union tag ('lora', 'qlora', 'causal_lm_sft') into the location; drop it for the user
    user_loc = tuple(p for i, p in enumerate(loc) if not (i == 1 and loc[0] in ("method", "task")))
    key = ".".join(str(p) for p in user_loc) or "(top level)"
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        allowed = sorted(owner.model_fields) if owner else []
        allowed = [a for a in allowed if not (owner and owner.model_fields[a].exclude)]
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return user_loc, f"{key}: unknown key. Fix: {hint}allowed keys here: {', '.join(allowed)}"
    if kind == "missing":
        return user_loc, f"{key}: required key is missing. Fix: add '{user_loc[-1]}:' to the recipe"
    if kind == "union_tag_invalid":
        expected = err.get("ctx", {}).get("expected_tags", "")
        return (
            *user_loc,
            "type",
        ), f"{key}.type: unknown type {err['ctx'].get('tag')!r}. Fix: use one of {expected}"
    if kind == "union_tag_not_found":
        return (
            user_loc,
            f"{key}: missing 'type'. Fix: add 'type:' ({err.get('ctx', {}).get('discriminator', '')})",
        )
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    msg = err["msg"].removeprefix("Value error, ")
    return user_loc, f"{key}: {msg}{shown}"


def parse_recipe(data: Any, path: Path | str = "<recipe>", text: str | None = None) -> Recipe:
    """Validate an already-parsed YAML mapping; raises :class:`RecipeError`."""
    if not isinstance(data, dict):
        raise RecipeError(path, [f"a recipe is a YAML mapping of keys, got {type(data).__name__}"])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        lines = _key_lines(text) if text else {}
        problems = []
        for err in exc.errors():
            loc, message = _describe(err, data)
            line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
            problems.append(f"line {line}: {message}" if line else message)
        raise RecipeError(path, problems) from None
    stem = Path(path).stem
    if Path(path).suffix in (".yaml", ".yml") and recipe.name != stem:
        raise RecipeError(path, [f"name: {recipe.name!r} must equal the file name {stem!r}. Fix: rename one"])
    return recipe


def load_recipe(path: Path | str) -> Recipe:
    """Read and validate one recipe file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(path, ["no such recipe file"]) from None
    except UnicodeDecodeError:
        raise RecipeError(path, ["not UTF-8 text"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(path, [f"not valid YAML: {exc}".replace("\n", " ")]) from None
    duplicates = _duplicate_keys(text)
    if duplicates:
        raise RecipeError(path, duplicates)
    return parse_recipe(data, path, text)


FIXED_KEYS = ("name", "data")  # read from the file itself by the catalog's datasets: not overridable


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _leaves(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    return [
        leaf
        for key, value in overrides.items()
        for leaf in (
            _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [f"{prefix}{key}"]
        )
    ]


def override_recipe(recipe: Recipe, overrides: dict[str, Any], source: str = "--params") -> Recipe:
    """``recipe`` with ``overrides`` (nested keys, e.g. ``{"training": {"learning_rate": 1e-4}}``) merged in and
    validated by the same schema; a bad key or value is a ``RecipeError`` that names it and its fix. ``name`` and
    ``data`` are refused: the catalog reads the data files from the recipe file itself."""
    if not overrides:
        return recipe
    where = f"{source} {recipe.name}."
    if not isinstance(overrides, dict):
        raise RecipeError(
            source, [f"{recipe.name}: overrides are keys of the recipe, e.g. {where}training.epochs=2"]
        )
    fixed = [leaf for leaf in _leaves(overrides) if leaf.split(".")[0] in FIXED_KEYS]
    if fixed:
        raise RecipeError(
            source,
            [f"{recipe.name}.{leaf}: cannot be overridden (the catalog reads the data files from the recipe file). "
             f"Fix: edit pipelines/{recipe.name}.yaml" for leaf in fixed],
        )  # fmt: skip
    try:
        return parse_recipe(_merged(recipe.model_dump(mode="json"), overrides), path="")
    except RecipeError as exc:
        raise RecipeError(source, [f"{recipe.name}.{problem}" for problem in exc.problems]) from None


def recipe_paths(root: Path | str = ".") -> list[Path]:
    """Every recipe file under ``root/pipelines``, sorted."""
    folder = Path(root) / RECIPE_DIR
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


def load_recipes(root: Path | str = ".") -> dict[str, Recipe]:
    """All recipes of a project, by name; every broken file is reported at once.

    Besides each file's own checks: NAME.yaml beside NAME.yml (which one would run?) and two recipes registering
    the same model (their versions would interleave in one registered model) are refused, naming both files.
    """
    recipes: dict[str, Recipe] = {}
    paths: dict[str, Path] = {}
    problems: list[str] = []
    for path in recipe_paths(root):
        if path.stem in paths:
            twin = paths[path.stem]
            problems.append(f"{twin} and {path}: two recipes named {path.stem!r}. Fix: delete or rename one")
            continue
        paths[path.stem] = path
        try:
            recipe = load_recipe(path)
        except RecipeError as exc:
            problems.extend(f"{exc.path}: {p}" for p in exc.problems)
            continue
        recipes[recipe.name] = recipe
    problems.extend(_shared_model_names(recipes, paths))
    if problems:
        raise RecipeError("", problems)
    return recipes


def _shared_model_names(recipes: dict[str, Recipe], paths: dict[str, Path]) -> list[str]:
    """A problem for each recipe whose registered model name another recipe registers too (reported on the one
    that names it explicitly, the later file when both do)."""
    owner: dict[str, str] = {}
    problems = []
    for name in sorted(recipes, key=lambda n: (recipes[n].registration.model_name is not None, paths[n])):
        model = recipes[name].model_name
        if model not in owner:
            owner[model] = name
            continue
        path = paths[name]
        lines = _key_lines(path.read_text(encoding="utf-8"))
        line = lines.get(("registration", "model_name")) or lines.get(("name",))
        key = "registration.model_name" if ("registration", "model_name") in lines else "name"
        problems.append(
            f"{path}: line {line}: {key}: {model!r} is registered by {paths[owner[model]]} too. "
            "Fix: give each recipe its own registration.model_name"
        )
    return problems


def recipe_hash(recipe: Recipe) -> str:
    """sha256 of the recipe's resolved content (defaults filled in), stable across key order."""
    payload = json.dumps(recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()
