"""Who may promote: a small closed YAML policy (conf/base/promotion_policy.yml) checked before a stage moves."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapter_registry.registry.entities import PROMOTION_STAGES, RegistryError

DEFAULT_POLICY_PATH = Path("conf/base/promotion_policy.yml")


class StageRule(BaseModel):
    """Who may move a version into one stage."""

    model_config = ConfigDict(extra="forbid")
    allowed_users: list[str] | None = Field(None, description="MLflow usernames; null: anyone with EDIT")


class PromotionPolicy(BaseModel):
    """The policy file: when to enforce, and a rule per stage."""

    model_config = ConfigDict(extra="forbid")
    enforce: Literal["auth_server", "always", "never"] = Field(
        "auth_server", description="auth_server: only when the tracking server authenticates users"
    )
    stages: dict[Literal["staging", "production"], StageRule] = Field(default_factory=dict)

    def refusal(self, stage: str, user: str, authenticated: bool) -> str | None:
        """Why ``user`` may not move a version into ``stage``, or None when allowed."""
        if self.enforce == "never" or (self.enforce == "auth_server" and not authenticated):
            return None
        rule = self.stages.get(stage)  # type: ignore[call-overload]
        if rule is None or rule.allowed_users is None or user in rule.allowed_users:
            return None
        allowed = ", ".join(rule.allowed_users) or "nobody"
        return f"user {user!r} may not promote to {stage}: the promotion policy allows {allowed}"


def load_policy(path: Path | None = None) -> PromotionPolicy:
    """Read the policy (``path``, else $ADAPTER_REGISTRY_POLICY, else conf/base/promotion_policy.yml).

    A missing default file means the strictest reading for production: nobody may promote on an
    authenticated server until the file names someone.
    """
    explicit = path or (
        Path(os.environ["ADAPTER_REGISTRY_POLICY"]) if os.environ.get("ADAPTER_REGISTRY_POLICY") else None
    )
    chosen = explicit or DEFAULT_POLICY_PATH
    if not chosen.is_file():
        if explicit:
            raise RegistryError("INVALID_INPUT", f"promotion policy {str(chosen)!r} does not exist")
        return PromotionPolicy(stages={"production": StageRule(allowed_users=[])})
    try:
        return PromotionPolicy.model_validate(yaml.safe_load(chosen.read_text()) or {})
    except (ValidationError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()
        raise RegistryError(
            "INVALID_INPUT", f"promotion policy {str(chosen)!r} is invalid: {' '.join(first[:3])}"
        ) from exc


__all__ = ["DEFAULT_POLICY_PATH", "PROMOTION_STAGES", "PromotionPolicy", "StageRule", "load_policy"]
