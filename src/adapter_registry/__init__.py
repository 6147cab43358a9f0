"""adapter-registry: declarative PEFT adapters, trained, evaluated, merged and registered in MLflow."""

import os as _os

# Offline and quiet by default; a user with network access may override any of these in the environment.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "KEDRO_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}.items():
    _os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
