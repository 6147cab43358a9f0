"""Our log lines are printed as they are, never read as rich markup.

Kedro's ``RichHandler`` turns markup on for every record, so a line that carries a path, a user's text or a
child process's output with ``[/...]`` in it (gloo's ``[/.../pair.cc:537]``) raised ``MarkupError`` from inside
``log.info`` and took the node down with it. ``conf/logging.yml`` puts :class:`PlainText` on the handler; Kedro's
own coloured lines (those that carry ``rich_format``) keep their markup.
"""

from __future__ import annotations

import logging


class PlainText(logging.Filter):
    """Marks each record without a markup choice of its own as plain text (``record.markup = False``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "rich_format") and not hasattr(record, "markup"):
            record.markup = False
        return True
