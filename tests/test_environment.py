"""Importing ``adapter_registry`` leaves ``os.environ`` alone; the entry points start from the offline defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import adapter_registry
from adapter_registry.environment import OFFLINE_DEFAULTS, offline_defaults

SHOW_ENVIRONMENT_CHANGES = """
import importlib, json, os, sys
before = dict(os.environ)
for module in sys.argv[1:]:
    importlib.import_module(module)
after = dict(os.environ)
print(json.dumps({k: after.get(k) for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}))
"""


def environment_changes(*modules: str, **env: str) -> dict[str, str | None]:
    """What importing ``modules`` changes in ``os.environ`` of a fresh interpreter without any offline default."""
    clean = {k: v for k, v in os.environ.items() if k not in OFFLINE_DEFAULTS}
    clean["PYTHONPATH"] = str(Path(adapter_registry.__file__).parents[1])  # this session's adapter_registry
    done = subprocess.run(
        [sys.executable, "-c", SHOW_ENVIRONMENT_CHANGES, *modules],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_importing_the_package_changes_no_environment_variable() -> None:
    # cli too: Kedro imports it for its `cli` group whatever the command
    modules = ("adapter_registry", "adapter_registry.environment", "adapter_registry.cli")
    assert environment_changes(*modules) == {}


def test_kedro_settings_set_the_offline_defaults_and_keep_the_users_values() -> None:
    assert environment_changes("adapter_registry.settings") == OFFLINE_DEFAULTS
    kept = environment_changes("adapter_registry.settings", HF_HUB_OFFLINE="0")
    assert kept == {k: v for k, v in OFFLINE_DEFAULTS.items() if k != "HF_HUB_OFFLINE"}


def test_offline_defaults_fill_only_what_is_unset(monkeypatch) -> None:
    for key in OFFLINE_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    offline_defaults()
    assert {k: os.environ[k] for k in OFFLINE_DEFAULTS} == {**OFFLINE_DEFAULTS, "TRANSFORMERS_OFFLINE": "0"}
