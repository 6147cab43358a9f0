"""Compose: pull each parent from the registry (sha256-verified), combine them, hand on a ``TrainedAdapter``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from adapter_registry.bases.resolve import ResolvedBase
from adapter_registry.recipes import Recipe
from adapter_registry.training.adapter import TrainedAdapter


def compose_adapter_node(
    recipe: Recipe, base: ResolvedBase, examples: dict[str, list[Any]]
) -> tuple[TrainedAdapter, TrainedAdapter]:
    """The composed adapter, returned twice like a trained one: in memory, and to the adapter-folder dataset.

    ``examples`` is an input only so that nothing is composed when the data failed validation.
    """
    from adapter_registry.composition import CompositionError, Parent, compose_adapter
    from adapter_registry.registry.entities import RegistryError
    from adapter_registry.registry.errors import mask_credentials
    from adapter_registry.registry.store import AdapterStore

    del examples
    spec = recipe.compose
    assert spec is not None, f"recipe {recipe.name!r} has no compose block"
    store = AdapterStore.from_env()
    with tempfile.TemporaryDirectory(prefix=f"{recipe.name}-parents-") as tmp:
        parents = []
        for i, wanted in enumerate(spec.parents):
            try:
                version = store.pull(wanted.version, Path(tmp) / str(i))
            except RegistryError as exc:
                raise CompositionError(
                    f"recipe {recipe.name!r}: parent {wanted.version} cannot be pulled from {mask_credentials(store.tracking_uri)}: "
                    f"{exc}; nothing was composed or registered"
                ) from None
            parents.append(
                Parent(wanted.version, version.ref, wanted.weight, Path(tmp) / str(i), version.tags)
            )
        try:
            composed = compose_adapter(parents, base, recipe.task.type, spec)
        except CompositionError as exc:
            raise CompositionError(f"recipe {recipe.name!r}: {exc}\nnothing was registered") from None
    composed.contract = recipe.serving_contract()
    return composed, composed
