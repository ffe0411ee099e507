"""Logging setup with a last line of defence: configured secrets are masked in every log line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from agent.config import Config
from agent.secrets import secret_values

__all__ = ["SecretRedactingFilter", "config_secrets", "configure_logging"]

MASK = "******"


class SecretRedactingFilter(logging.Filter):
    """Replaces every configured secret value in a record's final message with a mask."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, MASK)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            for secret in self.secrets:
                record.exc_text = record.exc_text.replace(secret, MASK)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure_logging(level: int, secrets: Iterable[str]) -> SecretRedactingFilter:
    """Log to stderr at `level`; returns the redaction filter so a reload can update it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    redactor = SecretRedactingFilter(secrets)
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The libraries' own debug output can include protocol lines; keep them at warning.
    for noisy in ("aioimaplib", "aiosmtplib", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    return redactor


def config_secrets(config: Config) -> list[str]:
    """Every secret value in a loaded Config: every field typed `Secret`, the sandbox's too."""
    return secret_values(config)
