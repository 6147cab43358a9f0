"""``stack up|down|status``: the team registry (PostgreSQL + mlflow server) on this machine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from adapter_registry.cli.common import JsonOpt, _emit

stack_app = typer.Typer(
    help="The team registry on this machine: PostgreSQL + mlflow server (the adapter-registry auth app: "
    "basic-auth, protected stages, a signed audit trail; proxied artifacts) kept in one folder (default .team/). "
    '`eval "$(adapter-registry stack up)"` points this shell at it.',
    no_args_is_help=True,
)
FolderOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--folder", envvar="ADAPTER_REGISTRY_TEAM_DIR", help="where the stack lives (default .team)"
    ),
]


@contextmanager
def _stack_errors() -> Iterator[None]:
    from adapter_registry.stack import StackError

    try:
        yield
    except StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@stack_app.command("up")
def stack_up(
    folder: FolderOpt = None,
    port: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--port", help="the tracking server's port (default: the last one, else 5000)"),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="interface to bind; 0.0.0.0 serves the LAN")
    ] = "127.0.0.1",
    workers: Annotated[int, typer.Option("--workers", min=1, help="server worker processes")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Start PostgreSQL and the tracking server (whatever is not running), wait until they answer, then print the
    `export` lines that point a shell at them (progress goes to stderr)."""
    from adapter_registry.stack import Stack

    stack = Stack(folder)
    with _stack_errors():
        status = stack.up(port=port, host=host, workers=workers, log=lambda m: typer.echo(m, err=True))
        exports = stack.exports()
    if as_json:
        env = dict(line.removeprefix("export ").split("=", 1) for line in exports)
        typer.echo(json.dumps({**status.to_dict(), "env": env}, indent=2))
        return
    typer.echo("\n".join(exports))


@stack_app.command("down")
def stack_down(folder: FolderOpt = None, as_json: JsonOpt = False) -> None:
    """Stop the tracking server and PostgreSQL; the data stays in the folder (`rm -r` it to start afresh)."""
    from adapter_registry.stack import Stack

    with _stack_errors():
        status = Stack(folder).down(log=lambda m: typer.echo(m, err=True))
    _emit(as_json, status.to_dict(), lambda: typer.echo(f"stopped; data kept in {status.folder}"))


@stack_app.command("status")
def stack_status(folder: FolderOpt = None, as_json: JsonOpt = False) -> None:
    """What runs: PostgreSQL, the tracking server and its URI; exits 1 unless both run."""
    from adapter_registry.stack import Stack

    with _stack_errors():
        status = Stack(folder).status()

    def render() -> None:
        typer.echo(f"folder      {status.folder}")
        typer.echo(
            f"postgres    {'running on 127.0.0.1:' + str(status.details['postgres_port']) if status.postgres else 'stopped'}"
        )
        typer.echo(f"mlflow      {'running at ' + str(status.tracking_uri) if status.mlflow else 'stopped'}")
        typer.echo(f"artifacts   {status.details['artifacts']}")

    _emit(as_json, status.to_dict(), render)
    if not (status.postgres and status.mlflow):
        raise typer.Exit(1)
