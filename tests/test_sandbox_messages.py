"""What the sandbox writes into mailboxes: trace headers a provider adds, and RFC 3464 DSNs."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import Message

from agent.config import SandboxVerdicts
from agent.model import AuthResult, BounceType
from agent.probing.probe_message import build_probe_message
from agent.reading.authresults import read_auth_results
from agent.reading.bounces import BounceProof, read_bounce
from agent.reading.probe_token import KeyRing, new_probe_id
from agent.reading.triage import TriageKind, triage_message
from agent.sandbox.messages import Bounce, Delivery, build_dsn, stamp_delivery

SECRET = b"sandbox-messages-test-secret-0123"
DELIVERY = Delivery(
    envelope_from="bounces+id@sender.test",
    recipient="seed@sandbox.localhost",
    login="sender",
    client_name="agent.client.test",
    client_address="127.0.0.1",
    hostname="sandbox.localhost",
    queue_id="ABC123",
    received_at=1_790_000_000.0,
)


def _probe() -> tuple[str, bytes]:
    probe_id = new_probe_id()
    message = build_probe_message(
        probe_id=probe_id,
        secret=SECRET,
        header_from="Probe <probe@sender.test>",
        to="seed@sandbox.localhost",
        route="r",
        mailbox="m",
        sent_at=datetime(2026, 11, 28, tzinfo=UTC),
    )
    return probe_id, message.as_bytes()


def test_sandbox_delivery_headers_sit_on_top_and_read_as_trusted_verdicts() -> None:
    probe_id, raw = _probe()
    verdicts = SandboxVerdicts(spf=AuthResult.PASS, dkim=AuthResult.FAIL, dmarc=AuthResult.FAIL)
    stamped = stamp_delivery(raw, DELIVERY, verdicts=verdicts, authserv_id="mx.sandbox.test")

    message = message_from_bytes(stamped, policy=policy.compat32)
    assert list(message.keys())[:4] == [
        "Return-Path",
        "Delivered-To",
        "Authentication-Results",
        "Received",
    ]
    assert message["Return-Path"] == "<bounces+id@sender.test>"
    reading = read_auth_results(message, trusted_authserv_ids=["mx.sandbox.test"])
    assert (reading.verdicts.spf, reading.verdicts.dkim, reading.verdicts.dmarc) == (
        AuthResult.PASS,
        AuthResult.FAIL,
        AuthResult.FAIL,
    )
    assert reading.verdicts.arc is None
    triage = triage_message(stamped, keys=KeyRing(SECRET), trusted_authserv_ids=["mx.sandbox.test"])
    assert (triage.kind, triage.probe_id) == (TriageKind.PROBE, probe_id)
    assert b"\r\n" in stamped and b"\n" not in stamped.replace(b"\r\n", b"")


def test_sandbox_delivery_without_verdicts_has_no_authentication_results() -> None:
    _, raw = _probe()
    message = message_from_bytes(stamp_delivery(raw, DELIVERY), policy=policy.compat32)
    assert message["Authentication-Results"] is None
    assert "with ESMTPSA id ABC123" in " ".join(message["Received"].split())


def test_sandbox_delivery_headers_cannot_be_broken_by_client_supplied_names() -> None:
    _, raw = _probe()
    hostile = Delivery(
        envelope_from="a@b.test\r\nX-Injected: yes",
        recipient="seed@sandbox.localhost",
        login=None,
        client_name="evil\r\nX-Injected: yes",
        client_address="127.0.0.1",
        hostname="sandbox.localhost",
        queue_id="Q",
        received_at=1_790_000_000.0,
    )
    message = message_from_bytes(stamp_delivery(raw, hostile), policy=policy.compat32)
    assert message["X-Injected"] is None


def _parts(message: Message) -> list[Message]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, Message)]


def test_sandbox_dsn_is_an_rfc3464_report_returning_the_whole_probe() -> None:
    probe_id, raw = _probe()
    bounce = Bounce(status="5.1.1", diagnostic="550 5.1.1 No such user", bounced_at=1_790_000_002.0)
    dsn = build_dsn(raw, DELIVERY, bounce)

    message = message_from_bytes(dsn, policy=policy.compat32)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["To"] == "<bounces+id@sender.test>"
    assert message["Auto-Submitted"] == "auto-replied"
    text, status, returned = _parts(message)
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_recipient = _parts(status)
    assert per_message["Reporting-MTA"] == "dns; sandbox.localhost"
    assert per_recipient["Final-Recipient"] == "rfc822; seed@sandbox.localhost"
    assert (per_recipient["Action"], per_recipient["Status"]) == ("failed", "5.1.1")
    assert per_recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user"
    assert returned.get_content_type() == "message/rfc822"
    (original,) = _parts(returned)
    sent_id = message_from_bytes(raw, policy=policy.compat32)["Message-ID"]
    assert original["Message-ID"].split() == sent_id.split()

    report = read_bounce(dsn, keys=KeyRing(SECRET))
    assert (report.probe_id, report.proof) == (probe_id, BounceProof.SIGNED_TOKEN)
    assert (report.bounce_type, report.status) == (BounceType.HARD, "5.1.1")
    assert report.reporting_mta == "sandbox.localhost"
    assert report.recipients == ("seed@sandbox.localhost",)
