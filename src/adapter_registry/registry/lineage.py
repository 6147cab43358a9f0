"""Lineage both ways: what one version was built from, and which versions a dataset or base model produced.

The lineage tags are written here (``lineage_tags``, from the plain facts the register node gathers in a
``LineageFacts``) and read back here: forward lineage from the version's tags and its audit trail
(``lineage_of``, ``datasets_of``, ``gates_of``), reverse lineage as a tag search (``ar.data.<split>.path/md5``,
``ar.base.id/fingerprint``) over every version. ``lineage_render`` draws a ``Lineage`` (mermaid, dot, a
self-contained HTML/SVG page).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from adapter_registry.registry.audit import AuditLog
from adapter_registry.registry.entities import AdapterVersion, DatasetRef, Lineage, RegistryError, Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.vocabulary import GATE_OPS, SPLITS, parse_gate

_DATA_TAG = re.compile(r"^ar\.data\.(?P<split>[\w\-]+)\.(?P<field>path|md5|commit)$")
MAX_TAG = 4900  # MLflow keeps model-version tag values up to 5000 characters
COMPOSED = "composition"  # Tag.METHOD of an adapter built from registered ones (compose: in its recipe)
COMPOSED_FAMILY = "reparameterisation"  # what peft's add_weighted_adapter builds: a LoRA adapter


# ------------------------------------------------------------------------------------------------ writing
@dataclass(frozen=True)
class LineageFacts:
    """Every lineage fact of one adapter version, as plain values (the register node gathers them)."""

    recipe_name: str
    recipe_hash: str  # sha256 of the resolved recipe
    task: str
    method: str | None  # the recipe's PEFT method type; None for a composed adapter (recorded as COMPOSED)
    method_family: str | None  # that method's family; None for a composed adapter (COMPOSED_FAMILY)
    peft_config: dict[str, Any]  # the saved adapter_config.json
    trainable_params: int
    total_params: int
    trainable_share: float  # trainable / total
    base_id: str
    base_revision: str
    base_fingerprint: str
    base_architecture: str
    base_shapes: dict[str, Any]
    git_commit: str
    git_dirty: bool
    validation: dict[str, Any]  # the data-validation report: success, statistics, failures
    data_versions: dict[str, dict[str, Any]]  # split -> path, md5, lock_commit (the DVC versions)
    gates: list[str]  # the recipe's promotion gates as strings, e.g. "accuracy >= 0.8"
    must_beat_base: bool
    warnings: list[str]  # recorded at training time
    libraries: dict[str, str]  # package -> version
    user_tags: dict[str, str]  # the recipe's registration.tags
    training: dict[str, Any] | None = None  # the recipe's training block (a trained adapter)
    compose: dict[str, Any] | None = None  # the recipe's compose block (a composed adapter)
    parents: list[dict[str, Any]] = field(default_factory=list)  # a composed adapter's: version, weight each
    # a routed adapter's ar.route.* tags (routing.route_tags: its pinned experts); its parents are those experts
    route: dict[str, str] | None = None
    merge: dict[str, Any] | None = None  # the merge report (max_abs_diff, diff_vs_base) when it merged
    merged_uri: str = ""  # where the merged weights were written
    base_hub_id: str = ""  # the hub id adapter_config.json names (ResolvedBase.hub_id); "" for a local folder
    base_path: str = ""  # the local folder the base was loaded from (the fingerprint says which weights)


def _tag_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_TAG else json.dumps({"truncated": True, "head": text[: MAX_TAG - 40]})


def lineage_tags(facts: LineageFacts) -> dict[str, str]:
    """The model-version tags of ``facts``, keyed by ``registry.entities.Tag`` (read back by this module)."""
    tags = {
        Tag.RECIPE_NAME: facts.recipe_name,
        Tag.RECIPE_HASH: facts.recipe_hash,
        Tag.TASK: facts.task,
        Tag.METHOD: facts.method or COMPOSED,
        Tag.METHOD_FAMILY: facts.method_family or COMPOSED_FAMILY,
        Tag.PEFT_CONFIG: _tag_json(facts.peft_config),
        Tag.TRAINABLE_PARAMS: str(facts.trainable_params),
        Tag.TOTAL_PARAMS: str(facts.total_params),
        Tag.TRAINABLE_SHARE: f"{facts.trainable_share:.6g}",
        Tag.BASE_ID: facts.base_id,
        Tag.BASE_REVISION: facts.base_revision,
        Tag.BASE_FINGERPRINT: facts.base_fingerprint,
        Tag.BASE_ARCHITECTURE: facts.base_architecture,
        Tag.BASE_SHAPES: _tag_json(facts.base_shapes),
        Tag.GIT_COMMIT: facts.git_commit,
        Tag.GIT_DIRTY: str(facts.git_dirty).lower(),
        Tag.DATA_VALIDATION: _tag_json(
            {
                "success": facts.validation["success"],
                "statistics": facts.validation.get("statistics", {}),
                "failures": facts.validation.get("failures", [])[:5],
            }
        ),
        Tag.GATES: _tag_json(facts.gates),
        Tag.MUST_BEAT_BASE: str(facts.must_beat_base).lower(),
        Tag.WARNINGS: _tag_json(facts.warnings),
        **{Tag.library(name): version for name, version in facts.libraries.items()},
        **{f"ar.user.{k}": v for k, v in facts.user_tags.items()},
    }
    if facts.base_hub_id:
        tags[Tag.BASE_HUB_ID] = facts.base_hub_id
    if facts.base_path:
        tags[Tag.BASE_PATH] = facts.base_path
    if facts.training is not None:
        tags[Tag.TRAINING] = _tag_json(facts.training)
    if facts.compose is not None:
        density = facts.compose.get("density")
        tags[Tag.PARENTS] = _tag_json(facts.parents)
        tags[Tag.COMPOSE] = _tag_json(facts.compose)
        tags[Tag.COMPOSE_TYPE] = facts.compose["combination_type"]
        tags[Tag.COMPOSE_DENSITY] = "" if density is None else f"{density:g}"
    if facts.route is not None:
        tags.update(facts.route)
        tags[Tag.PARENTS] = _tag_json(facts.parents)
    for split, version in facts.data_versions.items():
        tags[Tag.data_path(split)] = version["path"]
        tags[Tag.data_md5(split)] = version["md5"]
        tags[Tag.data_commit(split)] = version.get("lock_commit") or ""
    if facts.merge is not None:
        tags[Tag.MERGED_URI] = facts.merged_uri
        tags[Tag.MERGE_PARITY] = f"{facts.merge['max_abs_diff']:.6g}"
        tags[Tag.MERGE_VS_BASE] = f"{facts.merge['diff_vs_base']:.6g}"
    return tags


# ------------------------------------------------------------------------------------------------ reading
def _parsed(value: str | None) -> Any:
    """A JSON tag's value (its text when it is not JSON; None when absent)."""
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


@dataclass(frozen=True)
class Gate:
    """A promotion gate recorded on a version (``accuracy >= 0.8``): the recipe's ``recipes.schema.Gate`` without
    the recipe schema (pydantic models: 0.3 s of a ``show`` or ``promote``); both read it with
    ``vocabulary.parse_gate``, and tests/registry/test_lineage.py checks that they agree."""

    metric: str
    op: str
    threshold: float

    def passes(self, value: float) -> bool:
        return bool(GATE_OPS[self.op](float(value), self.threshold))

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    @classmethod
    def parse(cls, text: str) -> Gate:
        metric, op, threshold = parse_gate(text)
        return cls(metric=metric, op=op, threshold=threshold)


def gates_of(version: AdapterVersion) -> list[tuple[str, Gate | ValueError]]:
    """The promotion gates recorded on ``version``, each as written with its ``Gate`` or why it does not parse."""
    gates: list[tuple[str, Gate | ValueError]] = []
    for text in version.gates:
        try:
            gates.append((text, Gate.parse(text)))
        except ValueError as exc:
            gates.append((text, exc))
    return gates


def must_beat_base(version: AdapterVersion) -> bool:
    """Whether promoting ``version`` needs it to beat its base (true unless its recipe said otherwise)."""
    return version.tags.get(Tag.MUST_BEAT_BASE, "true").lower() != "false"


def distribution_of(version: AdapterVersion) -> tuple[str, int]:
    """How ``version`` was trained: (strategy, world size), from its ``ar.training`` tag. The recipe's
    ``training.distributed`` block is written there only when it is not the default (one process: ``("none", 1)``);
    its ``processes`` are the world size, training running on one machine."""
    training = _parsed(version.tags.get(Tag.TRAINING))
    block = training.get("distributed") if isinstance(training, dict) else None
    if not isinstance(block, dict):
        return "none", 1
    return str(block.get("strategy", "none")), int(block.get("processes", 1))


def datasets_of(version: AdapterVersion) -> tuple[DatasetRef, ...]:
    found: dict[str, dict[str, str]] = {}
    for key, value in version.tags.items():
        match = _DATA_TAG.match(key)
        if match:
            found.setdefault(match["split"], {})[match["field"]] = value
    order: dict[str, int] = {s: i for i, s in enumerate(SPLITS)}
    return tuple(
        DatasetRef(split, d.get("path", ""), d.get("md5", ""), d.get("commit", ""))
        for split, d in sorted(found.items(), key=lambda item: (order.get(item[0], 99), item[0]))
    )


def lineage_of(store: AdapterStore, ref: str) -> Lineage:
    """Everything recorded about where ``ref`` came from, plus its promotion history."""
    version = store.resolve(ref)
    tags = version.tags
    return Lineage(
        version=version,
        datasets=datasets_of(version),
        data_validation=_parsed(tags.get(Tag.DATA_VALIDATION)),
        code_commit=tags.get(Tag.GIT_COMMIT, ""),
        code_dirty=tags.get(Tag.GIT_DIRTY, ""),
        recipe={"name": tags.get(Tag.RECIPE_NAME, ""), "hash": tags.get(Tag.RECIPE_HASH, "")},
        base={
            "id": tags.get(Tag.BASE_ID, ""),
            "hub_id": tags.get(Tag.BASE_HUB_ID, ""),
            "revision": tags.get(Tag.BASE_REVISION, ""),
            "path": tags.get(Tag.BASE_PATH, ""),
            "fingerprint": tags.get(Tag.BASE_FINGERPRINT, ""),
            "architecture": tags.get(Tag.BASE_ARCHITECTURE, ""),
            "shapes": _parsed(tags.get(Tag.BASE_SHAPES)),
        },
        peft_config=_parsed(tags.get(Tag.PEFT_CONFIG)),
        training=_parsed(tags.get(Tag.TRAINING)),
        parents=_parsed(tags.get(Tag.PARENTS)),
        history=tuple(e for e in AuditLog(store).read(version.name).events if e.version == version.version
                      or e.replaced_version == version.version),
    )  # fmt: skip


def versions_from_dataset(store: AdapterStore, dataset: str) -> list[AdapterVersion]:
    """Every version trained or scored on ``PATH`` or ``PATH@MD5`` (any split)."""
    path, _, md5 = dataset.partition("@")
    if not path:
        raise RegistryError("INVALID_INPUT", f"dataset {dataset!r} is not PATH or PATH@MD5")
    return _any_of(
        store, [{Tag.data_path(s): path, **({Tag.data_md5(s): md5} if md5 else {})} for s in SPLITS]
    )


def versions_from_md5(store: AdapterStore, md5: str) -> list[AdapterVersion]:
    """Every version whose data (any split) has DVC md5 ``md5``, whatever its path."""
    return _any_of(store, [{Tag.data_md5(split): md5} for split in SPLITS])


def _any_of(store: AdapterStore, searches: list[dict[str, str]]) -> list[AdapterVersion]:
    """The versions matching any of ``searches`` (tag equalities), by name then newest first; on a server the
    searches are sent at once (one round trip's wait, not one a split)."""

    def search(tags: dict[str, str]) -> list[AdapterVersion]:
        return store.list_versions(tag_equals=tags, summary=True)

    if store.tracking_uri.startswith(("http://", "https://")):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(searches), thread_name_prefix="lineage-search") as pool:
            results = list(pool.map(search, searches))
    else:
        results = [search(tags) for tags in searches]
    found = {(v.name, v.version): v for versions in results for v in versions}
    return sorted(found.values(), key=lambda v: (v.name, -v.version))


def versions_from_base(store: AdapterStore, base: str) -> list[AdapterVersion]:
    """Every version built on base ``base`` (its id or its fingerprint)."""
    return store.list_versions(base_model=base, summary=True)
