"""The environment every entry point starts from: offline and quiet unless the user's environment says otherwise.

Importing ``adapter_registry`` changes nothing; each entry point calls :func:`offline_defaults` first thing:
the ``adapter-registry`` CLI (its callback), Kedro (``settings.py``, imported when ``kedro`` starts the project),
the benchmark scripts and the test suite (``tests/conftest.py``). The Makefile exports the same defaults.

The CLI also calls :func:`network_defaults`: a tracking server that cannot be reached fails a command within
``$ADAPTER_REGISTRY_TIMEOUT`` seconds (30 by default) instead of MLflow's ~4 minutes of retries.
"""

from __future__ import annotations

import os

# A value already in the environment wins: a user with network access may export HF_HUB_OFFLINE=0.
OFFLINE_DEFAULTS: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",  # nothing is fetched from the Hugging Face Hub at run time
    "TRANSFORMERS_OFFLINE": "1",
    "KEDRO_DISABLE_TELEMETRY": "true",  # kedro-telemetry sends nothing
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",  # no fork warning from the tokenizers thread pool
    "GIT_PYTHON_REFRESH": "quiet",  # mlflow imports GitPython: no error where git is missing
}


def offline_defaults() -> None:
    """Set every :data:`OFFLINE_DEFAULTS` entry the environment does not set already.

    Call it before ``huggingface_hub`` is imported (transformers and peft import it): it reads ``HF_HUB_OFFLINE``
    once, at import.
    """
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)


# ------------------------------------------------------------------------------------------------ network
TIMEOUT_VARIABLE = (
    "ADAPTER_REGISTRY_TIMEOUT"  # seconds a call to an unreachable tracking server may take in all
)
DEFAULT_TIMEOUT_S = 30
BACKOFF_FACTOR = 1  # urllib3 sleeps 0, then 2, 4 ... seconds (times this) before the 1st, 2nd, 3rd ... retry
DEFAULT_JITTER_S = 1.0  # MLflow's default MLFLOW_HTTP_REQUEST_BACKOFF_JITTER, added to each of those sleeps


def network_settings(budget_s: int) -> dict[str, str]:
    """MLflow's HTTP settings under which a request to an unreachable server gives up within ``budget_s`` seconds
    (tries x per-try timeout + the sleeps between them); MLflow's own defaults retry for about 4 minutes.

    Two retries while each try still gets at least 3 s, fewer on a tight budget.
    """
    jitter = float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER") or DEFAULT_JITTER_S)
    for retries in (2, 1, 0):
        sleeps = sum(BACKOFF_FACTOR * 2 ** (n - 1) + jitter for n in range(2, retries + 1))
        per_try = int((budget_s - sleeps) // (retries + 1))
        if per_try >= 3:
            break
    return {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, per_try)),  # seconds, connect and read, per try
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(BACKOFF_FACTOR),
    }


def timeout_budget() -> int:
    """``$ADAPTER_REGISTRY_TIMEOUT`` (whole seconds), else 30; ValueError naming the fix when it is no number."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0
    if not 0 < seconds < 10**6:
        raise ValueError(
            f"{TIMEOUT_VARIABLE}={text!r} is not a positive number of seconds. Fix: set it to e.g. 30, or unset it"
        )
    return max(1, int(seconds))


def network_defaults() -> None:
    """Set each of :func:`network_settings` for ``$ADAPTER_REGISTRY_TIMEOUT`` that the environment does not set
    already (a user's ``MLFLOW_HTTP_REQUEST_*`` wins). Called by the ``adapter-registry`` CLI; ValueError for a
    bad ``ADAPTER_REGISTRY_TIMEOUT``."""
    for key, value in network_settings(timeout_budget()).items():
        os.environ.setdefault(key, value)
