"""SMTP AUTH XOAUTH2 / OAUTHBEARER against the real submission server (Postfix with Dovecot SASL,
whose oauth2 passdb validates the mail system's minted tokens)."""

from __future__ import annotations

import logging

import pytest

from agent.model import ErrorKind, SendResult, Stage, TlsMode
from agent.oauth import OAuthSignIn, SaslMechanism, TokenSource
from agent.smtp.sender import SmtpTarget, send_probe
from tests.agent_setup import GOOD_SENDER
from tests.mailsystem import MailSystem
from tests.oauth_helpers import FailingTokenSource, RecordingTokenSource

pytestmark = pytest.mark.mailsystem

# Dovecot's error challenges (mech-oauth2.c), as Postfix relays them in its 334.
XOAUTH2_ERROR = '{"status":"401","schemes":"bearer","scope":"mail"}'
OAUTHBEARER_ERROR = '{"status":"invalid_token"}'
PORTS = {"submission 587 starttls": TlsMode.STARTTLS, "submissions 465 implicit": TlsMode.IMPLICIT}


def _target(
    system: MailSystem,
    tls: TlsMode,
    tokens: TokenSource,
    mechanism: SaslMechanism | None,
) -> SmtpTarget:
    port = system.ports.submission if tls is TlsMode.STARTTLS else system.ports.submissions
    return SmtpTarget(
        route="oauth",
        host="127.0.0.1",
        port=port,
        tls=tls,
        tls_verify=True,
        ca_file=system.ca_file,
        oauth=OAuthSignIn(GOOD_SENDER.address, tokens, mechanism),
        ehlo_name="agent.client.test",
        connect_timeout=5.0,
        stage_timeout=10.0,
        total_timeout=30.0,
    )


async def _send(system: MailSystem, target: SmtpTarget) -> SendResult:
    seed = system.new_mailbox()
    message = f"From: {GOOD_SENDER.address}\r\nTo: {seed.address}\r\nSubject: oauth\r\n\r\nx\r\n"
    return await send_probe(
        target,
        envelope_from=GOOD_SENDER.address,
        recipients=[seed.address],
        message=message.encode(),
    )


def _auth_codes(result: SendResult) -> list[int]:
    return [reply.code for reply in result.transcript if reply.stage is Stage.AUTH]


def _texts(result: SendResult) -> str:
    error = result.error.message if result.error is not None else ""
    return error + "\n".join(reply.text for reply in result.transcript)


@pytest.mark.parametrize("tls", PORTS.values(), ids=PORTS.keys())
@pytest.mark.parametrize("mechanism", [SaslMechanism.XOAUTH2, SaslMechanism.OAUTHBEARER])
@pytest.mark.parametrize("pad_to", [None, 2600], ids=["short token", "token past 2 KB"])
async def test_a_valid_token_signs_in_and_the_probe_is_accepted(
    mail_system: MailSystem, tls: TlsMode, mechanism: SaslMechanism, pad_to: int | None
) -> None:
    # Past 2 KB the AUTH line would pass Postfix's 2048-byte limit: the initial response must go
    # after the 334, or Postfix cuts the line and answers 535 "Invalid base64 data".
    token = mail_system.mint_token(GOOD_SENDER.address, pad_to=pad_to)
    assert pad_to is None or len(token) >= pad_to
    tokens = RecordingTokenSource(token)

    result = await _send(mail_system, _target(mail_system, tls, tokens, mechanism))

    assert result.error is None
    assert result.accepted
    assert _auth_codes(result) == [235]
    assert tokens.refused_tokens == []


@pytest.mark.parametrize("tls", PORTS.values(), ids=PORTS.keys())
async def test_without_a_configured_mechanism_the_offered_one_signs_in(
    mail_system: MailSystem, tls: TlsMode
) -> None:
    tokens = RecordingTokenSource(mail_system.mint_token(GOOD_SENDER.address))

    result = await _send(mail_system, _target(mail_system, tls, tokens, None))

    assert result.error is None and result.accepted
    assert _auth_codes(result) == [235]


@pytest.mark.parametrize(
    ("mechanism", "server_error"),
    [(SaslMechanism.XOAUTH2, XOAUTH2_ERROR), (SaslMechanism.OAUTHBEARER, OAUTHBEARER_ERROR)],
)
@pytest.mark.parametrize(
    "kind", ["expired", "forged", "forged past 2 KB"], ids=lambda kind: kind.replace(" ", "-")
)
async def test_a_refused_token_is_an_auth_error_with_the_servers_error_json(
    mail_system: MailSystem,
    caplog: pytest.LogCaptureFixture,
    mechanism: SaslMechanism,
    server_error: str,
    kind: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    token = mail_system.mint_token(
        GOOD_SENDER.address,
        lifetime=-1 if kind == "expired" else 3600,
        forged=kind.startswith("forged"),
        pad_to=2600 if kind.endswith("2 KB") else None,
    )
    tokens = RecordingTokenSource(token)

    result = await _send(mail_system, _target(mail_system, TlsMode.STARTTLS, tokens, mechanism))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.AUTH, ErrorKind.AUTH)
    assert server_error in result.error.message
    assert "535" in result.error.message
    assert tokens.refused_tokens == [tokens.token]
    assert not result.accepted
    # The error challenge was answered, so the final 535 came and the session ended with QUIT.
    assert _auth_codes(result) == [535]
    assert [reply.code for reply in result.transcript if reply.stage is Stage.QUIT] == [221]
    assert token not in _texts(result)
    assert all(token not in record.getMessage() for record in caplog.records)


async def test_no_token_from_the_token_source_ends_at_auth_with_kind_token(
    mail_system: MailSystem,
) -> None:
    tokens = FailingTokenSource()

    result = await _send(
        mail_system, _target(mail_system, TlsMode.STARTTLS, tokens, SaslMechanism.XOAUTH2)
    )

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.AUTH, ErrorKind.TOKEN)
    assert "invalid_grant" in result.error.message
    assert "revoked-credential" in result.error.message
    assert _auth_codes(result) == []  # nothing was sent to the server
    assert tokens.refusals == 0


async def test_a_password_login_still_works_beside_oauth(mail_system: MailSystem) -> None:
    target = SmtpTarget(
        route="password",
        host="127.0.0.1",
        port=mail_system.ports.submission,
        tls=TlsMode.STARTTLS,
        tls_verify=True,
        ca_file=mail_system.ca_file,
        username=GOOD_SENDER.address,
        password=GOOD_SENDER.password,
        ehlo_name="agent.client.test",
        connect_timeout=5.0,
        stage_timeout=10.0,
        total_timeout=30.0,
    )

    result = await _send(mail_system, target)

    assert result.error is None and result.accepted
