"""The IMAP connection: every failure, scripted or from the real Dovecot, becomes an `ImapError`
of the right kind, and no secret leaks into errors or logs."""

from __future__ import annotations

import dataclasses
import logging
import socket

import pytest

from agent.model import ErrorKind, TlsMode
from agent.secrets import MASK
from tests.imap_helpers import (
    Recorder,
    check_once_error,
    deliver,
    dovecot_target,
    running,
    scripted_target,
    subject_of,
    unique,
)
from tests.mailsystem import MailSystem
from tests.scripted_imap import (
    CAPABILITY_EXCHANGE,
    GREETING,
    Close,
    Expect,
    Hang,
    Raw,
    ScriptedImapServer,
    Send,
)

# --- scripted faults ------------------------------------------------------------------------------


async def test_a_greeting_then_silence_times_out_at_connect() -> None:
    async with ScriptedImapServer(GREETING, Hang()) as server:
        error = await check_once_error(scripted_target(server.port, connect_timeout=0.5))
    assert error.kind is ErrorKind.TIMEOUT
    assert "greeting" in error.message


async def test_silence_after_login_times_out_the_command() -> None:
    async with ScriptedImapServer(
        GREETING, *CAPABILITY_EXCHANGE, Expect("LOGIN"), Hang()
    ) as server:
        error = await check_once_error(scripted_target(server.port))
    assert error.kind is ErrorKind.TIMEOUT
    assert error.message.startswith("LOGIN")


async def test_a_garbage_greeting_is_a_protocol_error() -> None:
    async with ScriptedImapServer(Raw(b"\x00\x01 this is no IMAP server\r\n"), Hang()) as server:
        error = await check_once_error(scripted_target(server.port))
    assert error.kind is ErrorKind.PROTOCOL
    assert "greeting" in error.message


async def test_a_connection_closed_mid_command_is_reported_closed() -> None:
    async with ScriptedImapServer(
        GREETING, *CAPABILITY_EXCHANGE, Expect("LOGIN"), Close()
    ) as server:
        error = await check_once_error(scripted_target(server.port))
    assert error.kind is ErrorKind.CLOSED


async def test_a_connection_closed_before_the_greeting_is_reported_closed() -> None:
    async with ScriptedImapServer(Close()) as server:
        error = await check_once_error(scripted_target(server.port))
    assert error.kind is ErrorKind.CLOSED


async def test_bad_to_login_is_a_protocol_error_and_no_is_an_auth_error() -> None:
    bad = (GREETING, *CAPABILITY_EXCHANGE, Expect("LOGIN"), Send("{tag} BAD what?"), Hang())
    no = (GREETING, *CAPABILITY_EXCHANGE, Expect("LOGIN"), Send("{tag} NO go away"), Hang())
    async with ScriptedImapServer(*bad) as server:
        assert (await check_once_error(scripted_target(server.port))).kind is ErrorKind.PROTOCOL
    async with ScriptedImapServer(*no) as server:
        error = await check_once_error(scripted_target(server.port))
    assert error.kind is ErrorKind.AUTH
    assert "go away" in error.message


async def test_server_text_that_is_not_utf8_reaches_errors_and_logs_as_valid_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # "\udcff" is sent as the byte 0xff; "\udce9" as a Latin-1 e-acute.
    script = (
        Send("* OK caf\udce9 ready \udcff"),
        *CAPABILITY_EXCHANGE,
        Expect("LOGIN"),
        Send("{tag} NO caf\udce9 refused \udcff"),
        Hang(),
    )
    async with ScriptedImapServer(*script) as server:
        error = await check_once_error(scripted_target(server.port))
    assert error.kind is ErrorKind.AUTH
    assert error.message == "LOGIN refused: caf\\xe9 refused \\xff"
    for record in caplog.records:
        record.getMessage().encode("utf-8")  # raises on a lone surrogate


async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        error = await check_once_error(scripted_target(sock.getsockname()[1]))
    assert error.kind is ErrorKind.CONNECT


async def test_an_unexpected_tagged_reply_is_a_protocol_error_that_leaks_no_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    script = (GREETING, *CAPABILITY_EXCHANGE, Expect("LOGIN"), Send("ZZZZ9 OK who asked?"), Hang())
    async with ScriptedImapServer(*script) as server:
        error = await check_once_error(scripted_target(server.port))
        assert any(b"S3cret" in line for line in server.received)  # it was sent...
    assert error.kind is ErrorKind.PROTOCOL
    for fragment in ("S3cret", "Pass", "Word"):  # ...and appears nowhere, quoted or not
        assert fragment not in str(error)
        assert fragment not in caplog.text


async def test_a_password_or_secret_the_server_echoes_is_masked_in_the_error_and_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # The password plain and as LOGIN quoted it (S3cret\"Pass\\Word), then the further secret.
    echo = 'S3cret"Pass\\Word S3cret\\"Pass\\\\Word tok-3xtra-Secret'
    script = (GREETING, *CAPABILITY_EXCHANGE, Expect("LOGIN"), Send("{tag} NO you sent " + echo))
    async with ScriptedImapServer(*script, Hang()) as server:
        target = dataclasses.replace(scripted_target(server.port), secrets=("tok-3xtra-Secret",))
        error = await check_once_error(target)
    assert error.kind is ErrorKind.AUTH
    assert error.message == f"LOGIN refused: you sent {MASK} {MASK} {MASK}"
    # aioimaplib's own DEBUG lines quote what the server sent; the agent keeps that logger quiet.
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("agent."))
    assert f"auth: LOGIN refused: you sent {MASK} {MASK} {MASK}" in ours
    for fragment in ("S3cret", "Pass", "Word", "3xtra"):
        assert fragment not in str(error)
        assert fragment not in ours


# --- the real Dovecot -----------------------------------------------------------------------------


@pytest.mark.mailsystem
async def test_wrong_password_is_reported_as_auth_and_never_logged(
    mail_system: MailSystem, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    account = mail_system.new_mailbox()
    target = dovecot_target(mail_system, account, password='Wr0ng"Secret\\Value')
    recorder = Recorder()
    async with running(recorder.watcher(target)):
        assert await recorder.next_state() == (False, ErrorKind.AUTH)
        assert await recorder.next_state() == (False, ErrorKind.AUTH)  # and it retries
    error = await check_once_error(target)
    assert error.kind is ErrorKind.AUTH
    for fragment in ("Wr0ng", "Secret", "Value"):
        assert fragment not in str(error)
        assert fragment not in caplog.text


@pytest.mark.mailsystem
async def test_implicit_tls_against_the_plain_port_is_a_tls_error(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    target = dovecot_target(mail_system, account, tls=TlsMode.IMPLICIT, port=mail_system.ports.imap)
    assert (await check_once_error(target)).kind is ErrorKind.TLS


@pytest.mark.mailsystem
async def test_plain_against_the_implicit_tls_port_is_a_tls_error(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    target = dovecot_target(
        mail_system, account, tls=TlsMode.NONE, port=mail_system.ports.imaps, connect_timeout=1.5
    )
    error = await check_once_error(target)
    assert error.kind is ErrorKind.TLS
    assert "tls: implicit" in error.message


@pytest.mark.mailsystem
async def test_an_untrusted_certificate_is_a_tls_error_unless_verification_is_off(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    untrusted = dovecot_target(mail_system, account, trust_ca=False)
    assert (await check_once_error(untrusted)).kind is ErrorKind.TLS
    recorder = Recorder()
    await recorder.watcher(
        dovecot_target(mail_system, account, trust_ca=False, tls_verify=False)
    ).check_once()
    assert recorder.states.get_nowait() == (True, None)


@pytest.mark.mailsystem
async def test_plain_imap_works_when_configured(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    subject = unique("plain")
    await deliver(mail_system, account, subject)
    recorder = Recorder()
    await recorder.watcher(dovecot_target(mail_system, account, tls=TlsMode.NONE)).check_once()
    assert subject_of(recorder.messages.get_nowait()) == subject
