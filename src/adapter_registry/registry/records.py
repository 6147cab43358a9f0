"""What the light backends hand back: plain records shaped like the few MLflow entity attributes the store reads.

``registry.rest`` (MLflow's REST API over ``requests``) and ``registry.sqlite`` (MLflow's sqlite tables over the
standard library) answer the store's read and promotion calls without importing mlflow (1.7 s of start-up): a
whole ``adapter-registry list`` process then fits in a second. They return these records, whose attribute names
are those of ``mlflow.entities`` (``ModelVersion.tags`` a dict, ``RegisteredModel.aliases`` alias -> version,
``Run.info.run_id`` ...), so ``AdapterVersion.from_model_version`` and the store read either alike; and raise
:class:`BackendError`, which ``registry.errors`` translates like an ``MlflowException``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class BackendError(Exception):
    """An error answered by the tracking store, with MLflow's error code (``RESOURCE_DOES_NOT_EXIST`` ...)."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


class Page(list[Any]):
    """One page of a search, and the token of the next (None on the last)."""

    def __init__(self, items: list[Any], token: str | None = None) -> None:
        super().__init__(items)
        self.token = token or None


@dataclass
class VersionRecord:
    name: str
    version: str
    tags: dict[str, str]
    aliases: list[str]
    run_id: str = ""
    source: str = ""
    creation_timestamp: int = 0
    description: str = ""


@dataclass
class ModelRecord:
    name: str
    tags: dict[str, str]
    aliases: dict[str, str]  # alias -> version
    latest_versions: list[VersionRecord] = field(default_factory=list)
    creation_timestamp: int = 0


@dataclass
class ExperimentRecord:
    experiment_id: str
    name: str
    lifecycle_stage: str = "active"


@dataclass
class RunInfoRecord:
    run_id: str
    experiment_id: str
    status: str
    artifact_uri: str
    lifecycle_stage: str = "active"


@dataclass
class RunDataRecord:
    tags: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RunRecord:
    info: RunInfoRecord
    data: RunDataRecord
