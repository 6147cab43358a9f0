"""The one translator of backend errors: MLflow (and its transport) errors become ``RegistryError`` here.

Every call into MLflow in ``registry/`` runs inside ``mlflow_errors(doing)``, so a caller only ever sees
``RegistryError`` with one of our codes and a message that says what was being done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from adapter_registry.registry.entities import RegistryError

T = TypeVar("T")
CODES = {  # MLflow error codes -> ours
    "RESOURCE_DOES_NOT_EXIST": "NOT_FOUND",
    "RESOURCE_ALREADY_EXISTS": "ALREADY_EXISTS",
    "INVALID_PARAMETER_VALUE": "INVALID_INPUT",
    "PERMISSION_DENIED": "PERMISSION_DENIED",
    "UNAUTHENTICATED": "UNAUTHENTICATED",
}


@contextlib.contextmanager
def mlflow_errors(doing: str) -> Iterator[None]:
    """Translate MLflow errors raised while ``doing`` into RegistryError (``"<doing>: <first line>"``)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except RegistryError:
        raise
    except MlflowException as exc:
        first_line = str(exc.message).strip().splitlines()[0] if exc.message else type(exc).__name__
        code = CODES.get(exc.error_code, exc.error_code or "BACKEND")
        raise RegistryError(code, f"{doing}: {first_line}") from exc


MISSING = ("RESOURCE_DOES_NOT_EXIST",)


def lookup(call: Callable[[], T], doing: str, missing: tuple[str, ...] = MISSING) -> T | None:
    """``call()``, or None when MLflow answers with one of the ``missing`` codes; other errors translated."""
    from mlflow.exceptions import MlflowException

    with mlflow_errors(doing):
        try:
            return call()
        except MlflowException as exc:
            if exc.error_code in missing:
                return None
            raise
