"""The IMAP package's one logger, and the masking of a mailbox's secrets in every line it writes.

Every module of `agent.imap` logs through `LOG`, named `agent.imap.watcher` as it was when the
package was one module: operators' log lines and filters keep their logger name. Code that knows
its mailbox logs through a `MaskedLog`, which masks the mailbox's secrets in the message and in any
traceback, before any handler sees the record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

__all__ = ["LOG", "Log", "MaskedLog"]

LOG: Final = logging.getLogger("agent.imap.watcher")

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]

_REDACT_ATTR: Final = "imap_redact"  # the record attribute `MaskedLog` sets and `_Mask` reads


class MaskedLog(logging.LoggerAdapter[logging.Logger]):
    """`LOG`, with `redact` applied to the final text of every record logged through it."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        # LoggerAdapter puts this mapping on every record as attributes, for `_Mask` to find.
        super().__init__(LOG, {_REDACT_ATTR: redact})


class _Mask(logging.Filter):
    """Applies a record's own redaction (set by `MaskedLog`) to its message and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact: Callable[[str], str] | None = getattr(record, _REDACT_ATTR, None)
        if redact is None:
            return True
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # Formatted here as a handler would, but kept only when masking changed something.
            text = logging.Formatter().formatException(record.exc_info)
            if redact(text) != text:
                record.exc_text = redact(text)
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


# On the logger, not a handler: it runs before every handler sees the record.
LOG.addFilter(_Mask())
