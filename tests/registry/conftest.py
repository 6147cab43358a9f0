"""Fixtures of the registry tests: a tiny random Llama base, a LoRA adapter on it, sqlite stores, servers.

No mocks: the adapter is a real peft save, the store a real sqlite MLflow database in tmp_path, the server
fixture runs a real ``mlflow server`` subprocess on 127.0.0.1, and ``team_stack`` runs the team stack itself
(``adapter-registry stack up``: PostgreSQL via initdb + pg_ctl, ``mlflow server`` on it with the project's auth app,
``--app-name adapter-registry``; ``auth_app_visible`` declares its entry point where the install predates it).
``backend`` gives the three registries the contract tests run against: a sqlite file, a server on sqlite, a
server on PostgreSQL. Where PostgreSQL is not installed the last is skipped, saying so; under ``CI=true`` that is
a failure instead (``.ci/run`` installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.stack import Stack, postgres_bin

TINY_LLAMA = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
)  # fmt: skip


def build_base(folder: Path, seed: int = 0, **overrides: int) -> Path:
    """A tiny random Llama saved as a Hugging Face folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, **overrides}))
    model.save_pretrained(folder)
    return folder


def build_adapter(base: Path, folder: Path, seed: int = 1) -> Path:
    """LoRA on q_proj/v_proj with non-zero B matrices, so the adapter changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    (folder / "README.md").write_text("# tiny adapter\nA model card.\n")
    return folder


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_base(tmp_path_factory.mktemp("base") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_adapter_src(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_adapter(tiny_base, tmp_path_factory.mktemp("adapter") / "lora")


@pytest.fixture
def adapter_dir(tiny_adapter_src: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny adapter (tests may break it)."""
    return Path(shutil.copytree(tiny_adapter_src, tmp_path / "adapter"))


def lineage_tags(
    base: Path | str = "tiny-llama", fingerprint: str = "f" * 64, **extra: str
) -> dict[str, str]:
    """Realistic lineage tags, as the pipeline writes them."""
    tags = {
        Tag.RECIPE_NAME: "support_sft_lora",
        Tag.RECIPE_HASH: "ab" * 32,
        Tag.TASK: "causal_lm_sft",
        Tag.METHOD: "lora",
        Tag.METHOD_FAMILY: "reparameterisation",
        Tag.PEFT_CONFIG: json.dumps({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
        Tag.TRAINING: json.dumps({"epochs": 1, "learning_rate": 2e-4}),
        Tag.BASE_ID: str(base),
        Tag.BASE_REVISION: "",
        Tag.BASE_FINGERPRINT: fingerprint,
        Tag.BASE_ARCHITECTURE: "LlamaForCausalLM",
        Tag.BASE_SHAPES: json.dumps(
            {"vocab_size": 128, "hidden_size": 32, "num_layers": 2, "model_type": "llama"}
        ),
        Tag.GIT_COMMIT: "0123456789abcdef0123456789abcdef01234567",
        Tag.GIT_DIRTY: "false",
        Tag.DATA_VALIDATION: json.dumps({"success": True, "statistics": {"evaluated_expectations": 5}}),
        Tag.GATES: json.dumps(["exact_match >= 0.8"]),
        Tag.data_path("train"): "data/01_raw/support/train.jsonl",
        Tag.data_md5("train"): "d41d8cd98f00b204e9800998ecf8427e",
        Tag.data_commit("train"): "89abcdef0123456789abcdef0123456789abcdef",
        Tag.data_path("test"): "data/01_raw/support/test.jsonl",
        Tag.data_md5("test"): "0cc175b9c0f1b6a831c399e269772661",
        Tag.data_commit("test"): "89abcdef0123456789abcdef0123456789abcdef",
    }
    tags.update(extra)
    return tags


GOOD_METRICS = {
    "exact_match": 0.91, "exact_match_ci_low": 0.86, "exact_match_ci_high": 0.95, "loss": 0.4,
    "beats_base": 1.0, "base.exact_match": 0.0, "base.loss": 3.1,
}  # fmt: skip


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty sqlite MLflow database with its tables migrated once (migrations take seconds)."""
    db = tmp_path_factory.mktemp("db") / "mlflow.db"
    AdapterStore(f"sqlite:///{db}").list_models()
    return db


@pytest.fixture
def store(tmp_path: Path, empty_db: Path, monkeypatch: pytest.MonkeyPatch) -> AdapterStore:
    """A fresh sqlite registry copied into tmp_path; run artifacts land in tmp_path/mlruns (the cwd)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    shutil.copyfile(empty_db, tmp_path / "mlflow.db")
    return AdapterStore(f"sqlite:///{tmp_path / 'mlflow.db'}")


# ------------------------------------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    workdir: Path, *extra: str, env: dict[str, str] | None = None, port: int | None = None,
    handle: dict[str, subprocess.Popen[bytes]] | None = None,
) -> Iterator[str]:  # fmt: skip
    """Run ``mlflow server`` on 127.0.0.1 (a free port unless given) until the generator is closed; its process
    (the leader of its own process group: the server and its workers) goes into ``handle["process"]``."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{workdir / 'server.db'}",
        "--artifacts-destination", str(workdir / "artifacts"), "--workers", "1", *extra,
    ]  # fmt: skip
    log = (workdir / "server.log").open("w")
    quiet = {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"
    }  # no huey job runners: they slow start-up by a minute
    process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, **quiet, **(env or {})}, start_new_session=True)  # fmt: skip
    if handle is not None:
        handle["process"] = process
    url = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.time() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(workdir / 'server.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise RuntimeError(
                    f"mlflow server not up in 90 s: {(workdir / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.3)
        yield url
    finally:
        stop_group(process)
        log.close()


def stop_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a server started by ``start_server`` and its workers (its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# A server may call a webhook on 127.0.0.1 over http, and re-reads its webhooks every second (tests/serving)
WEBHOOK_ENV = {"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
               "MLFLOW_WEBHOOK_CACHE_TTL": "1"}  # fmt: skip


# ------------------------------------------------------------------------------------------------ team stack
POSTGRES_MISSING = (
    "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH): the PostgreSQL-backed "
    "registry tests are skipped; install it with apt-get install -y postgresql"
)


# ------------------------------------------------------------------------------------------------ the auth app
def _declare_auth_app(folder: Path) -> Path | None:
    """Make ``mlflow server --app-name adapter-registry`` find the project's auth app where the installed metadata
    predates its entry point (an editable install made before it; ``pip install -e .`` refreshes it): a
    ``*.dist-info`` in ``folder`` declaring it. ``folder`` when one was needed, else None."""
    from importlib.metadata import entry_points

    from adapter_registry.registry.auth_app import APP_NAME

    if APP_NAME in {e.name for e in entry_points(group="mlflow.app")}:
        return None
    info = folder / "adapter_registry_auth_app-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: adapter-registry-auth-app\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        f"[mlflow.app]\n{APP_NAME} = adapter_registry.registry.auth_app:create_app\n"
    )
    return folder


@pytest.fixture(scope="session")
def auth_app_visible(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The auth app's entry point visible to this process and to the servers it starts (PYTHONPATH)."""
    folder = _declare_auth_app(tmp_path_factory.mktemp("entry-points"))
    if folder is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        patch.setenv(
            "PYTHONPATH", os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
        )
        yield


def auth_app_config(folder: Path, policy: str, admin: str = "admin") -> dict[str, str]:
    """Files of a server running the auth app in ``folder`` (basic-auth's ini with the app's section, the policy,
    the audit key) and the environment that points ``mlflow server`` at them."""
    from adapter_registry.registry.auth_app import config_section, new_key

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "promotion_policy.yml").write_text(policy)
    new_key(folder / "audit.key")
    ini = folder / "basic_auth.ini"
    ini.write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{folder / 'auth.db'}\n"
        f"admin_username = {admin}\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n\n"
        + config_section(folder / "promotion_policy.yml", folder / "audit.key")
    )
    return {"MLFLOW_AUTH_CONFIG_PATH": str(ini)}


@pytest.fixture(scope="session")
def team_stack(auth_app_visible: None) -> Iterator[Stack]:
    """The team stack (PostgreSQL + mlflow server with the project's auth app) started and stopped with README's commands
    (``adapter-registry stack up`` / ``stack down``) in a fresh folder under /tmp (as root, PostgreSQL runs as the
    postgres user, who cannot enter pytest's 0700 tmp dirs)."""
    from typer.testing import CliRunner

    from adapter_registry.cli import app

    if postgres_bin() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH), and under CI=true "
                "the PostgreSQL-backed registry tests must run: install it first (.ci/run does: apt-get install -y "
                "postgresql)"
            )
        pytest.skip(POSTGRES_MISSING)
    folder = Path(tempfile.mkdtemp(prefix="adapter-registry-stack-"))
    try:
        up = CliRunner().invoke(app, ["stack", "up", "--folder", str(folder), "--port", str(free_port()),
                                      "--workers", "1"])  # fmt: skip
        assert up.exit_code == 0, f"stack up failed: {up.stderr}"
        yield Stack(folder)
    finally:
        down = CliRunner().invoke(app, ["stack", "down", "--folder", str(folder)])
        shutil.rmtree(folder, ignore_errors=True)
        assert down.exit_code == 0, f"stack down failed: {down.stderr}"


def stack_env(stack: Stack) -> dict[str, str]:
    """MLFLOW_TRACKING_URI / USERNAME / PASSWORD of the stack (what ``stack up`` prints)."""
    return dict(line.removeprefix("export ").split("=", 1) for line in stack.exports())


SERVER = [pytest.mark.server, pytest.mark.slow]
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("server-sqlite", id="server-sqlite", marks=SERVER),
    pytest.param("server-postgres", id="server-postgres", marks=SERVER),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AdapterStore:
    """A registry on each backend. Servers are shared by the session: use a fresh adapter name per test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    if request.param == "sqlite":
        shutil.copyfile(request.getfixturevalue("empty_db"), tmp_path / "mlflow.db")
        return AdapterStore(f"sqlite:///{tmp_path / 'mlflow.db'}")
    if request.param == "server-sqlite":
        return AdapterStore(request.getfixturevalue("mlflow_server"))
    for key, value in stack_env(request.getfixturevalue("team_stack")).items():
        monkeypatch.setenv(key, value)
    return AdapterStore(os.environ["MLFLOW_TRACKING_URI"])
