"""IMAP AUTHENTICATE XOAUTH2 / OAUTHBEARER against the real Dovecot (its oauth2 passdb validates
the mail system's minted tokens), on the implicit-TLS port and on the plain port with STARTTLS."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from agent.imap.connection import Connection
from agent.imap.errors import ImapError
from agent.imap.target import ImapTarget
from agent.model import ErrorKind, TlsMode
from agent.oauth import OAuthSignIn, SaslMechanism, TokenSource
from tests.imap_helpers import (
    Recorder,
    check_once_error,
    deliver,
    dovecot_target,
    subject_of,
    unique,
)
from tests.mailsystem import MailSystem
from tests.mailsystem.topology import Account
from tests.oauth_helpers import FailingTokenSource, RecordingTokenSource

pytestmark = pytest.mark.mailsystem

# Dovecot's error challenges (mech-oauth2.c).
XOAUTH2_ERROR = '{"status":"401","schemes":"bearer","scope":"mail"}'
OAUTHBEARER_ERROR = '{"status":"invalid_token"}'
PORTS = {"imaps 993 implicit": TlsMode.IMPLICIT, "imap 143 starttls": TlsMode.STARTTLS}


def oauth_target(
    system: MailSystem,
    account: Account,
    tokens: TokenSource,
    mechanism: SaslMechanism | None,
    *,
    tls: TlsMode = TlsMode.IMPLICIT,
) -> ImapTarget:
    return dataclasses.replace(
        dovecot_target(system, account, tls=tls),
        password=None,
        oauth=OAuthSignIn(account.address, tokens, mechanism),
    )


@pytest.mark.parametrize("tls", PORTS.values(), ids=PORTS.keys())
@pytest.mark.parametrize("mechanism", [SaslMechanism.XOAUTH2, SaslMechanism.OAUTHBEARER, None])
@pytest.mark.parametrize("pad_to", [None, 2600], ids=["short token", "token past 2 KB"])
async def test_a_valid_token_signs_in_and_the_mailbox_is_read(
    mail_system: MailSystem, tls: TlsMode, mechanism: SaslMechanism | None, pad_to: int | None
) -> None:
    account = mail_system.new_mailbox()
    subject = unique("oauth")
    await deliver(mail_system, account, subject)
    tokens = RecordingTokenSource(mail_system.mint_token(account.address, pad_to=pad_to))
    recorder = Recorder()

    await recorder.watcher(
        oauth_target(mail_system, account, tokens, mechanism, tls=tls)
    ).check_once()

    assert recorder.states.get_nowait() == (True, None)
    assert subject_of(recorder.messages.get_nowait()) == subject
    assert tokens.asked == 1
    assert tokens.refused_tokens == []


@pytest.mark.parametrize(
    ("mechanism", "server_error"),
    [(SaslMechanism.XOAUTH2, XOAUTH2_ERROR), (SaslMechanism.OAUTHBEARER, OAUTHBEARER_ERROR)],
)
@pytest.mark.parametrize("kind", ["expired", "forged"])
async def test_a_refused_token_is_an_auth_error_at_once_and_the_connection_stays_usable(
    mail_system: MailSystem,
    caplog: pytest.LogCaptureFixture,
    mechanism: SaslMechanism,
    server_error: str,
    kind: str,
) -> None:
    caplog.set_level(logging.DEBUG)  # aioimaplib's DEBUG lines too: none may show the token
    account = mail_system.new_mailbox()
    token = mail_system.mint_token(
        account.address, lifetime=-1 if kind == "expired" else 3600, forged=kind == "forged"
    )
    tokens = RecordingTokenSource(token)
    # A long command timeout: aioimaplib alone would wait all of it for an answer to the error
    # challenge. The assertions are on what ended the command, not on the clock.
    target = dataclasses.replace(
        oauth_target(mail_system, account, tokens, mechanism), command_timeout=30.0
    )
    connection = await Connection.open(target)
    try:
        with pytest.raises(ImapError) as raised:
            await connection.login()

        assert raised.value.kind is ErrorKind.AUTH
        assert server_error in raised.value.message
        assert "NO" in raised.value.message
        assert tokens.refused_tokens == [tokens.token]
        # The server's tagged NO ended the command: the connection still answers.
        assert not connection.failed
        await connection.noop()
    finally:
        await connection.close(logout=True)
    assert token not in raised.value.message
    assert all(token not in record.getMessage() for record in caplog.records)


async def test_no_token_from_the_token_source_is_kind_token_and_nothing_is_sent(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    tokens = FailingTokenSource()
    connection = await Connection.open(
        oauth_target(mail_system, account, tokens, SaslMechanism.OAUTHBEARER)
    )
    try:
        with pytest.raises(ImapError) as raised:
            await connection.login()
        await connection.noop()  # still unauthenticated, still usable
    finally:
        await connection.close(logout=True)

    assert raised.value.kind is ErrorKind.TOKEN
    assert "invalid_grant" in raised.value.message
    assert tokens.refusals == 0


async def test_a_token_for_another_user_is_refused(mail_system: MailSystem) -> None:
    account, other = mail_system.new_mailbox(), mail_system.new_mailbox()
    tokens = RecordingTokenSource(mail_system.mint_token(other.address))

    error = await check_once_error(
        oauth_target(mail_system, account, tokens, SaslMechanism.XOAUTH2)
    )

    assert error.kind is ErrorKind.AUTH
    assert XOAUTH2_ERROR in error.message
    assert tokens.refused_tokens == [tokens.token]
