"""Who acts and who may promote: the actor's identity, and a small closed YAML policy
(conf/base/promotion_policy.yml) checked before a stage moves.

Where the policy comes from depends on the registry (``policy_for``): a local store reads the file the caller
names (``--policy``, ``$ADAPTER_REGISTRY_POLICY``, else the project's); a tracking server that runs the project's
auth app (``registry.auth_app``) enforces the policy of its own configuration, which the client fetches for its
early, audited refusal, and a caller's file is refused there; a server without the app enforces none (the
client's check is a courtesy there, and says so).
"""

from __future__ import annotations

import getpass
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapter_registry.registry.entities import CANARY_ALIAS, PROMOTION_STAGES, RegistryError
from adapter_registry.registry.errors import unreachable

DEFAULT_POLICY_PATH = Path("conf/base/promotion_policy.yml")
POLICY_ENV = "ADAPTER_REGISTRY_POLICY"


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

    def rule(self, stage: str) -> StageRule | None:
        """The rule of ``stage``; the canary alias takes production traffic, so production's rule is its own."""
        return self.stages.get("production" if stage == CANARY_ALIAS else stage)  # type: ignore[call-overload]

    def refusal(self, stage: str, user: str, authenticated: bool) -> str | None:
        """Why ``user`` may not move a version into ``stage``, or None when allowed."""
        if self.enforce == "never" or (self.enforce == "auth_server" and not authenticated):
            return None
        rule = self.rule(stage)
        if rule is None or rule.allowed_users is None or user in rule.allowed_users:
            return None
        allowed = ", ".join(rule.allowed_users) or "nobody"
        if stage == CANARY_ALIAS:
            return f"user {user!r} may not move a canary (it takes production traffic): the promotion policy allows {allowed}"
        return f"user {user!r} may not promote to {stage}: the promotion policy allows {allowed}"

    def protects(self, stage: str) -> bool:
        """Whether moving an alias into (or out of) ``stage`` is restricted to named users."""
        rule = self.rule(stage)
        return self.enforce != "never" and rule is not None and rule.allowed_users is not None


def load_policy(path: Path | None = None, use_env: bool = True) -> PromotionPolicy:
    """Read the policy (``path``, else $ADAPTER_REGISTRY_POLICY unless ``use_env`` is False, else
    conf/base/promotion_policy.yml).

    A missing default file means the strictest reading for production: nobody may promote on an
    authenticated server until the file names someone.
    """
    explicit = path or (Path(os.environ[POLICY_ENV]) if use_env and os.environ.get(POLICY_ENV) else None)
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


def policy_for(
    tracking_uri: str,
    server_policy: Mapping[str, object] | None,
    path: Path | None = None,
    warn: Callable[[str], None] | None = None,
) -> PromotionPolicy:
    """The policy a promotion on ``tracking_uri`` is checked against (see the module's docstring).

    ``server_policy``: the policy of the server's auth app (``AdapterStore.server_app``), None where there is none.
    ``path`` (``--policy``) is refused against a server; $ADAPTER_REGISTRY_POLICY is ignored there, with a warning.
    """
    say = warn or logging.getLogger(__name__).warning
    if not tracking_uri.startswith(("http://", "https://")):
        return load_policy(path)
    if path is not None:
        raise RegistryError(
            "INVALID_INPUT",
            f"--policy {str(path)!r} applies to a local registry only: on a tracking server the promotion policy "
            "is the server's (the adapter-registry auth app reads it from the server's configuration). Fix: drop "
            "--policy",
        )
    if os.environ.get(POLICY_ENV):
        say(f"{POLICY_ENV} is ignored on a tracking server: the policy is the server's")
    if server_policy is not None:
        return PromotionPolicy.model_validate(dict(server_policy))
    say(
        "the tracking server does not run the adapter-registry auth app (mlflow server --app-name "
        f"adapter-registry): {DEFAULT_POLICY_PATH} is checked by this client only, and anyone with EDIT on a "
        "registered model can move its aliases through MLflow"
    )
    return load_policy(use_env=False)


# ------------------------------------------------------------------------------------------------ identity
def current_user() -> str:
    """The MLflow user (MLFLOW_TRACKING_USERNAME), else the OS user."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def authenticated_user(tracking_uri: str) -> str | None:
    """The user the tracking server authenticated (MLflow basic-auth), or None when it runs no auth."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    import requests

    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    url = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/users/current"
    timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 10)  # the CLI derives it from its budget
    started = time.monotonic()
    try:
        response = requests.get(url, auth=(user, password or "") if user else None, timeout=timeout)
    except requests.RequestException as exc:
        raise unreachable(url, time.monotonic() - started, exc, "asking who the user is") from exc
    if response.status_code == 404:
        return None
    if response.status_code == 401:
        raise RegistryError(
            "UNAUTHENTICATED", f"tracking server refused user {user!r}: wrong or no credentials"
        )
    response.raise_for_status()
    return str(response.json().get("user", {}).get("username") or user)


@dataclass(frozen=True)
class Actor:
    """Who acts, and whether the tracking server authenticated that name."""

    user: str
    authenticated: bool

    @classmethod
    def of(cls, tracking_uri: str) -> Actor:
        server_user = authenticated_user(tracking_uri)
        return cls(server_user, True) if server_user else cls(current_user(), False)


__all__ = [
    "DEFAULT_POLICY_PATH",
    "PROMOTION_STAGES",
    "Actor",
    "PromotionPolicy",
    "StageRule",
    "authenticated_user",
    "current_user",
    "load_policy",
    "policy_for",
]
