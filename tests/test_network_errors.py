"""A tracking server that cannot be reached, and credentials inside its URI.

An unreachable server is a port on 127.0.0.1 that nothing listens on (connection refused at once, so every second
spent is MLflow's retries). The whole-process CLI test bounds the wait: it must fail within 60 s (today's MLflow
defaults retry for about 4 minutes).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_JITTER
from typer.testing import CliRunner

import adapter_registry
from adapter_registry.cli import app
from adapter_registry.environment import TIMEOUT_VARIABLE, network_defaults, network_settings
from adapter_registry.registry.entities import RegistryError
from adapter_registry.registry.errors import mask_credentials
from adapter_registry.registry.policy import authenticated_user
from adapter_registry.registry.store import AdapterStore
from registry.conftest import free_port

SECRET = "s3cret-Pa55"


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process tests need not wait for MLflow's retries: one try."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"http://alice:{SECRET}@host:5000", "http://alice:***@host:5000"),
        (f"see https://alice:{SECRET}@host/api/2.0 and x", "see https://alice:***@host/api/2.0 and x"),
        (f"postgresql://mlflow:{SECRET}@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        (f"https://{SECRET}@host", "https://***@host"),  # a token as the user part
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("http://host:5000/a@b", "http://host:5000/a@b"),  # an @ in the path is no credential
    ],
)
def test_mask_credentials(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked


def test_no_error_or_repr_of_the_store_shows_the_password(fast_retries: None) -> None:
    uri = f"http://alice:{SECRET}@127.0.0.1:{free_port()}"
    store = AdapterStore(uri)
    assert SECRET not in repr(store) and "alice:***@127.0.0.1" in repr(store)
    for call in (store.list_models, lambda: store.get_version("x", 1), lambda: authenticated_user(uri)):
        with pytest.raises(RegistryError) as info:
            call()
        assert SECRET not in str(info.value) and SECRET not in info.value.message
        assert "unreachable" in info.value.message


def test_the_cli_error_line_masks_the_password_and_names_the_server(fast_retries: None) -> None:
    port = free_port()
    result = CliRunner().invoke(app, ["--tracking-uri", f"http://alice:{SECRET}@127.0.0.1:{port}", "list"])
    assert result.exit_code == 1
    assert SECRET not in result.stderr and SECRET not in result.stdout
    assert re.fullmatch(
        rf"error: tracking server http://127\.0\.0\.1:{port} unreachable after \d+ s: .*Connection refused.*\n",
        result.stderr,
    ), result.stderr


def test_an_unreachable_server_fails_within_the_bound_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ADAPTER_REGISTRY_"))}
    env["PYTHONPATH"] = str(Path(adapter_registry.__file__).parents[1])
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "adapter_registry", "--tracking-uri", f"http://bob:{SECRET}@127.0.0.1:{port}",
         "show", "support/1"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    seconds = time.monotonic() - start
    assert done.returncode == 1, done.stderr
    assert seconds < 60
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and SECRET not in done.stderr, done.stderr
    assert lines[0].startswith(f"error: tracking server http://127.0.0.1:{port} unreachable after ")


def test_network_defaults_follow_the_budget_and_keep_the_users_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in (*network_settings(30), TIMEOUT_VARIABLE):
        monkeypatch.delenv(key, raising=False)
    network_defaults()
    timeout = int(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    retries = int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    backoff = int(os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    jitter = MLFLOW_HTTP_REQUEST_BACKOFF_JITTER.get()  # not ours to set: MLflow's default (or the user's)
    # urllib3 sleeps 0 before the first retry, then backoff * 2**(n-1) (+ jitter) before the n-th
    sleeps = sum(backoff * 2 ** (n - 1) + jitter for n in range(2, retries + 1))
    assert (retries + 1) * timeout + sleeps <= 30

    for key in network_settings(30):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(TIMEOUT_VARIABLE, "8")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")  # the user's own setting wins
    network_defaults()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert int(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]) <= 8


@pytest.mark.parametrize("value", ["soon", "0", "-3"])
def test_a_bad_timeout_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(TIMEOUT_VARIABLE, value)
    result = CliRunner().invoke(app, ["--tracking-uri", "sqlite:///x.db", "list"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {TIMEOUT_VARIABLE}={value!r} is not a positive number of seconds. Fix: set it to e.g. 30, or "
        "unset it\n"
    )
