"""IMAP STARTTLS (`tls: starttls`): the upgrade against the real Dovecot, and every way it can go
wrong, scripted. It never falls back to plain text: no LOGIN is sent unless TLS is up."""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path

import pytest
import trustme

from agent.imap.connection import Connection
from agent.imap.target import ImapTarget
from agent.model import ErrorKind, TlsMode
from tests.imap_helpers import (
    WAIT,
    Recorder,
    check_once_error,
    deliver,
    dovecot_target,
    scripted_target,
    subject_of,
    unique,
)
from tests.mailsystem import MailSystem
from tests.scripted_imap import (
    GREETING,
    Expect,
    Hang,
    Raw,
    Receive,
    ScriptedImapServer,
    Send,
    StartTls,
    Step,
)


def starttls_target(port: int, ca_file: Path) -> ImapTarget:
    return dataclasses.replace(scripted_target(port), tls=TlsMode.STARTTLS, ca_file=ca_file)


def before_tls(capabilities: str) -> tuple[Step, ...]:
    return (
        GREETING,
        Expect("CAPABILITY"),
        Send(f"* CAPABILITY {capabilities}\n{{tag}} OK CAPABILITY completed"),
    )


def sent_commands(server: ScriptedImapServer) -> list[str]:
    return [line.decode().split()[1].upper() for line in server.received if b" " in line]


# --- scripted faults ------------------------------------------------------------------------------


async def test_a_server_without_starttls_is_a_tls_error_and_nothing_more_is_sent(
    ca_file: Path,
) -> None:
    async with ScriptedImapServer(*before_tls("IMAP4rev1 IDLE"), Hang()) as server:
        error = await check_once_error(starttls_target(server.port, ca_file))
    assert error.kind is ErrorKind.TLS
    assert "does not offer STARTTLS" in error.message
    assert sent_commands(server) == ["CAPABILITY"]


@pytest.mark.parametrize("answer", ["NO not now", "BAD what?"])
async def test_starttls_refused_is_a_tls_error_and_no_login_follows(
    ca_file: Path, answer: str
) -> None:
    script = (*before_tls("IMAP4rev1 STARTTLS"), Expect("STARTTLS"), Send(f"{{tag}} {answer}"))
    async with ScriptedImapServer(*script, Hang()) as server:
        error = await check_once_error(starttls_target(server.port, ca_file))
    assert error.kind is ErrorKind.TLS
    assert error.message == f"STARTTLS refused: {answer}"
    assert sent_commands(server) == ["CAPABILITY", "STARTTLS"]


async def test_garbage_instead_of_a_tls_handshake_is_a_tls_error_before_the_timeout(
    ca_file: Path,
) -> None:
    script = (
        *before_tls("IMAP4rev1 STARTTLS"),
        Expect("STARTTLS"),
        Send("{tag} OK Begin TLS negotiation now"),
        Receive(),  # the ClientHello
        Raw(b"this is no TLS server\r\n" * 8),
        Hang(),
    )
    async with ScriptedImapServer(*script) as server:
        target = dataclasses.replace(starttls_target(server.port, ca_file), connect_timeout=WAIT)
        error = await check_once_error(target)
    assert error.kind is ErrorKind.TLS
    assert "TLS error" in error.message  # the handshake's own failure, not the timeout's message


async def test_no_tls_handshake_after_starttls_is_a_tls_error_at_the_connect_timeout(
    ca_file: Path,
) -> None:
    script = (*before_tls("IMAP4rev1 STARTTLS"), Expect("STARTTLS"), Send("{tag} OK Begin TLS"))
    async with ScriptedImapServer(*script, Hang()) as server:
        target = dataclasses.replace(starttls_target(server.port, ca_file), connect_timeout=0.5)
        error = await check_once_error(target)
    assert error.kind is ErrorKind.TLS
    assert error.message.startswith("STARTTLS: not done within 0.5 s")


async def test_plain_text_injected_after_the_starttls_ok_is_a_tls_error(ca_file: Path) -> None:
    # A man in the middle appends a line to the OK, hoping it is read as if it came over TLS.
    injected = "{tag} OK Begin TLS\n* CAPABILITY IMAP4rev1 AUTH=PLAIN"
    script = (*before_tls("IMAP4rev1 STARTTLS"), Expect("STARTTLS"), Send(injected), Hang())
    async with ScriptedImapServer(*script) as server:
        error = await check_once_error(starttls_target(server.port, ca_file))
    assert error.kind is ErrorKind.TLS
    assert "plain text after STARTTLS's OK" in error.message
    assert "LOGIN" not in sent_commands(server)


def upgraded(server_tls: ssl.SSLContext, before: str, after: str) -> tuple[Step, ...]:
    return (
        *before_tls(before),
        Expect("STARTTLS"),
        Send("{tag} OK Begin TLS negotiation now"),
        StartTls(server_tls),
        Expect("CAPABILITY"),
        Send(f"* CAPABILITY {after}\n{{tag}} OK CAPABILITY completed"),
    )


async def test_capabilities_are_asked_again_after_the_upgrade_so_login_follows(
    server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    # LOGINDISABLED before TLS, gone after it (RFC 9051 6.2.3): the plain-text list is forgotten.
    script = (
        *upgraded(server_tls, "IMAP4rev1 STARTTLS LOGINDISABLED", "IMAP4rev1 IDLE"),
        Expect("LOGIN"),
        Send("* CAPABILITY IMAP4rev1 IDLE UIDPLUS\n{tag} OK Logged in"),
        Hang(),
    )
    async with ScriptedImapServer(*script) as server:
        connection = await Connection.open(starttls_target(server.port, ca_file))
        try:
            assert not connection.has_capability("LOGINDISABLED")
            await connection.login()
            assert connection.has_capability("UIDPLUS")
        finally:
            await connection.close(logout=False)
    assert sent_commands(server) == ["CAPABILITY", "STARTTLS", "CAPABILITY", "LOGIN"]


async def test_logindisabled_after_the_upgrade_is_an_auth_error_without_sending_the_password(
    server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    script = (*upgraded(server_tls, "IMAP4rev1 STARTTLS", "IMAP4rev1 LOGINDISABLED"), Hang())
    async with ScriptedImapServer(*script) as server:
        error = await check_once_error(starttls_target(server.port, ca_file))
    assert error.kind is ErrorKind.AUTH
    assert "LOGINDISABLED" in error.message
    assert "LOGIN" not in sent_commands(server)


async def test_silence_after_the_upgrade_times_out_the_second_capability(
    server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    script = (
        *before_tls("IMAP4rev1 STARTTLS"),
        Expect("STARTTLS"),
        Send("{tag} OK Begin TLS negotiation now"),
        StartTls(server_tls),
        Expect("CAPABILITY"),
        Hang(),
    )
    async with ScriptedImapServer(*script) as server:
        target = dataclasses.replace(starttls_target(server.port, ca_file), connect_timeout=0.5)
        error = await check_once_error(target)
    assert error.kind is ErrorKind.TIMEOUT
    assert error.message.startswith("CAPABILITY after STARTTLS: no answer within 0.5 s")


async def test_an_untrusted_certificate_after_starttls_is_a_tls_error(
    server_tls: ssl.SSLContext, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    script = (*upgraded(server_tls, "IMAP4rev1 STARTTLS", "IMAP4rev1"), Hang())
    async with ScriptedImapServer(*script) as server:
        error = await check_once_error(starttls_target(server.port, other))
    assert error.kind is ErrorKind.TLS
    assert "certificate verification failed" in error.message
    assert sent_commands(server) == ["CAPABILITY", "STARTTLS"]


# --- the real Dovecot -----------------------------------------------------------------------------


@pytest.mark.mailsystem
async def test_a_message_is_read_over_starttls_on_the_plain_port(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    subject = unique("starttls")
    await deliver(mail_system, account, subject)
    target = dovecot_target(mail_system, account, tls=TlsMode.STARTTLS)
    assert target.port == mail_system.ports.imap
    recorder = Recorder()
    await recorder.watcher(target).check_once()
    assert recorder.states.get_nowait() == (True, None)
    assert subject_of(recorder.messages.get_nowait()) == subject


@pytest.mark.mailsystem
async def test_starttls_to_dovecot_with_an_untrusted_ca_is_a_tls_error_unless_verification_is_off(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    untrusted = dovecot_target(mail_system, account, tls=TlsMode.STARTTLS, trust_ca=False)
    error = await check_once_error(untrusted)
    assert error.kind is ErrorKind.TLS
    assert "certificate verification failed" in error.message
    unverified = dataclasses.replace(untrusted, tls_verify=False)
    recorder = Recorder()
    await recorder.watcher(unverified).check_once()
    assert recorder.states.get_nowait() == (True, None)


@pytest.mark.mailsystem
async def test_starttls_against_the_implicit_tls_port_is_a_tls_error(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    target = dovecot_target(
        mail_system,
        account,
        tls=TlsMode.STARTTLS,
        port=mail_system.ports.imaps,
        connect_timeout=1.5,
    )
    error = await check_once_error(target)
    assert error.kind is ErrorKind.TLS
    assert "tls: implicit" in error.message
