"""The one translator of backend errors: MLflow (and its transport) errors become ``RegistryError`` here.

Every call into MLflow in ``registry/`` runs inside ``mlflow_errors(doing)``, so a caller only ever sees
``RegistryError`` with one of our codes and a message that says what was being done. A server that cannot be
reached is one line naming it and how long was waited (``unreachable``); credentials inside a URI never reach a
message (``mask_credentials``, the one masking function: the translator, the store's ``repr``, the policy's
identity check and the CLI's ``error:`` line use it).

Two kinds of backend error are translated: an ``MlflowException`` (from MLflow's client, looked at only where
mlflow was imported: a read command never imports it) and a ``BackendError`` (from the light clients,
``registry.rest`` and ``registry.sqlite``).
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import TypeVar
from urllib.parse import urlsplit

from adapter_registry.registry.entities import RegistryError
from adapter_registry.registry.records import BackendError

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


_HTTP_STATUS = re.compile(r"failed with error code (\d{3}) != 200")


def _mlflow_exception(exc: BaseException) -> tuple[str, str] | None:
    """(error code, first line of the message) of an MlflowException; None for anything else (mlflow is not
    imported to find out: where it was never imported, nothing can be one)."""
    module = sys.modules.get("mlflow.exceptions")
    if module is None or not isinstance(exc, module.MlflowException):
        return None
    first_line = str(exc.message).strip().splitlines()[0] if exc.message else type(exc).__name__
    status = _HTTP_STATUS.search(first_line)
    if (
        status and status.group(1) == "401"
    ):  # MLflow's client reports a refused login as a generic API failure
        return "UNAUTHENTICATED", (
            "the tracking server refused the credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to a user of that server"
        )
    if status and status.group(1) == "403":
        return "PERMISSION_DENIED", first_line
    return exc.error_code, first_line


@contextlib.contextmanager
def mlflow_errors(doing: str) -> Iterator[None]:
    """Translate backend errors raised while ``doing`` into RegistryError (``"<doing>: <first line>"``); a server
    that cannot be reached into one ``unreachable`` line."""
    started = time.monotonic()
    try:
        yield
    except RegistryError:
        raise
    except BackendError as exc:
        first_line = exc.message.strip().splitlines()[0] if exc.message.strip() else exc.error_code
        raise RegistryError(
            CODES.get(exc.error_code, exc.error_code), mask_credentials(f"{doing}: {first_line}")
        ) from exc
    except Exception as exc:
        failed = _connection_error(exc)
        if failed is not None:
            raise unreachable(failed[0], time.monotonic() - started, failed[1], doing) from exc
        found = _mlflow_exception(exc)
        if found is None:
            raise
        code, first_line = found
        raise RegistryError(
            CODES.get(code, code or "BACKEND"), mask_credentials(f"{doing}: {first_line}")
        ) from exc


MISSING = ("RESOURCE_DOES_NOT_EXIST",)


def error_code(exc: BaseException) -> str | None:
    """MLflow's error code of a backend error (either kind), else None."""
    if isinstance(exc, BackendError):
        return exc.error_code
    found = _mlflow_exception(exc)
    return None if found is None else found[0]


def lookup(call: Callable[[], T], doing: str, missing: tuple[str, ...] = MISSING) -> T | None:
    """``call()``, or None when the store answers with one of the ``missing`` codes; other errors translated."""
    with mlflow_errors(doing):
        try:
            return call()
        except Exception as exc:
            if error_code(exc) in missing:
                return None
            raise
