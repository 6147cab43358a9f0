"""The one translator of backend errors: MLflow (and its transport) errors become ``RegistryError`` here.

Every call into MLflow in ``registry/`` runs inside ``mlflow_errors(doing)``, so a caller only ever sees
``RegistryError`` with one of our codes and a message that says what was being done. A server that cannot be
reached is one line naming it and how long was waited (``unreachable``); credentials inside a URI never reach a
message (``mask_credentials``, the one masking function: the translator, the store's ``repr``, the policy's
identity check and the CLI's ``error:`` line use it).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from typing import TypeVar
from urllib.parse import urlsplit

from adapter_registry.registry.entities import RegistryError

T = TypeVar("T")
CODES = {  # MLflow error codes -> ours
    "RESOURCE_DOES_NOT_EXIST": "NOT_FOUND",
    "RESOURCE_ALREADY_EXISTS": "ALREADY_EXISTS",
    "INVALID_PARAMETER_VALUE": "INVALID_INPUT",
    "PERMISSION_DENIED": "PERMISSION_DENIED",
    "UNAUTHENTICATED": "UNAUTHENTICATED",
}
# scheme://user:password@ or scheme://token@ (the user part of a URI, up to the first / of its path)
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s/@:]*)(?P<password>:[^\s/@]*)?@"
)


def mask_credentials(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***`` (``http://user:***@host``), and a lone
    user part (often a token) too (``https://***@host``)."""

    def masked(match: re.Match[str]) -> str:
        user = f"{match['user']}:***" if match["password"] is not None else "***"
        return f"{match['scheme']}{user}@"

    return _USERINFO.sub(masked, text)


def server_of(url: str) -> str:
    """``scheme://host:port`` of a URL, without credentials or path."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}" if parts.hostname else mask_credentials(url)


def unreachable(url: str, seconds: float, exc: BaseException, doing: str = "") -> RegistryError:
    """The error of a server that could not be reached: which one, after how long, and why, in one line."""
    reason = getattr(exc, "reason", None) or exc  # urllib3's MaxRetryError wraps the last try's error
    said = next((a for a in reversed(getattr(reason, "args", ())) if isinstance(a, str)), str(reason))
    text = said.split("Failed to establish a new connection: ")[-1]
    while_doing = f" ({doing})" if doing else ""
    return RegistryError(
        "UNREACHABLE",
        mask_credentials(
            f"tracking server {server_of(url)} unreachable after {seconds:.0f} s: {text}{while_doing}. Fix: check "
            "MLFLOW_TRACKING_URI and that the server runs; ADAPTER_REGISTRY_TIMEOUT sets how long to wait"
        ),
    )


def _connection_error(exc: BaseException) -> tuple[str, BaseException] | None:
    """(the URL, the transport error) when ``exc`` or an error it was raised from is a failed connection."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.ConnectionError | requests.Timeout):
            request = getattr(seen, "request", None)
            url = getattr(request, "url", None) or ""
            inner = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else seen
            return url, inner
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def mlflow_errors(doing: str) -> Iterator[None]:
    """Translate MLflow errors raised while ``doing`` into RegistryError (``"<doing>: <first line>"``); a server
    that cannot be reached into one ``unreachable`` line."""
    from mlflow.exceptions import MlflowException

    started = time.monotonic()
    try:
        yield
    except RegistryError:
        raise
    except Exception as exc:
        failed = _connection_error(exc)
        if failed is not None:
            raise unreachable(failed[0], time.monotonic() - started, failed[1], doing) from exc
        if not isinstance(exc, MlflowException):
            raise
        first_line = str(exc.message).strip().splitlines()[0] if exc.message else type(exc).__name__
        code = CODES.get(exc.error_code, exc.error_code or "BACKEND")
        raise RegistryError(code, mask_credentials(f"{doing}: {first_line}")) from exc


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
