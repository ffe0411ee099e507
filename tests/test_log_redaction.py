"""Configured secrets never reach the log, whatever a log call or a traceback contains."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from agent.app.logs import SecretRedactingFilter
from agent.config import validate_config
from agent.secrets import MASK
from agent.secrets import secret_values as config_secrets


def _logger(secrets: list[str]) -> tuple[logging.Logger, io.StringIO, SecretRedactingFilter]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    redactor = SecretRedactingFilter(secrets)
    handler.addFilter(redactor)
    logger = logging.getLogger(f"test-redaction-{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return logger, stream, redactor


def test_secret_in_arguments_is_masked() -> None:
    logger, stream, _ = _logger(["hunter2-password"])
    logger.warning("login failed for %s with %s", "user", "hunter2-password")
    assert stream.getvalue() == f"login failed for user with {MASK}\n"


def test_secret_in_a_traceback_is_masked() -> None:
    logger, stream, _ = _logger(["s3cr3t-token-value"])
    try:
        raise RuntimeError("server said: s3cr3t-token-value")
    except RuntimeError:
        logger.exception("boom")
    assert "s3cr3t-token-value" not in stream.getvalue()
    assert MASK in stream.getvalue()


def test_longer_secret_is_masked_whole_and_update_adds_secrets() -> None:
    logger, stream, redactor = _logger(["abcd", "abcdefgh"])
    logger.info("abcdefgh abcd")
    redactor.update([*redactor.secrets, "newsecret"])
    logger.info("newsecret")
    assert stream.getvalue() == f"{MASK} {MASK}\n{MASK}\n"


def test_short_values_are_not_treated_as_secrets() -> None:
    # A one-character "password" would mask every such character in every line.
    logger, stream, _ = _logger(["a"])
    logger.info("a b c")
    assert stream.getvalue() == "a b c\n"


def test_config_secrets_cover_every_password_of_the_config(tmp_path: Path) -> None:
    config = validate_config(
        {
            "secret": "hmac-secret-0123456789",
            "routes": [
                {
                    "name": "r",
                    "host": "h",
                    "from": "p@example.com",
                    "bounce_mailbox": "b",
                    "auth": {"username": "u", "password": "route-password"},
                }
            ],
            "mailboxes": [
                {
                    "name": "m",
                    "host": "h",
                    "address": "s@example.com",
                    "auth": {"username": "u", "password": "seed-password"},
                }
            ],
            "bounce_mailboxes": [
                {
                    "name": "b",
                    "host": "h",
                    "address": "b@example.com",
                    "auth": {"username": "u", "password": "bounce-password"},
                }
            ],
        },
        base_dir=tmp_path,
        environ={},
    )
    assert set(config_secrets(config)) == {
        "hmac-secret-0123456789",
        "route-password",
        "seed-password",
        "bounce-password",
    }


def test_config_secrets_cover_the_oauth2_client_secret_and_refresh_token(tmp_path: Path) -> None:
    oauth2 = {
        "token_url": "https://login.example.com/token",
        "client_id": "app-id",
        "client_secret": "oauth-client-secret",
        "refresh_token": "oauth-refresh-token",
    }
    config = validate_config(
        {
            "secret": "hmac-secret-0123456789",
            "routes": [
                {
                    "name": "r",
                    "host": "h",
                    "from": "p@example.com",
                    "auth": {"username": "u", "oauth2": oauth2},
                }
            ],
            "mailboxes": [
                {
                    "name": "m",
                    "host": "h",
                    "address": "s@example.com",
                    "auth": {"username": "u", "oauth2": oauth2},
                }
            ],
        },
        base_dir=tmp_path,
        environ={},
    )
    assert set(config_secrets(config)) == {
        "hmac-secret-0123456789",
        "oauth-client-secret",
        "oauth-refresh-token",
    }
