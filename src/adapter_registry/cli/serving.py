"""``serve``: every stage holder registered for a base, served over HTTP by one process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adapter_registry.cli.common import _error_line, _errors, _state


def serve(
    base: Annotated[
        str, typer.Option("--base", help="offline base (smollm2-135m-instruct) or a local model folder")
    ],
    stage: Annotated[
        str, typer.Option("--stage", help="serve the version of each adapter that holds this stage")
    ] = "production",
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    poll_seconds: Annotated[
        float, typer.Option("--poll-seconds", help="how often the registry is re-read")
    ] = 10.0,
    tenants: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--tenants", help="tenant -> adapter YAML (default conf/base/tenants.yml)"),
    ] = None,
    max_prompt_tokens: Annotated[
        int,
        typer.Option(
            "--max-prompt-tokens",
            min=1,
            help="longer prompts are refused (413): one would stall its whole batch",
        ),
    ] = 2048,
    quantization: Annotated[
        str,
        typer.Option(
            "--quantization",
            help="load the base quantised (nf4, nf4-dq, fp4, fp4-dq, int8) to serve QLoRA adapters on the base "
            "they were evaluated on; default: full precision",
        ),
    ] = "",
    request_log: Annotated[
        Path, typer.Option("--request-log", help="JSON line per request, rotated at 10 MB ('' for none)")
    ] = Path("logs/requests.jsonl"),
    log_prompts: Annotated[
        bool, typer.Option("--log-prompts", help="also write each request's input, prompt and answer")
    ] = False,
    webhook_url: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--webhook-url",
            help="this server's /v1/registry/events URL as the tracking server reaches it: registers a signed "
            "MLflow webhook so an alias move is served at once (polling stays on)",
        ),
    ] = None,
    max_resident: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--max-resident",
            min=1,
            help="adapters loaded at once; the others load on their first request, the least recently used "
            "making room (default: all)",
        ),
    ] = None,
    pin: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--pin", help="adapter or tenant always resident (repeat for several)"),
    ] = None,
    adapter_cache: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--adapter-cache", help="folder for pulled adapter files, kept (default: a temporary one)"
        ),
    ] = None,
    max_queue: Annotated[
        int,
        typer.Option("--max-queue", min=1, help="requests waiting for a batch; beyond: 429 + Retry-After"),
    ] = 64,
    request_timeout: Annotated[
        float,
        typer.Option(
            "--request-timeout", help="seconds a request may take; then 504 and its work is dropped"
        ),
    ] = 60.0,
    shutdown_timeout: Annotated[
        float,
        typer.Option(
            "--shutdown-timeout", help="seconds in-flight requests get after SIGTERM before they stop"
        ),
    ] = 5.0,
    heartbeat_seconds: Annotated[
        float,
        typer.Option(
            "--heartbeat-seconds",
            help="announce this replica and what it serves in the registry's fleet this often (0: never)",
        ),
    ] = 5.0,
    advertise_url: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--advertise-url", help="this replica's URL as operators reach it (default http://HOST:PORT)"
        ),
    ] = None,
    feedback_ttl: Annotated[
        float, typer.Option("--feedback-ttl", help="seconds an answer takes feedback (POST /v1/feedback)")
    ] = 3600.0,
) -> None:
    """Serve every STAGE adapter registered for BASE over HTTP: many adapters on one base model."""
    from adapter_registry.serving.app import ServeOptions
    from adapter_registry.serving.app import serve as run_server
    from adapter_registry.serving.tenants import TenantsError

    options = ServeOptions(
        stage=stage, host=host, port=port, tracking_uri=_state["tracking_uri"], poll_seconds=poll_seconds,
        tenants_file=tenants, max_prompt_tokens=max_prompt_tokens, quantization=quantization,
        request_log=request_log if str(request_log) not in ("", ".") else None, log_prompts=log_prompts,
        webhook_url=webhook_url, max_resident=max_resident, pin=tuple(pin or ()), adapter_cache=adapter_cache,
        max_queue=max_queue, request_timeout=request_timeout, shutdown_timeout=shutdown_timeout,
        heartbeat_seconds=heartbeat_seconds, advertise_url=advertise_url, feedback_ttl=feedback_ttl,
    )  # fmt: skip
    try:
        with _errors():
            run_server(base, options)
    except (TenantsError, ValueError) as exc:
        _error_line(str(exc))
        raise typer.Exit(1) from None
