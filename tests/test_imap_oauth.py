"""IMAP AUTHENTICATE XOAUTH2 / OAUTHBEARER against a scripted server: what the real Dovecot cannot
show (no SASL-IR, a server offering XOAUTH2 only, the exact bytes of the error-challenge
exchange)."""

from __future__ import annotations

import base64
import dataclasses
import logging

import pytest

from agent.imap.connection import Connection
from agent.imap.errors import ImapError
from agent.imap.target import ImapTarget
from agent.model import ErrorKind
from agent.oauth import OAuthSignIn, SaslMechanism, TokenSource
from agent.sasl import initial_response
from tests.imap_helpers import scripted_target
from tests.oauth_helpers import FailingTokenSource, HangingTokenSource, RecordingTokenSource
from tests.scripted_imap import GREETING, Expect, Hang, ReadLine, ScriptedImapServer, Send, Step

USER = "someone@example.test"
TOKEN = "ya29.a0-some-access-token"
ERROR_JSON = '{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}'


def oauth_target(port: int, tokens: TokenSource, mechanism: SaslMechanism | None) -> ImapTarget:
    return dataclasses.replace(
        scripted_target(port), password=None, oauth=OAuthSignIn(USER, tokens, mechanism)
    )


def capabilities(text: str) -> tuple[Step, ...]:
    return (
        GREETING,
        Expect("CAPABILITY"),
        Send(f"* CAPABILITY {text}\n{{tag}} OK CAPABILITY completed"),
    )


AFTER_LOGIN: tuple[Step, ...] = (
    Expect("CAPABILITY"),
    Send("* CAPABILITY IMAP4rev1 IDLE\n{tag} OK CAPABILITY completed"),
    Hang(),
)


def lines(server: ScriptedImapServer) -> list[str]:
    return [line.decode().rstrip("\r\n") for line in server.received]


async def test_without_sasl_ir_the_initial_response_follows_the_servers_empty_challenge() -> None:
    tokens = RecordingTokenSource(TOKEN)
    async with ScriptedImapServer(
        *capabilities("IMAP4rev1 AUTH=XOAUTH2"),
        Expect("AUTHENTICATE"),
        Send("+ "),
        ReadLine(),
        Send("{tag} OK Logged in"),
        *AFTER_LOGIN,
    ) as server:
        connection = await Connection.open(oauth_target(server.port, tokens, None))
        try:
            await connection.login()
        finally:
            await connection.close(logout=False)

    sent = lines(server)
    at = next(i for i, line in enumerate(sent) if "AUTHENTICATE" in line)
    assert sent[at].split(" ", 1)[1] == "AUTHENTICATE XOAUTH2"  # nothing after the mechanism
    ir = initial_response(SaslMechanism.XOAUTH2, USER, TOKEN).decode()
    assert sent[at + 1] == ir
    assert base64.b64decode(ir).decode() == f"user={USER}\x01auth=Bearer {TOKEN}\x01\x01"
    assert tokens.refused_tokens == []


async def test_with_sasl_ir_oauthbearer_is_preferred_and_sent_on_the_command_line() -> None:
    async with ScriptedImapServer(
        *capabilities("IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER"),
        Expect("AUTHENTICATE"),
        Send("{tag} OK Logged in"),
        *AFTER_LOGIN,
    ) as server:
        connection = await Connection.open(
            oauth_target(server.port, RecordingTokenSource(TOKEN), None)
        )
        try:
            await connection.login()
        finally:
            await connection.close(logout=False)

    command = next(line for line in lines(server) if "AUTHENTICATE" in line)
    _, verb, mechanism, ir = command.split(" ")
    assert (verb, mechanism) == ("AUTHENTICATE", "OAUTHBEARER")
    assert base64.b64decode(ir).decode() == f"n,a={USER},\x01auth=Bearer {TOKEN}\x01\x01"


@pytest.mark.parametrize(
    ("mechanism", "answer"), [(SaslMechanism.XOAUTH2, ""), (SaslMechanism.OAUTHBEARER, "AQ==")]
)
async def test_the_error_challenge_is_answered_so_the_no_comes_at_once_and_the_connection_lives(
    caplog: pytest.LogCaptureFixture, mechanism: SaslMechanism, answer: str
) -> None:
    # aioimaplib alone never answers the challenge: the command would wait for its timeout
    # (0.5 s here, so that a hang shows up as kind timeout instead of the auth asserted below).
    caplog.set_level(logging.DEBUG)
    tokens = RecordingTokenSource(TOKEN)
    challenge = base64.b64encode(ERROR_JSON.encode()).decode()
    async with ScriptedImapServer(
        *capabilities("IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER"),
        Expect("AUTHENTICATE"),
        Send(f"+ {challenge}"),
        ReadLine(),
        Send("{tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)"),
        Expect("NOOP"),
        Send("{tag} OK NOOP completed"),
        Hang(),
    ) as server:
        connection = await Connection.open(oauth_target(server.port, tokens, mechanism))
        try:
            with pytest.raises(ImapError) as raised:
                await connection.login()
            await connection.noop()
        finally:
            await connection.close(logout=False)

    assert raised.value.kind is ErrorKind.AUTH
    assert raised.value.message == (
        f"AUTHENTICATE {mechanism.value.upper()} as {USER} refused: "
        f"NO [AUTHENTICATIONFAILED] Invalid credentials (Failure) (server error: {ERROR_JSON})"
    )
    sent = lines(server)
    at = next(i for i, line in enumerate(sent) if "AUTHENTICATE" in line)
    assert sent[at + 1] == answer  # byte for byte: the answer to the error challenge
    assert tokens.refused_tokens == [tokens.token]
    ir = initial_response(mechanism, USER, TOKEN).decode()
    for record in caplog.records:
        assert TOKEN not in record.getMessage() and ir not in record.getMessage()


async def test_a_configured_mechanism_not_advertised_is_an_auth_error_and_nothing_is_sent() -> None:
    tokens = RecordingTokenSource(TOKEN)
    async with ScriptedImapServer(
        *capabilities("IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=XOAUTH2"), Hang()
    ) as server:
        connection = await Connection.open(
            oauth_target(server.port, tokens, SaslMechanism.OAUTHBEARER)
        )
        try:
            with pytest.raises(ImapError) as raised:
                await connection.login()
        finally:
            await connection.close(logout=False)

    assert raised.value.kind is ErrorKind.AUTH
    assert "OAUTHBEARER (configured) is not offered" in raised.value.message
    assert "offered: PLAIN XOAUTH2" in raised.value.message
    assert tokens.asked == 0
    assert not any("AUTHENTICATE" in line for line in lines(server))


async def test_a_token_error_is_kind_token_and_sends_nothing() -> None:
    async with ScriptedImapServer(*capabilities("IMAP4rev1 AUTH=XOAUTH2"), Hang()) as server:
        connection = await Connection.open(oauth_target(server.port, FailingTokenSource(), None))
        try:
            with pytest.raises(ImapError) as raised:
                await connection.login()
        finally:
            await connection.close(logout=False)

    assert raised.value.kind is ErrorKind.TOKEN
    assert "credential 'revoked-credential'" in raised.value.message
    assert not any("AUTHENTICATE" in line for line in lines(server))


async def test_a_token_source_that_hangs_is_kind_token_after_the_command_timeout() -> None:
    async with ScriptedImapServer(*capabilities("IMAP4rev1 AUTH=XOAUTH2"), Hang()) as server:
        connection = await Connection.open(oauth_target(server.port, HangingTokenSource(), None))
        try:
            with pytest.raises(ImapError) as raised:
                await connection.login()
        finally:
            await connection.close(logout=False)

    assert raised.value.kind is ErrorKind.TOKEN
    assert "no OAuth access token within 0.5 s (credential 'hanging-credential')" in (
        raised.value.message
    )
    assert not any("AUTHENTICATE" in line for line in lines(server))


def test_an_imap_target_needs_exactly_one_of_password_and_oauth() -> None:
    with_password = scripted_target(143)
    with pytest.raises(ValueError, match="one of them"):
        dataclasses.replace(with_password, oauth=OAuthSignIn(USER, RecordingTokenSource(TOKEN)))
    with pytest.raises(ValueError, match="one of them"):
        dataclasses.replace(with_password, password=None)
