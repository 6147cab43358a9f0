"""``adapter-registry``: promote, audit, trace and check registered PEFT adapters.

Heavy libraries (mlflow, peft, torch) are imported inside the commands, so ``--help`` answers at once. Every
command takes ``--json``; a failure prints one line ``error: ...`` on stderr and exits non-zero (1; ``compat``
exits 3 for "retrain recommended" and 4 for "incompatible"; ``export`` exits 4 for an adapter the engine cannot
take; ``canary watch`` exits 2 when it rolled the canary back and 4 when it stopped watching undecided).

This module is the CLI's table of contents: each command is registered here, in the order ``--help`` lists them,
from the module of its concept (``common.py`` holds what they all share).
"""

from __future__ import annotations

import typer

from adapter_registry.cli import (
    canary,
    common,
    compat,
    fleet,
    lineage,
    project,
    serving,
    stack,
    stages,
    versions,
    vllm,
)

app = typer.Typer(
    name="adapter-registry",
    help="Promote, audit, trace and check PEFT adapters registered in MLflow. "
    "Address a version as NAME/VERSION or NAME@STAGE.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.callback()(common._root)
app.command("list")(versions.list_)
app.command()(versions.show)
app.command()(stages.promote)
app.command()(stages.rollback)
app.command()(stages.retire)
app.command()(stages.audit)
app.command()(stages.history)
app.command()(lineage.lineage)
app.command()(compat.compat)
app.command()(vllm.export)
app.command()(versions.pull)
app.command()(serving.serve)
app.command("vllm-sync")(vllm.vllm_sync)
app.command()(project.reproduce)
app.command()(project.recipes)
app.add_typer(stack.stack_app, name="stack")
app.add_typer(canary.canary_app, name="canary")
app.command()(fleet.fleet)


def main() -> None:
    """Console entry point."""
    app(prog_name="adapter-registry")


# Kedro loads `cli` from <package>/cli (this package) as extra `kedro` project commands; we add none (the product's
# CLI is `adapter-registry`, above), but the name must exist or `kedro run` refuses to start.
cli = typer.main.get_group(typer.Typer(name="adapter-registry-kedro", add_completion=False))
