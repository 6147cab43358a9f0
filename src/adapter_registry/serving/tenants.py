"""Tenants: ``conf/base/tenants.yml`` maps a tenant id to the registered adapter that answers it.

Checked against the registry when ``serve`` starts: a tenant naming an adapter the registry does not know stops the
server with the registered names listed (instead of answering 404 to that tenant's every request); one whose
adapter has no version in the served stage, or was trained on another base, is logged as a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from adapter_registry.registry.store import AdapterStore

DEFAULT_TENANTS = Path("conf/base/tenants.yml")


class TenantsFile(BaseModel):
    """conf/base/tenants.yml."""

    model_config = ConfigDict(extra="forbid")

    tenants: dict[str, str] = Field(default_factory=dict, description="tenant id -> registered adapter name")


class TenantsError(ValueError):
    """A tenants file that cannot be read, or that names adapters the registry does not know."""


def load_tenants(path: Path | None) -> dict[str, str]:
    """Tenant → adapter mapping; {} when ``path`` is None and the default file is absent."""
    import yaml

    if path is None:
        if not DEFAULT_TENANTS.is_file():
            return {}
        path = DEFAULT_TENANTS
    try:
        return TenantsFile.model_validate(yaml.safe_load(Path(path).read_text()) or {}).tenants
    except (OSError, ValueError) as exc:
        raise TenantsError(f"tenants file {str(path)!r}: {exc}") from exc


def check_tenants(
    tenants: dict[str, str],
    store: AdapterStore,
    stage: str,
    base_fingerprint: str,
    source: str = "tenants",
    quantization: str = "",
) -> list[str]:
    """Refuse tenants of unknown adapters (TenantsError naming them and the registered adapters); return
    warnings for tenants whose adapter has no ``stage`` version, one trained on another base, or a QLoRA one on a
    full-precision server (or the reverse: ``quantization`` is the served base's)."""
    registered = store.list_models()
    unknown = {t: a for t, a in sorted(tenants.items()) if a not in registered}
    if unknown:
        listing = ", ".join(f"{t} -> {a!r}" for t, a in unknown.items())
        raise TenantsError(
            f"{source}: {listing}: no such registered adapter; registered: {', '.join(registered) or 'none'}. "
            "Fix the adapter name (or register it with `kedro run`) and restart"
        )
    warnings = []
    for tenant, adapter in sorted(tenants.items()):
        holder = store.holder(adapter, stage)
        if holder is None:
            warnings.append(
                f"tenant {tenant!r}: adapter {adapter!r} has no {stage} version yet (404 until one)"
            )
        elif holder.base_fingerprint != base_fingerprint:
            warnings.append(
                f"tenant {tenant!r}: {holder.ref} was trained on base {holder.base_id or '?'}, not the served base"
            )
        elif (holder.method == "qlora") != bool(quantization):
            served = f"quantised ({quantization})" if quantization else "in full precision"
            warnings.append(
                f"tenant {tenant!r}: {holder.ref} is a {holder.method} adapter and this server runs the base {served}: "
                "its requests are refused (409); serve it from a server started with the --quantization its "
                "serving.json names (nf4-dq for the default QLoRA recipe)"
            )
    return warnings
