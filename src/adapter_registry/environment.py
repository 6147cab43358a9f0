"""The environment every entry point starts from: offline and quiet unless the user's environment says otherwise.

Importing ``adapter_registry`` changes nothing; each entry point calls :func:`offline_defaults` first thing:
the ``adapter-registry`` CLI (its callback), Kedro (``settings.py``, imported when ``kedro`` starts the project),
the benchmark scripts and the test suite (``tests/conftest.py``). The Makefile exports the same defaults.
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
