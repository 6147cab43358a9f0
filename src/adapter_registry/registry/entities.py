"""The registry's own vocabulary: tag keys written on every model version, and the entities the store returns.

Ground floor: imports nothing else of ours but the shared words (``adapter_registry.vocabulary``). Every lineage
fact lives in a model-version tag whose key is defined here; ``registry.lineage`` writes the lineage tags and reads
them back, and the store, the CLI and the server read them with the same keys.
"""

from __future__ import annotations

import datetime as _dt
import json as _json
from dataclasses import asdict as _asdict
from dataclasses import dataclass, field
from typing import Any

from adapter_registry.vocabulary import METRICS

PREFIX = "ar."


class Tag:
    """Model-version tag keys (values are strings; JSON where noted)."""

    RECIPE_NAME = "ar.recipe.name"
    RECIPE_HASH = "ar.recipe.hash"  # sha256 of the resolved recipe (recipes.load.recipe_hash)
    TASK = "ar.task"  # causal_lm_sft | sequence_classification
    METHOD = "ar.method"  # lora, qlora, ... or "composition" (built from registered adapters, see PARENTS)
    METHOD_FAMILY = "ar.method.family"  # additive | selective | reparameterisation | hybrid
    PEFT_CONFIG = "ar.peft_config"  # JSON of the saved adapter_config.json
    TRAINABLE_PARAMS = "ar.params.trainable"
    TOTAL_PARAMS = "ar.params.total"
    TRAINABLE_SHARE = "ar.params.trainable_share"  # trainable / total, a float
    TRAINING = "ar.training"  # JSON of the recipe's training block
    BASE_ID = "ar.base.id"  # offline name, hub id or local path
    BASE_HUB_ID = (
        "ar.base.hub_id"  # the hub id the adapter folder names (an offline base's hub model); "" for a folder
    )
    BASE_PATH = (
        "ar.base.path"  # the local folder the base was loaded from when training (its copy on that machine)
    )
    BASE_REVISION = "ar.base.revision"  # hub revision, or "" for local/offline
    BASE_FINGERPRINT = "ar.base.fingerprint"  # sha256 identity of the base weights (bases.fingerprint)
    BASE_ARCHITECTURE = "ar.base.architecture"  # e.g. LlamaForCausalLM, BertModel
    BASE_SHAPES = "ar.base.shapes"  # JSON: vocab_size, hidden_size, num_layers, model_type
    GIT_COMMIT = "ar.git.commit"
    GIT_DIRTY = "ar.git.dirty"  # "true" | "false"
    DATA_VALIDATION = "ar.data.validation"  # JSON: success, statistics, failed expectations
    STAGE = (
        "ar.stage"  # legacy mirror of the stage, no longer written (reserved); "archived" is still honoured
    )
    ARCHIVED = (
        "ar.archived"  # "true" once the version was replaced in a stage (aliases say every other stage)
    )
    GATES = "ar.gates"  # JSON list of gate strings, e.g. ["accuracy >= 0.8"]
    MUST_BEAT_BASE = "ar.gates.must_beat_base"  # "false" when the recipe sets must_beat_base: false
    MERGED_URI = "ar.merge.uri"  # where the merged weights were written
    MERGE_PARITY = "ar.merge.max_abs_diff"  # max |logits(merged) - logits(adapter)|
    MERGE_VS_BASE = "ar.merge.diff_vs_base"  # max |logits(merged) - logits(base)| (> 0: it changed something)
    WARNINGS = "ar.warnings"  # JSON list of warnings recorded at training time
    PARENTS = "ar.parents"  # JSON list of {"version": "NAME/VERSION", "weight": w}
    COMPOSE = "ar.compose"  # composed adapters: JSON of the recipe's compose block (parents as written)
    COMPOSE_TYPE = "ar.compose.combination_type"  # linear, cat, svd, ties, dare_ties, ...
    COMPOSE_DENSITY = "ar.compose.density"  # share kept by ties/dare/magnitude_prune ("" when not used)
    ROUTE_KIND = "ar.route.kind"  # routed adapters: router (picks an expert per request) | arrow
    ROUTE_EXPERTS = "ar.route.experts"  # JSON list of the pinned experts: name, version, asked, digest
    ROUTE_THRESHOLD = "ar.route.threshold"  # a router's confidence threshold (below it: its fallback answers)
    ROUTE_FALLBACK = "ar.route.fallback"  # JSON pinned expert of a router's fallback ("" when it has none)
    ROUTE_TOP_K = "ar.route.top_k"  # an Arrow mixture's experts mixed per token
    ROUTE_TEMPERATURE = "ar.route.router_temperature"  # an Arrow mixture's softmax temperature
    RUN_ID = "ar.run_id"
    REGISTRATION_ID = "ar.registration.id"  # the caller's name for the registration; on its run too

    @staticmethod
    def data_path(split: str) -> str:
        return f"ar.data.{split}.path"

    @staticmethod
    def data_md5(split: str) -> str:
        return f"ar.data.{split}.md5"

    @staticmethod
    def data_commit(split: str) -> str:
        """The git commit whose dvc.lock recorded this md5 ("" when the data is not DVC-tracked)."""
        return f"ar.data.{split}.commit"

    @staticmethod
    def library(package: str) -> str:
        return f"ar.lib.{package}"

    @staticmethod
    def sha256(relative_file: str) -> str:
        """sha256 of one adapter file, keyed by its path relative to the adapter folder."""
        return f"ar.sha256.{relative_file}"

    @staticmethod
    def metric(name: str) -> str:
        """The adapter's score on the test split, e.g. ar.metric.accuracy."""
        return f"ar.metric.{name}"

    @staticmethod
    def base_metric(name: str) -> str:
        """The base model's (or the baseline's) score on the same rows."""
        return f"ar.metric.base.{name}"


class RunTag:
    """Tags ``register_adapter`` puts on the run it uploads into, so that a registration killed part-way is found."""

    STATE = "ar.registration.state"  # uploading, then registered | failed | abandoned (its process died)
    HOST = "ar.registration.host"  # where the registering process ran
    PID = "ar.registration.pid"  # its process id on that host


STAGES = ("candidate", "staging", "production", "archived")
ALIAS_STAGES = (
    "production",
    "staging",
    "candidate",
)  # stages held by an alias; a version's stage is the first


def stage_of(aliases: Any, tags: dict[str, str]) -> str:
    """A version's stage, read from the registry itself: the first stage alias it holds (production, staging,
    candidate); without one, ``archived`` when it was replaced in a stage, else ``candidate`` (registered, never
    promoted, and no longer the newest registration)."""
    held = set(aliases or ())
    for stage in ALIAS_STAGES:
        if stage in held:
            return stage
    archived = tags.get(Tag.ARCHIVED) == "true" or tags.get(Tag.STAGE) == "archived"
    return "archived" if archived else "candidate"


ADAPTER_ARTIFACT = "adapter"  # artifact folder in the run holding the adapter files


# ------------------------------------------------------------------------------------------------ entities
# What the store hands out. Plain dataclasses: the CLI, the pipeline and the tests never see MLflow objects.

PROMOTION_STAGES = ("staging", "production")  # stages a version can be promoted to
CANARY_ALIAS = "canary"  # the alias of a version taking a share of production traffic (``registry.canary``)
AUDIT_EXPERIMENT = "adapter-registry-audit"  # one run per stage change, never edited
FLEET_EXPERIMENT = "adapter-registry-fleet"  # one run per ``serve`` replica, its tags its heartbeat
DEFAULT_EXPERIMENT = "adapter-registry"  # where register_adapter starts a run when none is given
LOCK_MODEL = "adapter-registry.locks"  # writer tickets on a tracking server (registry.locking); no adapter


class AuditTag:
    """Tags of an audit-event run (one run per stage change in the AUDIT_EXPERIMENT)."""

    MODEL = "ar.audit.model"
    VERSION = "ar.audit.version"
    SEQ = "ar.audit.seq"  # 1, 2, 3 ... per registered model
    EVENT = "ar.audit.event"  # JSON of the whole StageChange
    PREVIOUS_HASH = "ar.audit.prev_hash"  # hash of the previous event of this model ("" for the first)
    HASH = "ar.audit.hash"  # sha256(prev_hash + event JSON): the chain that makes a rewrite visible
    # Written only by a tracking server that runs the adapter-registry auth app (registry.auth_app):
    PREVIOUS_MAC = "ar.audit.prev_mac"  # the MAC of the previous event of this model ("" for the first)
    MAC = "ar.audit.mac"  # HMAC-SHA256(server key, prev_mac + event JSON): who wrote it, with a key no client has


class FleetTag:
    """Tags of a replica's run in the FLEET_EXPERIMENT, rewritten at each heartbeat (``serving.fleet``)."""

    REPLICA = "ar.fleet.replica"  # host:port of the replica (the run id tells two lives of one address apart)
    URL = "ar.fleet.url"  # where its API answers (GET /v1/canary, /health)
    BASE_FINGERPRINT = "ar.fleet.base.fingerprint"
    BASE_IDENTITY = "ar.fleet.base.identity"
    QUANTIZATION = "ar.fleet.quantization"  # "" or e.g. nf4-dq
    STAGE = "ar.fleet.stage"  # the stage it serves
    HEARTBEAT = "ar.fleet.heartbeat"  # unix time of the last heartbeat
    INTERVAL = "ar.fleet.interval"  # seconds between heartbeats: a replica silent for 3 of them is stale
    STATE = "ar.fleet.state"  # serving | stopped
    SERVES = "ar.fleet.serves."  # + adapter: JSON {name, version, digest} of the version it serves
    CANARY = "ar.fleet.canary."  # + adapter: JSON {name, version, digest} of the canary it serves beside it
    PROBLEM = "ar.fleet.problem."  # + adapter: JSON {name, version, reason, kind: refused|failed|foreign}


class RegistryError(Exception):
    """The one error type of the registry; ``code`` says what kind of failure, the message what was wrong."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


def _json_or_none(text: str | None) -> Any:
    if not text:
        return None
    try:
        return _json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class AdapterVersion:
    """One registered adapter version with every tag recorded on it (lineage included)."""

    name: str
    version: int
    stage: str
    tags: dict[str, str]
    metrics: dict[str, float]
    run_id: str
    source: str
    created: _dt.datetime
    description: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def base_id(self) -> str:
        return self.tags.get(Tag.BASE_ID, "")

    @property
    def base_fingerprint(self) -> str:
        return self.tags.get(Tag.BASE_FINGERPRINT, "")

    @property
    def method(self) -> str:
        return self.tags.get(Tag.METHOD, "")

    @property
    def task(self) -> str:
        return self.tags.get(Tag.TASK, "")

    @property
    def gates(self) -> list[str]:
        value = _json_or_none(self.tags.get(Tag.GATES))
        return list(value) if isinstance(value, list) else []

    @property
    def checksums(self) -> dict[str, str]:
        """Relative file path -> sha256, as registered."""
        prefix = Tag.sha256("")
        return {k[len(prefix) :]: v for k, v in self.tags.items() if k.startswith(prefix)}

    @property
    def key_metric(self) -> tuple[str, float] | None:
        """The first adapter metric that is not an interval bound, a base score or beats_base."""
        for name in METRICS:  # a version records the metrics of one task: exact_match, or accuracy/macro_f1
            if name in self.metrics:
                return name, self.metrics[name]
        own = [k for k in self.metrics if not k.startswith("base.") and k != "beats_base"]
        return (own[0], self.metrics[own[0]]) if own else None

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (what ``dataclasses.asdict`` gives, built without its deep copies: a listing
        converts 10,000 of them)."""
        return {
            "name": self.name, "version": self.version, "stage": self.stage, "tags": dict(self.tags),
            "metrics": dict(self.metrics), "run_id": self.run_id, "source": self.source,
            "created": self.created.isoformat(), "description": self.description, "aliases": list(self.aliases),
        }  # fmt: skip

    @classmethod
    def build(
        cls,
        *,
        name: str,
        version: int,
        tags: dict[str, str],
        run_id: str,
        source: str,
        created_ms: int | None,
        description: str = "",
        aliases: Any = (),
        metrics: dict[str, str] | None = None,
    ) -> AdapterVersion:
        """The one constructor from what a registry row holds: its stage from its aliases (``stage_of``), its
        metrics from its tags (``metrics``: the ``ar.metric.*`` tags without their prefix, where the caller has
        them apart: a listing builds 10,000 versions)."""
        return cls(
            name=name,
            version=int(version),
            stage=stage_of(aliases, tags),
            tags=tags,
            metrics=cls.metrics_from_tags(tags) if metrics is None else _floats(metrics),
            run_id=run_id or tags.get(Tag.RUN_ID, ""),
            source=source,
            created=_dt.datetime.fromtimestamp((created_ms or 0) / 1000, tz=_dt.UTC),
            description=description,
            aliases=tuple(sorted(aliases)),
        )

    @classmethod
    def from_model_version(cls, mv: Any, aliases: Any = None) -> AdapterVersion:
        """From an MLflow ``ModelVersion`` (the object stays inside registry/); ``aliases`` where MLflow's search
        left them out."""
        return cls.build(
            name=mv.name, version=int(mv.version), tags=dict(mv.tags or {}), run_id=mv.run_id or "",
            source=mv.source or "", created_ms=mv.creation_timestamp, description=mv.description or "",
            aliases=mv.aliases or aliases or (),
        )  # fmt: skip

    @staticmethod
    def metrics_from_tags(tags: dict[str, str]) -> dict[str, float]:
        return _floats(
            {key[_METRIC_CUT:]: value for key, value in tags.items() if key.startswith(_METRIC_PREFIX)}
        )


_METRIC_PREFIX = Tag.metric("")
_METRIC_CUT = len(_METRIC_PREFIX)


def _floats(values: dict[str, str]) -> dict[str, float]:
    """The values that are numbers, as floats (a metric tag that is not one is left out)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


@dataclass(frozen=True)
class GateResult:
    """One promotion gate and whether it passed, with the value it saw."""

    gate: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return _asdict(self)


@dataclass(frozen=True)
class StageChange:
    """One audited event: a version moved (or was refused a move) between stages."""

    model: str
    version: int
    from_stage: str
    to_stage: str
    who: str
    when: _dt.datetime
    reason: str = ""
    forced: bool = False
    action: str = "promote"  # promote | rollback | retire | refused | canary_start | canary_promote | ...
    gates: tuple[GateResult, ...] = ()
    replaced_version: int | None = None  # the version that held to_stage before and was archived
    seq: int = 0
    verified: bool = True  # False when the audit chain does not check out at this event
    digest: str = ""  # files_digest of the version's registered files when it was placed ("" in older events)
    details: dict[str, Any] = field(default_factory=dict)  # a canary's settings, a decision's figures (JSON)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "model": self.model, "version": self.version, "from_stage": self.from_stage,
            "to_stage": self.to_stage, "who": self.who, "when": self.when.isoformat(),
            "reason": self.reason, "forced": self.forced, "action": self.action,
            "gates": [g.to_dict() for g in self.gates], "replaced_version": self.replaced_version,
            "seq": self.seq, "verified": self.verified,
        }  # fmt: skip
        if self.digest:  # only when recorded: an older event's JSON (and so its hash) stays what it was
            data["digest"] = self.digest
        if self.details:  # likewise: only canary events carry details
            data["details"] = self.details
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageChange:
        return cls(
            model=data["model"], version=int(data["version"]), from_stage=data["from_stage"],
            to_stage=data["to_stage"], who=data["who"], when=_dt.datetime.fromisoformat(data["when"]),
            reason=data.get("reason", ""), forced=bool(data.get("forced", False)),
            action=data.get("action", "promote"),
            gates=tuple(GateResult(**g) for g in data.get("gates", [])),
            replaced_version=data.get("replaced_version"), seq=int(data.get("seq", 0)),
            verified=bool(data.get("verified", True)), digest=str(data.get("digest", "")),
            details=dict(data.get("details") or {}),
        )  # fmt: skip


@dataclass(frozen=True)
class DatasetRef:
    """One data split an adapter was trained or scored on."""

    split: str
    path: str
    md5: str
    commit: str

    def to_dict(self) -> dict[str, Any]:
        return _asdict(self)


@dataclass(frozen=True)
class Lineage:
    """Where one adapter version came from, and what happened to it since."""

    version: AdapterVersion
    datasets: tuple[DatasetRef, ...]
    data_validation: Any
    code_commit: str
    code_dirty: str
    recipe: dict[str, str]
    base: dict[str, str]
    peft_config: Any
    training: Any
    parents: Any
    history: tuple[StageChange, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version.ref, "stage": self.version.stage, "run_id": self.version.run_id,
            "datasets": [d.to_dict() for d in self.datasets], "data_validation": self.data_validation,
            "code": {"commit": self.code_commit, "dirty": self.code_dirty}, "recipe": self.recipe,
            "base": self.base, "peft_config": self.peft_config, "training": self.training,
            "parents": self.parents, "metrics": self.version.metrics,
            "history": [h.to_dict() for h in self.history],
        }  # fmt: skip
