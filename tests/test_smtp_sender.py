"""The SMTP sender against scripted servers on loopback: transcripts, verdicts, TLS and faults."""

from __future__ import annotations

import base64
import dataclasses
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509

from agent.model import ErrorKind, Outcome, ProbeError, SendResult, SmtpReply, Stage, TlsMode
from agent.secrets import MASK
from agent.smtp import sender as smtp_sender
from agent.smtp.replies import deciding_reply, parse_enhanced_code, verdict_of
from agent.smtp.sender import SmtpTarget, send_probe
from agent.tls_contexts import cached_client_context
from tests.scripted_smtp import (
    Drip,
    Drop,
    Hang,
    Raw,
    Reply,
    Script,
    ScriptedSmtpServer,
    UntilClosed,
)

USER = "probe@sender.test"
PASSWORD = "s3cret-Pa55word"
SENDER = "bounces@sender.test"
SEED = "seed@inbox.test"
# Bare LF line endings and a line starting with a dot: what the server gets must be CRLF and intact.
MESSAGE = b"Subject: probe\nX-Probe: 1\n\n.leading dot\nbody\n"
RECEIVED = b"Subject: probe\r\nX-Probe: 1\r\n\r\n.leading dot\r\nbody\r\n"
SUCCESS_STAGES = [Stage.MAIL, Stage.RCPT, Stage.DATA, Stage.END_OF_DATA, Stage.QUIT]


@pytest.fixture
def untrusted_ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def cert_not_after(server_cert: trustme.LeafCert) -> float:
    cert = x509.load_pem_x509_certificate(server_cert.cert_chain_pems[0].bytes())
    return cert.not_valid_after_utc.timestamp()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound but not listening, held for the test so nothing else takes it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def target(port: int, **changes: Any) -> SmtpTarget:
    values: dict[str, Any] = {
        "route": "test",
        "host": "127.0.0.1",
        "port": port,
        "tls": TlsMode.NONE,
        "tls_verify": True,
        "ehlo_name": "probe.sender.test",
        "connect_timeout": 5.0,
        # Generous, so that a hang shows up as kind timeout rather than as a fast, wrong verdict.
        "stage_timeout": 30.0,
        "total_timeout": 30.0,
    }
    values.update(changes)
    return SmtpTarget(**values)


async def send(smtp: SmtpTarget, recipients: tuple[str, ...] = (SEED,)) -> SendResult:
    return await send_probe(smtp, envelope_from=SENDER, recipients=recipients, message=MESSAGE)


def stages(result: SendResult) -> list[Stage]:
    return [reply.stage for reply in result.transcript]


def codes(result: SendResult) -> list[int]:
    return [reply.code for reply in result.transcript]


def assert_no_secret(*objects: object) -> None:
    plain_blob = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    for obj in objects:
        for text in (str(obj), repr(obj)):
            assert PASSWORD not in text
            assert base64.b64encode(PASSWORD.encode()).decode() not in text
            assert plain_blob not in text


# -- success -------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_smtp_sender_starttls_and_auth_success_keeps_every_reply(
    mechanism: str, server_tls: ssl.SSLContext, ca_file: Path, cert_not_after: float
) -> None:
    script = Script(
        tls_context=server_tls, credentials=(USER, PASSWORD), auth_mechanisms=(mechanism,)
    )
    async with ScriptedSmtpServer(script) as server:
        before = time.time()
        result = await send(
            target(
                server.port, tls=TlsMode.STARTTLS, ca_file=ca_file, username=USER, password=PASSWORD
            )
        )
        after = time.time()

    assert result.error is None
    assert verdict_of(result) is None
    assert result.accepted
    assert result.accepted_at is not None and before <= result.accepted_at <= after
    assert stages(result) == [
        Stage.BANNER,
        Stage.EHLO,
        Stage.STARTTLS,
        Stage.EHLO,
        Stage.AUTH,
        *SUCCESS_STAGES,
    ]
    assert codes(result) == [220, 250, 220, 250, 235, 250, 250, 354, 250, 221]
    assert result.transcript[0].text == "scripted.test ESMTP"
    assert result.transcript[-2].enhanced_code == "2.0.0"
    assert result.tls_version is not None and result.tls_version.startswith("TLSv1")
    assert result.tls_cert_not_after == pytest.approx(cert_not_after)
    session = server.sessions[0]
    assert session.tls and session.authenticated
    assert session.messages == [RECEIVED]
    assert session.commands[-1] == "QUIT"
    assert_no_secret(result, session.messages)


async def test_smtp_sender_implicit_tls_verified_against_the_ca(
    server_tls: ssl.SSLContext, ca_file: Path, cert_not_after: float
) -> None:
    async with ScriptedSmtpServer(Script(tls_context=server_tls, implicit_tls=True)) as server:
        result = await send(target(server.port, tls=TlsMode.IMPLICIT, ca_file=ca_file))

    assert result.error is None and result.accepted
    assert stages(result) == [Stage.BANNER, Stage.EHLO, *SUCCESS_STAGES]
    assert result.tls_version is not None
    assert result.tls_cert_not_after == pytest.approx(cert_not_after)
    assert "STARTTLS" not in server.sessions[0].commands


async def test_smtp_sender_without_verification_still_reads_the_certificate_expiry(
    server_tls: ssl.SSLContext, cert_not_after: float
) -> None:
    async with ScriptedSmtpServer(Script(tls_context=server_tls, implicit_tls=True)) as server:
        result = await send(target(server.port, tls=TlsMode.IMPLICIT, tls_verify=False))

    assert result.accepted
    assert result.tls_cert_not_after == pytest.approx(cert_not_after)


async def test_smtp_sender_opportunistic_uses_starttls_when_offered(
    server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    async with ScriptedSmtpServer(Script(tls_context=server_tls)) as server:
        result = await send(target(server.port, tls=TlsMode.OPPORTUNISTIC, ca_file=ca_file))

    assert result.accepted and result.tls_version is not None
    assert Stage.STARTTLS in stages(result)
    assert server.sessions[0].tls


async def test_smtp_sender_opportunistic_goes_plain_when_starttls_is_not_offered() -> None:
    async with ScriptedSmtpServer(Script()) as server:
        result = await send(target(server.port, tls=TlsMode.OPPORTUNISTIC))

    assert result.accepted
    assert result.tls_version is None
    assert stages(result) == [Stage.BANNER, Stage.EHLO, *SUCCESS_STAGES]


async def test_smtp_sender_tls_none_ignores_an_offered_starttls(
    server_tls: ssl.SSLContext,
) -> None:
    async with ScriptedSmtpServer(Script(tls_context=server_tls)) as server:
        result = await send(target(server.port, tls=TlsMode.NONE))

    assert result.accepted and result.tls_version is None
    assert "STARTTLS" not in server.sessions[0].commands


async def test_smtp_sender_slow_greeting_is_waited_for_not_taken_for_tls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(smtp_sender, "_TLS_SNIFF_AFTER", 0.05)
    # Connection 0 greets only after the sniff connection (1) has come and gone.
    slow = Script(replies={Stage.BANNER: (UntilClosed(1), Reply("220 slow.test ESMTP"))})
    async with ScriptedSmtpServer([slow, Script()]) as server:
        result = await send(target(server.port))

    assert result.error is None and result.accepted
    assert len(server.sessions) == 2  # the sniff really ran, on its own connection
    assert server.sessions[1].messages == []


# -- verdicts ------------------------------------------------------------------------------


async def test_smtp_sender_550_at_rcpt_is_rejected_with_its_enhanced_code() -> None:
    script = Script(rcpt={SEED: Reply("550 5.1.1 <seed@inbox.test>: Recipient address rejected")})
    async with ScriptedSmtpServer(script) as server:
        result = await send(target(server.port))

    assert result.error is None and not result.accepted and result.accepted_at is None
    assert verdict_of(result) is Outcome.REJECTED
    decided = deciding_reply(result)
    assert decided == SmtpReply(
        Stage.RCPT, 550, "5.1.1", "5.1.1 <seed@inbox.test>: Recipient address rejected"
    )
    assert result.transcript[-1].stage is Stage.QUIT  # said goodbye politely
    assert "DATA" not in server.sessions[0].commands


async def test_smtp_sender_451_at_rcpt_is_deferred() -> None:
    script = Script(rcpt={SEED: Reply("451 4.7.1 Greylisted, try again later")})
    async with ScriptedSmtpServer(script) as server:
        result = await send(target(server.port))

    assert verdict_of(result) is Outcome.DEFERRED
    decided = deciding_reply(result)
    assert decided is not None and decided.enhanced_code == "4.7.1"


async def test_smtp_sender_554_at_end_of_data_is_rejected_after_a_354() -> None:
    script = Script(replies={Stage.END_OF_DATA: Reply("554 5.7.1 Message rejected as spam")})
    async with ScriptedSmtpServer(script) as server:
        result = await send(target(server.port))

    assert verdict_of(result) is Outcome.REJECTED
    assert not result.accepted and result.accepted_at is None
    assert stages(result)[-3:] == [Stage.DATA, Stage.END_OF_DATA, Stage.QUIT]
    assert codes(result)[-3:-1] == [354, 554]
    assert server.sessions[0].messages == [RECEIVED]


async def test_smtp_sender_one_accepted_recipient_carries_the_transaction_on() -> None:
    other = "gone@inbox.test"
    script = Script(rcpt={other: Reply("550 5.1.1 no such user")})
    async with ScriptedSmtpServer(script) as server:
        result = await send(target(server.port), recipients=(other, SEED))

    assert result.accepted and verdict_of(result) is None
    assert [r.code for r in result.transcript if r.stage is Stage.RCPT] == [550, 250]


async def test_smtp_sender_all_recipients_refused_ends_with_the_last_reply_class() -> None:
    first, second = "a@inbox.test", "b@inbox.test"
    script = Script(
        rcpt={first: Reply("550 5.1.1 no such user"), second: Reply("452 4.2.2 mailbox full")}
    )
    async with ScriptedSmtpServer(script) as server:
        result = await send(target(server.port), recipients=(first, second))

    assert verdict_of(result) is Outcome.DEFERRED
    assert [r.code for r in result.transcript if r.stage is Stage.RCPT] == [550, 452]
    assert "DATA" not in server.sessions[0].commands


@pytest.mark.parametrize(
    ("banner", "outcome"), [("554", Outcome.REJECTED), ("421", Outcome.DEFERRED)]
)
async def test_smtp_sender_refusing_greeting_is_a_verdict(banner: str, outcome: Outcome) -> None:
    script = Script(replies={Stage.BANNER: Reply(f"{banner} scripted.test go away")})
    async with ScriptedSmtpServer(script) as server:
        result = await send(target(server.port))

    assert verdict_of(result) is outcome
    assert stages(result)[0] is Stage.BANNER


async def test_smtp_sender_reply_of_the_wrong_class_is_a_protocol_error() -> None:
    async with ScriptedSmtpServer(Script(replies={Stage.MAIL: Reply("354 what?")})) as server:
        result = await send(target(server.port))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.MAIL, ErrorKind.PROTOCOL)
    assert verdict_of(result) is Outcome.ERROR


# -- server text that is not UTF-8 ----------------------------------------------------------


def assert_valid_text(result: SendResult) -> None:
    texts = [reply.text for reply in result.transcript]
    if result.error is not None:
        texts.append(result.error.message)
    for text in texts:
        text.encode("utf-8")  # raises on a lone surrogate


async def test_smtp_sender_keeps_reply_bytes_that_are_not_utf8_as_visible_escapes() -> None:
    script = Script(
        replies={Stage.BANNER: Raw("220 scripted.test café \xff\r\n".encode("latin-1"))},
        rcpt={SEED: Raw(b"550 5.7.1 caf\xc3\xa9 is UTF-8, caf\xe9 is not\r\n")},
    )
    async with ScriptedSmtpServer(script) as server:
        result = await send(target(server.port))

    assert_valid_text(result)
    assert result.transcript[0].text == "scripted.test caf\\xe9 \\xff"
    (rcpt,) = [reply for reply in result.transcript if reply.stage is Stage.RCPT]
    assert (rcpt.stage, rcpt.code, rcpt.enhanced_code) == (Stage.RCPT, 550, "5.7.1")
    assert rcpt.text == "5.7.1 café is UTF-8, caf\\xe9 is not"
    assert verdict_of(result) is Outcome.REJECTED


@pytest.mark.parametrize(
    ("replies", "message"),
    [
        (
            {Stage.AUTH: Raw(b"535 5.7.8 \xffbad credentials\r\n")},
            "authentication refused: 535 5.7.8 \\xffbad credentials",
        ),
        (
            {Stage.EHLO: Raw(b"250-scripted.test\r\n250 AUTH X-\xff\r\n")},
            "no usable AUTH mechanism (we use PLAIN, LOGIN; offered: X-\\xff)",
        ),
    ],
    ids=["auth-reply", "ehlo-keywords"],
)
async def test_smtp_sender_error_messages_quoting_the_server_are_valid_text(
    replies: dict[Stage, Raw], message: str
) -> None:
    script = Script(credentials=(USER, PASSWORD), replies=dict(replies))
    async with ScriptedSmtpServer(script) as server:
        result = await send(target(server.port, username=USER, password=PASSWORD))

    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert result.error.message == message
    assert_valid_text(result)


# -- auth ----------------------------------------------------------------------------------


async def test_smtp_sender_535_is_an_auth_error_and_the_password_stays_secret(
    server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    script = Script(tls_context=server_tls, credentials=(USER, "the-right-one"))
    async with ScriptedSmtpServer(script) as server:
        smtp = target(
            server.port, tls=TlsMode.STARTTLS, ca_file=ca_file, username=USER, password=PASSWORD
        )
        result = await send(smtp)

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.AUTH, ErrorKind.AUTH)
    assert verdict_of(result) is Outcome.ERROR
    auth = [reply for reply in result.transcript if reply.stage is Stage.AUTH]
    assert [(reply.code, reply.enhanced_code) for reply in auth] == [(535, "5.7.8")]
    assert server.sessions[0].commands[-1] == "QUIT"
    assert "MAIL" not in " ".join(server.sessions[0].commands)
    assert_no_secret(smtp, result, result.error)


async def test_smtp_sender_redacts_a_password_the_server_echoes(
    server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    blob = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    echo = Reply(f"535 5.7.8 bad AUTH PLAIN {blob} (password {PASSWORD})")
    script = Script(tls_context=server_tls, credentials=(USER, PASSWORD))
    script = dataclasses.replace(script, replies={Stage.AUTH: echo})
    async with ScriptedSmtpServer(script) as server:
        result = await send(
            target(
                server.port, tls=TlsMode.STARTTLS, ca_file=ca_file, username=USER, password=PASSWORD
            )
        )

    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert MASK in result.transcript[4].text
    assert_no_secret(result, result.error)


async def test_smtp_sender_never_sends_credentials_in_the_clear_unless_told_to() -> None:
    script = Script(credentials=(USER, PASSWORD))
    async with ScriptedSmtpServer(script) as server:
        result = await send(
            target(server.port, tls=TlsMode.OPPORTUNISTIC, username=USER, password=PASSWORD)
        )

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.AUTH, ErrorKind.TLS)
    assert not any(command.startswith("AUTH") for command in server.sessions[0].commands)


async def test_smtp_sender_tls_none_authenticates_in_the_clear_when_told_to() -> None:
    async with ScriptedSmtpServer(Script(credentials=(USER, PASSWORD))) as server:
        result = await send(target(server.port, username=USER, password=PASSWORD))

    assert result.accepted and server.sessions[0].authenticated


async def test_smtp_sender_no_usable_auth_mechanism_is_an_auth_error() -> None:
    script = Script(credentials=(USER, PASSWORD), auth_mechanisms=("CRAM-MD5",))
    async with ScriptedSmtpServer(script) as server:
        result = await send(target(server.port, username=USER, password=PASSWORD))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.AUTH, ErrorKind.AUTH)
    assert "CRAM-MD5" in result.error.message
    assert not any(command.startswith("AUTH") for command in server.sessions[0].commands)


async def test_smtp_sender_temporary_auth_failure_is_deferred() -> None:
    script = Script(
        credentials=(USER, PASSWORD),
        replies={Stage.AUTH: Reply("454 4.7.0 Temporary authentication failure")},
    )
    async with ScriptedSmtpServer(script) as server:
        result = await send(target(server.port, username=USER, password=PASSWORD))

    assert result.error is None
    assert verdict_of(result) is Outcome.DEFERRED


# -- TLS failures --------------------------------------------------------------------------


async def test_smtp_sender_required_starttls_not_offered_is_a_tls_error() -> None:
    async with ScriptedSmtpServer(Script()) as server:
        result = await send(target(server.port, tls=TlsMode.STARTTLS))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.STARTTLS, ErrorKind.TLS)
    assert "STARTTLS" not in server.sessions[0].commands
    assert server.sessions[0].commands[-1] == "QUIT"


@pytest.mark.parametrize(
    ("mode", "stage"), [(TlsMode.IMPLICIT, Stage.CONNECT), (TlsMode.STARTTLS, Stage.STARTTLS)]
)
async def test_smtp_sender_untrusted_certificate_is_a_tls_error(
    mode: TlsMode, stage: Stage, server_tls: ssl.SSLContext, untrusted_ca_file: Path
) -> None:
    script = Script(tls_context=server_tls, implicit_tls=mode is TlsMode.IMPLICIT)
    async with ScriptedSmtpServer(script) as server:
        result = await send(target(server.port, tls=mode, ca_file=untrusted_ca_file))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (stage, ErrorKind.TLS)
    assert "certificate verification failed" in result.error.message
    assert not any(session.messages for session in server.sessions)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_smtp_sender_reaches_a_route_given_by_ip_literal_or_by_name(host: str) -> None:
    async with ScriptedSmtpServer(Script()) as server:
        result = await send(target(server.port, host=host))

    assert result.error is None and result.accepted


async def test_smtp_sender_reuses_one_tls_context_for_every_probe_of_a_route(
    server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    async with ScriptedSmtpServer(Script(tls_context=server_tls, implicit_tls=True)) as server:
        for _ in range(3):
            result = await send(target(server.port, tls=TlsMode.IMPLICIT, ca_file=ca_file))
            assert result.accepted

    context = cached_client_context(ca_file, verify=True)
    assert context is not None
    assert context.session_stats()["connect"] == 3  # every handshake on that one context


def install_ca_file(path: Path, source: Path) -> None:
    """Put `source`'s certificates at `path` the way deploy tools and Kubernetes secret volumes
    do: a new file renamed over the old one."""
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(source.read_bytes())
    staged.replace(path)


async def test_smtp_sender_uses_a_replaced_ca_file_without_a_restart(
    server_tls: ssl.SSLContext, ca_file: Path, untrusted_ca_file: Path, tmp_path: Path
) -> None:
    configured = tmp_path / "route-ca.pem"
    install_ca_file(configured, untrusted_ca_file)
    script = Script(tls_context=server_tls, implicit_tls=True)
    async with ScriptedSmtpServer(script) as server:
        smtp = target(server.port, tls=TlsMode.IMPLICIT, ca_file=configured)
        refused = await send(smtp)
        install_ca_file(configured, ca_file)
        accepted = await send(smtp)

    assert refused.error is not None and refused.error.kind is ErrorKind.TLS
    assert accepted.error is None and accepted.accepted


async def test_smtp_sender_implicit_tls_against_a_plain_server_fails_as_tls(
    ca_file: Path,
) -> None:
    async with ScriptedSmtpServer(Script()) as server:
        result = await send(target(server.port, tls=TlsMode.IMPLICIT, ca_file=ca_file))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.CONNECT, ErrorKind.TLS)
    assert "tls: starttls" in result.error.message


async def test_smtp_sender_unreadable_ca_file_is_a_tls_error(tmp_path: Path) -> None:
    async with ScriptedSmtpServer(Script()) as server:
        result = await send(
            target(server.port, tls=TlsMode.STARTTLS, ca_file=tmp_path / "missing.pem")
        )

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.CONNECT, ErrorKind.TLS)
    assert server.sessions == []


async def test_smtp_sender_implicit_tls_handshake_with_a_silent_server_times_out() -> None:
    async with ScriptedSmtpServer(Script(replies={Stage.BANNER: Hang()})) as server:
        result = await send(target(server.port, tls=TlsMode.IMPLICIT, stage_timeout=0.3))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.CONNECT, ErrorKind.TIMEOUT)


async def test_smtp_sender_silent_port_that_is_not_tls_either_times_out_at_the_banner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(smtp_sender, "_TLS_SNIFF_AFTER", 0.05)
    monkeypatch.setattr(smtp_sender, "_TLS_SNIFF_TIMEOUT", 0.1)
    async with ScriptedSmtpServer(Script(replies={Stage.BANNER: Hang()})) as server:
        result = await send(target(server.port, tls=TlsMode.STARTTLS, stage_timeout=0.5))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.BANNER, ErrorKind.TIMEOUT)
    assert len(server.sessions) == 2  # the sniff ran, found no TLS, and the wait went on


@pytest.mark.parametrize("mode", [TlsMode.STARTTLS, TlsMode.OPPORTUNISTIC, TlsMode.NONE])
async def test_smtp_sender_plain_client_on_an_implicit_tls_port_fails_as_tls(
    mode: TlsMode, server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    async with ScriptedSmtpServer(Script(tls_context=server_tls, implicit_tls=True)) as server:
        result = await send(target(server.port, tls=mode, ca_file=ca_file))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.BANNER, ErrorKind.TLS)
    assert "tls: implicit" in result.error.message


# -- faults --------------------------------------------------------------------------------


async def test_smtp_sender_hang_at_data_is_bounded_by_the_total_timeout() -> None:
    async with ScriptedSmtpServer(Script(replies={Stage.DATA: Hang()})) as server:
        result = await send(target(server.port, total_timeout=0.5))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.DATA, ErrorKind.TIMEOUT)
    assert "total_timeout" in result.error.message
    assert verdict_of(result) is Outcome.ERROR


async def test_smtp_sender_hang_at_data_is_also_bounded_by_the_stage_timeout() -> None:
    async with ScriptedSmtpServer(Script(replies={Stage.DATA: Hang()})) as server:
        result = await send(target(server.port, stage_timeout=0.3))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.DATA, ErrorKind.TIMEOUT)
    assert "stage_timeout" in result.error.message


async def test_smtp_sender_slow_drip_is_bounded_by_the_total_timeout() -> None:
    # Every byte arrives well within any per-read timeout; only the one deadline ends this.
    drip = Drip(b"250-still going\r\n", interval=0.01, repeat=True)
    async with ScriptedSmtpServer(Script(replies={Stage.EHLO: drip})) as server:
        result = await send(target(server.port, total_timeout=0.5))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.EHLO, ErrorKind.TIMEOUT)
    assert "total_timeout" in result.error.message


async def test_smtp_sender_garbage_greeting_is_a_protocol_error() -> None:
    script = Script(replies={Stage.BANNER: Raw(b"HELLO, this is not SMTP\r\n")})
    async with ScriptedSmtpServer(script) as server:
        result = await send(target(server.port))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.BANNER, ErrorKind.PROTOCOL)


async def test_smtp_sender_connection_dropped_after_ehlo_is_closed() -> None:
    ehlo_then_drop = (Reply("250-scripted.test\n250 8BITMIME"), Drop())
    async with ScriptedSmtpServer(Script(replies={Stage.EHLO: ehlo_then_drop})) as server:
        result = await send(target(server.port))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.MAIL, ErrorKind.CLOSED)
    assert stages(result) == [Stage.BANNER, Stage.EHLO]


async def test_smtp_sender_connection_dropped_instead_of_a_reply_is_closed() -> None:
    async with ScriptedSmtpServer(Script(replies={Stage.RCPT: Drop()})) as server:
        result = await send(target(server.port))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.RCPT, ErrorKind.CLOSED)


async def test_smtp_sender_refused_connection_is_a_connect_error(refused_port: int) -> None:
    result = await send(target(refused_port))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.CONNECT, ErrorKind.CONNECT)
    assert result.transcript == ()
    assert verdict_of(result) is Outcome.ERROR


# -- arguments and pure helpers --------------------------------------------------------------


async def test_smtp_sender_rejects_unusable_arguments_before_connecting(refused_port: int) -> None:
    smtp = target(refused_port)
    with pytest.raises(ValueError, match="recipient"):
        await send_probe(smtp, envelope_from=SENDER, recipients=[], message=MESSAGE)
    with pytest.raises(ValueError, match="ASCII"):
        await send_probe(smtp, envelope_from=SENDER, recipients=["a@b.test> X"], message=MESSAGE)
    with pytest.raises(ValueError, match="ASCII"):
        await send_probe(smtp, envelope_from="prüfung@x.test", recipients=[SEED], message=MESSAGE)


def test_smtp_sender_target_repr_hides_the_password() -> None:
    smtp = target(25, username=USER, password=PASSWORD)
    assert_no_secret(smtp)
    assert USER in repr(smtp)


def test_smtp_sender_target_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="port"):
        target(0)
    with pytest.raises(ValueError, match="total_timeout"):
        target(25, total_timeout=0)
    with pytest.raises(ValueError, match="username"):
        target(25, password=PASSWORD)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.1.1 <a@b>: Recipient address rejected", "5.1.1"),
        ("4.7.1 Greylisted", "4.7.1"),
        ("2.0.0", "2.0.0"),
        ("2.0.0 Ok\nsecond line", "2.0.0"),
        ("250.1.1 not a code", None),
        ("Ok 5.1.1 later in the text", None),
        ("3.1.1 wrong class digit", None),
        ("5.1.1234 too many digits", None),
        ("", None),
    ],
)
def test_smtp_sender_parses_enhanced_status_codes(text: str, expected: str | None) -> None:
    assert parse_enhanced_code(text) == expected


def _result(*replies: SmtpReply, accepted: bool = False, error: ProbeError | None = None) -> Any:
    return SendResult(
        transcript=replies,
        accepted=accepted,
        accepted_at=1.0 if accepted else None,
        duration_seconds=0.1,
        error=error,
    )


def test_smtp_sender_verdict_reads_the_reply_before_quit() -> None:
    rcpt_550 = SmtpReply(Stage.RCPT, 550, "5.1.1", "5.1.1 no")
    rcpt_451 = SmtpReply(Stage.RCPT, 451, None, "later")
    bye = SmtpReply(Stage.QUIT, 221, None, "Bye")
    eod = SmtpReply(Stage.END_OF_DATA, 250, None, "Ok")
    auth = SmtpReply(Stage.AUTH, 535, "5.7.8", "no")
    assert verdict_of(_result(rcpt_550, bye)) is Outcome.REJECTED
    assert verdict_of(_result(rcpt_451, bye)) is Outcome.DEFERRED
    assert verdict_of(_result(eod, bye, accepted=True)) is None
    assert verdict_of(_result(auth, bye, error=ProbeError(Stage.AUTH, ErrorKind.AUTH, "x"))) is (
        Outcome.ERROR
    )
    assert verdict_of(_result()) is Outcome.ERROR
    assert deciding_reply(_result(rcpt_550, bye)) == rcpt_550
    assert deciding_reply(_result(bye)) is None
