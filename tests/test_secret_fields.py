"""A new secret field is redacted everywhere by its type alone, with no list to update.

The route model is extended here with an OAuth client secret typed `Secret`, as a future provider
would add one; nothing else in the agent is told about it. Its value must then be found by
`secret_values`, masked in log lines and tracebacks, hidden by `repr`/`str`, blanked on the status
page, masked by the SMTP sender and never echoed by a configuration error.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.app.logs import SecretRedactingFilter
from agent.config import Config, ConfigError, Route, validate_config
from agent.model import ErrorKind, Outcome, SendResult, SmtpReply, Stage, TlsMode
from agent.secrets import MASK, Secret, secret_values
from agent.smtp.sender import SmtpTarget, send_probe
from agent.store.ledger import Ledger
from agent.web.status_page import Health, collect, render
from tests.scripted_smtp import Reply, Script, ScriptedSmtpServer

CLIENT_SECRET = "oauth-client-sekret-7f3a9c"
NOW = 1_790_000_000.0


class OAuthRoute(Route):
    """A route with one more secret, declared by its type only."""

    oauth_client_secret: Secret | None = None


class OAuthConfig(Config):
    """The configuration with such routes."""

    routes: tuple[OAuthRoute, ...]


def _data(**route: Any) -> dict[str, Any]:
    return {
        "secret": "hmac-secret-0123456789",
        "routes": [
            {
                "name": "oauth",
                "host": "smtp.example.com",
                "from": "probe@example.com",
                "oauth_client_secret": CLIENT_SECRET,
                **route,
            }
        ],
        "mailboxes": [
            {
                "name": "seed",
                "host": "imap.example.com",
                "address": "seed@example.com",
                "auth": {"username": "seed", "password": "seed-password"},
            }
        ],
    }


def _load(tmp_path: Path, **route: Any) -> Config:
    return validate_config(_data(**route), base_dir=tmp_path, environ={}, model=OAuthConfig)


def _config_error(tmp_path: Path, **route: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, **route)
    return str(caught.value)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return _load(tmp_path)


def test_the_extended_config_loads_the_new_secret(config: Config) -> None:
    route = config.routes[0]
    assert isinstance(route, OAuthRoute) and route.oauth_client_secret is not None
    assert route.oauth_client_secret.get_secret_value() == CLIENT_SECRET


def test_secret_values_finds_the_new_field_in_the_config_and_in_the_route(config: Config) -> None:
    assert CLIENT_SECRET in secret_values(config)
    # What SmtpTarget.secrets is filled from: the route's own subtree.
    assert secret_values(config.routes[0]) == [CLIENT_SECRET]


def test_repr_str_and_json_of_the_config_do_not_show_the_new_secret(config: Config) -> None:
    for text in (repr(config), str(config), repr(config.routes[0]), config.model_dump_json()):
        assert CLIENT_SECRET not in text


@pytest.fixture
def log(config: Config) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(SecretRedactingFilter(secret_values(config)))
    logger = logging.getLogger(f"test-secret-fields-{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.removeHandler(handler)


def test_the_log_filter_masks_the_new_secret_in_a_log_line(
    log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = log
    logger.warning("token request refused for client_secret=%s (401)", CLIENT_SECRET)
    line = stream.getvalue().rstrip("\n")
    assert CLIENT_SECRET not in line
    prefix, suffix = "token request refused for client_secret=", " (401)"
    assert line.startswith(prefix) and line.endswith(suffix)
    assert len(line) > len(prefix + suffix)  # masked, not dropped


def test_the_log_filter_masks_the_new_secret_in_a_traceback(
    log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = log
    try:
        raise RuntimeError(f"provider answered: invalid_client {CLIENT_SECRET}")
    except RuntimeError:
        logger.exception("token refresh failed")
    output = stream.getvalue()
    assert "Traceback" in output and "invalid_client" in output
    assert CLIENT_SECRET not in output


def test_the_status_page_blanks_the_new_secret_in_a_reply_text(
    config: Config, tmp_path: Path
) -> None:
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        ledger.record_sending(
            probe_id="p1", route="oauth", mailbox="seed", created_at=NOW - 60, deadline_at=NOW
        )
        ledger.record_send_result(
            "p1",
            SendResult(
                transcript=(
                    SmtpReply(Stage.BANNER, 220, None, "smtp.example.com ESMTP"),
                    SmtpReply(Stage.MAIL, 550, "5.7.1", f"5.7.1 client {CLIENT_SECRET} revoked"),
                ),
                accepted=False,
                accepted_at=None,
                duration_seconds=1.0,
            ),
        )
        ledger.finalize("p1", outcome=Outcome.REJECTED, finished_at=NOW - 55)
        health = Health(
            version="9.9.9",
            ready=True,
            ready_detail="probing",
            started_at=NOW - 3600,
            config_ok=True,
            config_loaded_at=NOW - 60,
        )
        data = collect(ledger, config, health, now=NOW)

    page = render(data, secrets=secret_values(config))
    assert CLIENT_SECRET not in page
    assert f"5.7.1 client {MASK} revoked" in page


async def test_the_smtp_sender_masks_the_new_secret_a_server_echoes(config: Config) -> None:
    echo = Reply(f"535 5.7.8 client secret {CLIENT_SECRET} is not valid for this account")
    script = Script(credentials=("probe", "route-password"), replies={Stage.AUTH: echo})
    async with ScriptedSmtpServer(script) as server:
        target = SmtpTarget(
            route="oauth",
            host="127.0.0.1",
            port=server.port,
            tls=TlsMode.NONE,
            tls_verify=True,
            username="probe",
            password="route-password",
            secrets=tuple(secret_values(config.routes[0])),
            ehlo_name="probe.example.com",
            connect_timeout=5.0,
            stage_timeout=30.0,
            total_timeout=30.0,
        )
        result = await send_probe(
            target,
            envelope_from="probe@example.com",
            recipients=("seed@example.com",),
            message=b"Subject: probe\r\n\r\nbody\r\n",
        )

    assert CLIENT_SECRET not in repr(target)
    auth = [reply for reply in result.transcript if reply.stage is Stage.AUTH]
    assert [reply.text for reply in auth] == [
        f"5.7.8 client secret {MASK} is not valid for this account"
    ]
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert result.error.message == (
        f"authentication refused: 535 5.7.8 client secret {MASK} is not valid for this account"
    )
    assert CLIENT_SECRET not in repr(result)


def test_a_config_error_of_the_new_field_does_not_echo_its_value(tmp_path: Path) -> None:
    # A number where a string is expected: any other key of this type would say ", got 4242...".
    message = _config_error(tmp_path, oauth_client_secret=424242424242)
    assert message == "<config>: routes[0].oauth_client_secret: expected a string"


def test_a_config_error_next_to_the_new_field_does_not_echo_it(tmp_path: Path) -> None:
    message = _config_error(tmp_path, port="submission")
    assert message == (
        "<config>: routes[0].port: expected a port number from 1 to 65535, got 'submission'"
    )
    assert CLIENT_SECRET not in message


def test_an_interpolation_error_in_the_new_field_does_not_quote_it(tmp_path: Path) -> None:
    message = _config_error(tmp_path, oauth_client_secret="${half of the sekret}rest")
    assert message == (
        "<config>: routes[0].oauth_client_secret: invalid variable reference: expected ${NAME} "
        "or ${NAME:-default} (write $${ for a literal ${)"
    )


def test_the_real_oauth2_secrets_are_found_by_type_and_never_echoed(tmp_path: Path) -> None:
    oauth2 = {
        "token_url": "https://login.example.com/token",
        "client_id": "app-id",
        "client_secret": CLIENT_SECRET,
        "refresh_token": "oauth-refresh-sekret-41c2",
        "grant": "client_credentials",  # refresh_token is not for this grant: an error
    }
    data = _data(auth={"username": "u", "oauth2": oauth2})
    del data["routes"][0]["oauth_client_secret"]
    with pytest.raises(ConfigError) as caught:
        validate_config(data, base_dir=tmp_path, environ={})
    assert "routes[0].auth.oauth2.refresh_token: expected only with grant refresh_token" in str(
        caught.value
    )
    assert CLIENT_SECRET not in str(caught.value) and "sekret" not in str(caught.value)

    del oauth2["refresh_token"]
    config = validate_config(data, base_dir=tmp_path, environ={})
    assert CLIENT_SECRET in secret_values(config)
    assert CLIENT_SECRET not in repr(config) and CLIENT_SECRET not in str(config)
