"""The request log: one JSON line per request (time, tenant, adapter, version, digest, latency, status), rotated.

No prompt or answer text is written unless the server was started with ``--log-prompts``. The file rotates at
``max_bytes`` and keeps ``backups`` old files (Python's ``RotatingFileHandler``).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from pathlib import Path
from typing import Any


class RequestLog:
    """Appends request records as JSON lines to a rotating file (or nowhere, without a path)."""

    def __init__(
        self, path: Path | None, log_prompts: bool = False, max_bytes: int = 10 << 20, backups: int = 5
    ) -> None:
        self.path = path
        self.log_prompts = log_prompts
        self._logger = logging.getLogger(f"adapter_registry.requests.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._handler: logging.Handler | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )
            self._handler.setFormatter(logging.Formatter("%(message)s"))
            self._logger.addHandler(self._handler)

    def write(self, record: dict[str, Any], text: dict[str, Any] | None = None) -> None:
        """One line: ``record``, plus ``text`` (prompt/answer) only when prompts are logged."""
        if self._handler is None:
            return
        line = {**record, **(text or {})} if self.log_prompts else record
        self._logger.info(json.dumps(line, ensure_ascii=False, default=str))

    def close(self) -> None:
        if self._handler is not None:
            self._logger.removeHandler(self._handler)
            self._handler.close()
