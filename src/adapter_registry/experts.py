"""A routed recipe's experts, looked up in the registry: resolved, checked, pinned, and (for a router without a
``data:`` block) the rows its training derives from their registered splits.

:func:`resolve_route` turns a ``routes_to:`` block into :class:`~adapter_registry.routing.RouteFacts`: every
expert and the fallback resolved to one version (``NAME@STAGE`` to the stage's holder now) and pinned with the
sha256 of its weights; it refuses, naming each problem and its fix, an adapter that is not registered, one that is
not a generation adapter, and experts (or a fallback) on different bases. :func:`derived_splits` reads each
expert's own registered training and test files (the paths its lineage names, checked against their recorded
md5) and labels every row's request text (``routing.route_text``) with the expert's name.

Used by the route node (``pipelines/route``) and the recipe's split datasets (``pipelines/datasets.py``); the
registry is reached through ``AdapterStore`` only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_registry.adapter_folder import weights_digest
from adapter_registry.recipes.route import RouteSpec, ref_name
from adapter_registry.registry.entities import AdapterVersion, RegistryError, Tag
from adapter_registry.routing import ROUTER, PinnedExpert, RouteFacts, RoutingError, route_text

if TYPE_CHECKING:
    from adapter_registry.registry.store import AdapterStore

GENERATION_TASK = "causal_lm_sft"  # what an expert must be: the server generates its answer


def pinned(version: AdapterVersion, asked: str) -> PinnedExpert:
    """``version`` as a routed adapter records it: name, number, the reference written, its weights' sha256."""
    return PinnedExpert(version.name, version.version, asked, weights_digest(version.checksums))


def resolve_experts(store: AdapterStore, refs: Sequence[str], what: str = "expert") -> list[AdapterVersion]:
    """Each reference's registered version; every problem at once (unknown adapter or version, an adapter that
    does not generate, experts on different bases) as one :class:`RoutingError` naming the fix."""
    found: list[AdapterVersion] = []
    problems: list[str] = []
    for ref in refs:
        try:
            version = store.resolve(ref)
        except RegistryError as exc:
            known = ", ".join(sorted(store.list_models())) or "none"
            problems.append(
                f"{what} {ref}: {exc} (registered adapters: {known}); register it first or fix the name"
            )
            continue
        if version.task and version.task != GENERATION_TASK:
            problems.append(
                f"{what} {ref} is a {version.task} adapter: a router sends requests to generation adapters "
                f"({GENERATION_TASK}); name one of those"
            )
        found.append(version)
    bases = {v.ref: (v.base_fingerprint, v.base_id) for v in found}
    if len({fp for fp, _ in bases.values()}) > 1:
        listed = ", ".join(
            f"{ref} on {base_id or '?'} ({fp or 'no fingerprint'})" for ref, (fp, base_id) in bases.items()
        )
        problems.append(
            f"the {what}s are on different bases ({listed}): one server holds one base, so every expert (and the "
            "fallback) must be an adapter of the same base; retrain the odd one on it or route among those of one base"
        )
    if problems:
        raise RoutingError("\n".join(f"- {p}" for p in problems))
    return found


def resolve_route(store: AdapterStore, spec: RouteSpec) -> tuple[RouteFacts, list[AdapterVersion]]:
    """The router's pinned experts and fallback (checked: registered, generation adapters, one base), and the
    versions they resolved to (experts first, then a fallback that is not one of them)."""
    extra = [spec.fallback] if spec.fallback and ref_name(spec.fallback) not in spec.names else []
    versions = resolve_experts(store, [*spec.experts, *extra])
    experts = tuple(pinned(v, ref) for v, ref in zip(versions, spec.experts, strict=False))
    fallback = None
    if spec.fallback:
        name = ref_name(spec.fallback)
        fallback = next((e for e in experts if e.name == name), None)
        if fallback is None:
            fallback = pinned(versions[-1], spec.fallback)
        elif spec.fallback != spec.experts[spec.names.index(name)]:
            raise RoutingError(
                f"fallback {spec.fallback} names expert {name} at another reference than routes_to.experts "
                f"({spec.experts[spec.names.index(name)]}): give the same one"
            )
    return RouteFacts(ROUTER, experts, spec.threshold, fallback), versions


def check_labels(spec: RouteSpec, labels: dict[str, set[str]]) -> None:
    """A router's labels (per split) must be its experts' names, each of them in training."""
    names = set(spec.names)
    problems = [
        f"{split} labels {sorted(found - names)} are no expert of routes_to.experts"
        for split, found in labels.items()
        if found - names
    ]
    missing = names - labels.get("train", set())
    if missing:
        problems.append(f"experts {sorted(missing)} have no training row")
    if problems:
        raise RoutingError(
            "a router's labels are its experts' names ("
            + ", ".join(spec.names)
            + "): "
            + "; ".join(problems)
            + "; fix the data's labels or the experts"
        )


def registered_split(
    version: AdapterVersion, split: str, root: Path | str = "."
) -> tuple[list[dict[str, Any]], str, str]:
    """The records of the ``split`` an adapter version was trained or tested on (the file its lineage names,
    relative to ``root``), its path and md5; RoutingError when it is not here or is not the file it recorded."""
    from adapter_registry.data.formats import read_records
    from adapter_registry.data.versions import dataset_version

    path = version.tags.get(Tag.data_path(split), "")
    recorded = version.tags.get(Tag.data_md5(split), "")
    if not path:
        raise RoutingError(f"expert {version.ref} records no {split} split (ar.data.{split}.path)")
    file = Path(path) if Path(path).is_absolute() else Path(root) / path
    if not file.is_file():
        raise RoutingError(f"expert {version.ref}'s {split} split {path} is not here (run `dvc pull`)")
    md5 = dataset_version(file).md5
    if recorded and md5 != recorded:
        raise RoutingError(
            f"expert {version.ref}'s {split} split {path} has md5 {md5}, not the {recorded} it was trained and "
            "tested on (`dvc checkout` that version, or give the router a data: block)"
        )
    return read_records(file), path, md5


def derived_splits(
    store: AdapterStore, spec: RouteSpec, root: Path | str = "."
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """A router's rows from its experts' registered splits: ``{"train": [{"text", "label"}...], "test": [...]}``
    (each request text labelled with its expert's name; the validation split is carved later from train), and the
    version of each split (``path``: the files joined by ``;``, ``md5``: the sha256 of their md5s). A file whose md5
    is not the one the expert recorded is refused: the expert was trained on other data."""
    versions = resolve_experts(store, spec.experts)
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    sources: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    problems: list[str] = []
    for version in versions:
        for split in rows:
            try:
                records, path, md5 = registered_split(version, split, root)
            except RoutingError as exc:
                problems.append(str(exc))
                continue
            rows[split] += [{"text": route_text(record), "label": version.name} for record in records]
            sources[split].append((path, md5))
    if problems:
        raise RoutingError(
            "cannot derive the router's rows from its experts:\n" + "\n".join(f"- {p}" for p in problems)
        )
    data_versions = {
        split: {
            "path": ";".join(p for p, _ in found),
            "md5": hashlib.sha256(";".join(m for _, m in found).encode()).hexdigest()[:32],
            "tracked": False,
            "lock_commit": None,
            "matches_lock": True,
        }
        for split, found in sources.items()
    }
    return rows, data_versions
