"""Kedro datasets: the file I/O at the pipeline's edges (recipes, raw splits, data versions, adapter folders).

Each is declared through a dataset factory in ``conf/base/catalog.yml`` (``"{namespace}.recipe"`` …), so every
recipe namespace gets its own copy with no copy-pasted entries.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from adapter_registry.recipes import Recipe, load_recipe


class RecipeDataset(AbstractDataset[None, Recipe]):
    """A recipe YAML file, validated by the closed schema on load (read-only)."""

    def __init__(self, filepath: str):
        self._filepath = Path(filepath)

    def _load(self) -> Recipe:
        return load_recipe(self._filepath)

    def _save(self, data: None) -> None:
        raise DatasetError("recipes are written by people, not by the pipeline")

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


def _derived(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
    """A router without a ``data:`` block: its rows and their versions, derived from its experts' registered splits
    (``experts.derived_splits``, through the registry ``MLFLOW_TRACKING_URI`` names); None for any other recipe."""
    recipe = load_recipe(path)
    if not recipe.derived_data:
        return None
    from adapter_registry.experts import derived_splits
    from adapter_registry.registry.store import AdapterStore

    assert recipe.routes_to is not None
    return derived_splits(AdapterStore.from_env(), recipe.routes_to)


class RecipeSplitsDataset(AbstractDataset[None, dict[str, Any]]):
    """The raw records of every split a recipe names: ``{"train": [...], "validation": [...], "test": [...]}``.

    A recipe without a validation file gets none here; ``prepare_examples`` carves one from train. A router without
    a ``data:`` block gets the rows derived from its experts' registered splits (``experts.derived_splits``).
    """

    def __init__(self, recipe: str):
        self._recipe = Path(recipe)

    def _load(self) -> dict[str, Any]:
        from adapter_registry.data.formats import read_records
        from adapter_registry.data.splits import split_paths

        derived = _derived(self._recipe)
        if derived is not None:
            return derived[0]
        paths = split_paths(load_recipe(self._recipe).data_spec)
        return {split: read_records(path) for split, path in paths.items() if path}

    def _save(self, data: dict[str, Any]) -> None:
        raise DatasetError("the pipeline never rewrites its input data")

    def _describe(self) -> dict[str, Any]:
        return {"recipe": str(self._recipe)}


class DataVersionsDataset(AbstractDataset[None, dict[str, dict[str, Any]]]):
    """DVC versions of a recipe's data files: path, md5, the commit whose dvc.lock holds it, lock match."""

    def __init__(self, recipe: str):
        self._recipe = Path(recipe)

    def _load(self) -> dict[str, dict[str, Any]]:
        from dataclasses import asdict

        from adapter_registry.data.splits import split_paths
        from adapter_registry.data.versions import dataset_version

        derived = _derived(self._recipe)
        if derived is not None:
            return derived[1]
        paths = split_paths(load_recipe(self._recipe).data_spec)
        return {split: asdict(dataset_version(path)) for split, path in paths.items() if path}

    def _save(self, data: dict[str, dict[str, Any]]) -> None:
        raise DatasetError("data versions are read from DVC, not written")

    def _describe(self) -> dict[str, Any]:
        return {"recipe": str(self._recipe)}


class ValidationReportDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """The data-validation report: JSON at ``filepath`` and GX Data Docs (HTML) in ``data_docs/`` beside it.

    Saved whatever the outcome, so a failed validation leaves its full report behind.
    """

    def __init__(self, filepath: str):
        self._filepath = Path(filepath)

    def _save(self, report: dict[str, Any]) -> None:
        import json
        from types import SimpleNamespace

        from adapter_registry.data.expectations import write_data_docs

        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        self._filepath.write_text(json.dumps(report, indent=2, default=str))
        docs = self._filepath.parent / "data_docs"
        shutil.rmtree(docs, ignore_errors=True)
        write_data_docs(SimpleNamespace(result=report.get("result", {})), docs)  # type: ignore[arg-type]

    def _load(self) -> dict[str, Any]:
        import json

        return dict(json.loads(self._filepath.read_text()))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class AdapterFolderDataset(AbstractDataset[Any, Path]):
    """Saves a trained adapter (peft files, the head for classification, the serving contract) into a folder;
    loads its path."""

    def __init__(self, path: str):
        self._path = Path(path)

    def _save(self, trained: Any) -> None:
        from adapter_registry.training.models import save_adapter

        staging = self._path.with_name(self._path.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        save_adapter(
            trained.model,
            staging,
            trained.contract,
            trained.base.name_or_path,
            trained.base.revision,
            experts=trained.parents,  # an Arrow mixture records which registered version each expert is
        )  # named by its hub id: portable
        shutil.rmtree(self._path, ignore_errors=True)
        staging.rename(self._path)  # readers never see a half-written adapter

    def _load(self) -> Path:
        if not (self._path / "adapter_config.json").is_file():
            raise DatasetError(f"{self._path} holds no adapter (no adapter_config.json)")
        return self._path

    def _exists(self) -> bool:
        return (self._path / "adapter_config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class MergedModelDataset(AbstractDataset[Any, Path]):
    """Saves a merged model (``save_pretrained``; a classifier's head beside it) into a folder."""

    def __init__(self, path: str):
        self._path = Path(path)

    def _save(self, merged: Any) -> None:
        from adapter_registry.training.heads import PooledClassifier

        staging = self._path.with_name(self._path.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if isinstance(merged, PooledClassifier):
            merged.encoder.save_pretrained(str(staging))
            merged.save_head(staging)
        else:
            merged.save_pretrained(str(staging))
        shutil.rmtree(self._path, ignore_errors=True)
        staging.rename(self._path)

    def _load(self) -> Path:
        if not (self._path / "config.json").is_file():
            raise DatasetError(f"{self._path} holds no merged model")
        return self._path

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
