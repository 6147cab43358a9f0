"""What every command shares: the root options (``--tracking-uri``), the registry and policy it works on, the
one error line, ``--json`` or a rendering, and the option types."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from adapter_registry.environment import network_defaults, offline_defaults

if TYPE_CHECKING:
    from adapter_registry.registry.store import AdapterStore

_state: dict[str, Any] = {"tracking_uri": None}

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
RefArg = Annotated[str, typer.Argument(help="NAME/VERSION or NAME@STAGE")]
PolicyOpt = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        help="promotion policy YAML of a local registry (default conf/base/promotion_policy.yml); a tracking "
        "server enforces its own",
    ),
]


def _root(
    tracking_uri: Annotated[
        Optional[str],  # noqa: UP045 (typer reads the annotation)
        typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="default: sqlite:///./mlflow.db"),
    ] = None,
) -> None:
    _state["tracking_uri"] = tracking_uri
    offline_defaults()  # before any command imports mlflow, peft or transformers
    try:
        network_defaults()  # an unreachable server fails within $ADAPTER_REGISTRY_TIMEOUT, not MLflow's ~4 min
    except ValueError as exc:
        _error_line(str(exc))
        raise typer.Exit(1) from None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr keeps to one line
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout keeps to --json


def _store() -> AdapterStore:
    """The registry every command works on; one that does not exist is an error (no command creates one:
    ``make run``/``kedro run`` does, on its first registration)."""
    from adapter_registry.registry.store import AdapterStore

    uri = _state["tracking_uri"]
    return AdapterStore(uri, must_exist=True) if uri else AdapterStore.from_env(must_exist=True)


def _policy(store: AdapterStore, path: Path | None) -> Any:
    """The promotion policy of this registry (``registry.policy.policy_for``); warnings go to stderr."""
    from adapter_registry.registry.policy import policy_for

    app = store.server_app()
    warn = lambda message: typer.echo(f"warning: {message}", err=True)  # noqa: E731
    return policy_for(store.tracking_uri, None if app is None else app.get("policy"), path, warn=warn)


def _error_line(message: str) -> None:
    """``error: <message>`` on stderr, one line, with any credentials inside a URI masked."""
    from adapter_registry.registry.errors import mask_credentials

    typer.echo(f"error: {mask_credentials(message)}", err=True)


@contextmanager
def _errors() -> Iterator[None]:
    """One line on stderr and exit 1 for every registry (or input) error."""
    from adapter_registry.registry.entities import RegistryError

    try:
        yield
    except RegistryError as exc:
        _error_line(exc.message)
        raise typer.Exit(1) from None


def _emit(as_json: bool, data: Any, render: Callable[[], None]) -> None:
    long = as_json and isinstance(data, list) and len(data) > 200  # indent=2: pure Python, 1 s at 10,000
    if long:  # one item a line, each by json's C encoder
        typer.echo("[\n" + ",\n".join(json.dumps(item, default=str) for item in data) + "\n]")
    elif as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        render()


def _console() -> Any:
    from rich.console import Console

    return Console(width=160)
