"""Logging setup: readable text, logfmt or JSON lines, and configured secrets masked in every one.

The format is chosen on the command line (`--log-format`). Text keeps the message as it is; logfmt
and JSON write the probe's route, mailbox and probe id (`agent.log_fields`) as fields of their own,
so a log pipeline can select every line about one probe or pair. The redaction filter runs before
any format: secrets are masked in the message and in tracebacks alike.
"""

from __future__ import annotations

import enum
import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from agent.log_fields import PROBE_FIELDS
from agent.secrets import Redactor

__all__ = ["LogFormat", "SecretRedactingFilter", "configure_logging"]

# A one-character "password" would mask that character in every line; real secrets are longer.
_MIN_SECRET_LENGTH = 4


class LogFormat(enum.StrEnum):
    TEXT = "text"
    LOGFMT = "logfmt"
    JSON = "json"


class SecretRedactingFilter(logging.Filter):
    """Replaces every configured secret value in a record's final message with the mask."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._redact = Redactor(secrets, min_length=_MIN_SECRET_LENGTH)

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._redact.secrets

    def update(self, secrets: Iterable[str]) -> None:
        self._redact.update(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._redact.secrets:
            return True
        message = record.getMessage()
        redacted = self._redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(record: logging.LogRecord) -> list[tuple[str, str]]:
    """The line's fields in a fixed order: time, level, logger, message, probe fields, error."""
    fields = [
        ("ts", _timestamp(record)),
        ("level", record.levelname.lower()),
        ("logger", record.name),
        ("msg", record.getMessage()),
    ]
    fields += [(name, str(getattr(record, name))) for name in PROBE_FIELDS if hasattr(record, name)]
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        fields.append(("error", record.exc_text))
    return fields


class LogfmtFormatter(logging.Formatter):
    """`key=value` pairs; values with spaces, quotes or `=` are quoted, newlines escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _fields(record))


def _logfmt_value(value: str) -> str:
    if value and not any(char in value for char in ' "=\\\n\r\t'):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(dict(_fields(record)), ensure_ascii=False)


def _formatter(log_format: LogFormat) -> logging.Formatter:
    match log_format:
        case LogFormat.TEXT:
            return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        case LogFormat.LOGFMT:
            return LogfmtFormatter()
        case LogFormat.JSON:
            return JsonFormatter()


def configure_logging(
    level: int, secrets: Iterable[str], *, log_format: LogFormat = LogFormat.TEXT
) -> SecretRedactingFilter:
    """Log to stderr at `level`; returns the redaction filter so a reload can update it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(log_format))
    redactor = SecretRedactingFilter(secrets)
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The libraries' own debug output can include protocol lines; keep them at warning.
    for noisy in ("aioimaplib", "aiosmtplib", "apscheduler", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    return redactor
