"""Reading bounces: a real Postfix DSN, its variants, and what must never count as a bounce."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import Config, validate_config
from agent.model import BounceType
from agent.reading.bounces import BounceReport, read_bounce
from agent.reading.probe_token import KeyRing
from tests.agent_setup import TEST_SECRET

SECRET = TEST_SECRET.encode()
MESSAGES = Path(__file__).parent / "messages"
# Produced by the test mail system: submission accepted nobody-132a2d3e@seed.test, the MX refused
# it with 550 5.1.1, and Postfix returned the probe to its VERP envelope sender.
HARD = (MESSAGES / "postfix-dsn-hard-5.1.1.eml").read_bytes()
PROBE_ID = "01m8h9j127ya08stfwvwzdepnt"


def test_real_postfix_dsn_is_a_hard_bounce_of_the_signed_probe() -> None:
    report = read_bounce(HARD, keys=KeyRing(SECRET))
    assert report.bounce_type is BounceType.HARD
    assert report.probe_id == PROBE_ID
    assert report.signed
    assert report.status == "5.1.1"
    assert report.reporting_mta == "mail.good.test"
    assert report.recipients == ("nobody-132a2d3e@seed.test",)


def test_without_the_returned_message_the_verp_address_names_the_probe() -> None:
    headers_only = HARD.split(b"Content-Description: Undelivered Message")[0]
    report = read_bounce(headers_only, keys=KeyRing(SECRET))
    assert report.bounce_type is BounceType.HARD
    assert (report.probe_id, report.signed) == (PROBE_ID, False)


def test_a_dsn_signed_with_another_secret_names_the_probe_only_by_verp() -> None:
    report = read_bounce(HARD, keys=KeyRing(b"another-agent-secret-0123456789"))
    assert (report.probe_id, report.signed) == (PROBE_ID, False)


def test_a_delay_notice_is_a_soft_bounce() -> None:
    delayed = (
        HARD.replace(b"Action: failed", b"Action: delayed")
        .replace(b"Status: 5.1.1", b"Status: 4.7.1")
        .replace(b"Undelivered Mail Returned to Sender", b"Delayed Mail (still being retried)")
    )
    report = read_bounce(delayed, keys=KeyRing(SECRET))
    assert report.bounce_type is BounceType.SOFT
    assert report.status == "4.7.1"


def test_a_dsn_reporting_only_a_successful_relay_is_no_failure() -> None:
    relayed = HARD.replace(b"Action: failed", b"Action: relayed").replace(
        b"Status: 5.1.1", b"Status: 2.0.0"
    )
    # Strip the human-readable text that heuristic detectors would read as a failure.
    relayed = re.sub(rb"<nobody-132a2d3e@seed.test>: host .*?command\)\n", b"", relayed, flags=re.S)
    report = read_bounce(relayed, keys=KeyRing(SECRET))
    assert report.bounce_type is None


def test_an_out_of_office_reply_quoting_the_probe_is_not_a_bounce() -> None:
    reply = (
        f"From: seed@seed.test\r\nTo: box000+{PROBE_ID}@seed.test\r\n"
        f"Subject: Out of Office: Deliverability probe {PROBE_ID}\r\n"
        "Auto-Submitted: auto-replied\r\n\r\nAway.\r\n"
    ).encode()
    report = read_bounce(reply, keys=KeyRing(SECRET))
    assert report.bounce_type is None
    assert report.probe_id is None


# The probe as the MX returned it, inside the real DSN.
RETURNED = HARD.split(b"Content-Type: message/rfc822\n\n")[1].split(b"\n--3439820E0A6")[0]
NO_FAILURE = "a bounce that reports no failed recipient"


def _one_part_bounce(from_header: bytes) -> bytes:
    """A bounce as one text part quoting the returned probe, as many MTAs send them."""
    return (
        from_header
        + b"Subject: Undelivered Mail Returned to Sender\n"
        + f"To: box000+{PROBE_ID}@seed.test\n".encode()
        + b"Content-Type: text/plain\n\nYour message could not be delivered.\n\n"
        + RETURNED
        + b"\n"
    )


@pytest.mark.parametrize("from_header", [b"", b"From: \n"], ids=["no-from", "empty-from"])
def test_an_unreadable_bounce_is_a_report_without_probe_rather_than_an_exception(
    from_header: bytes,
) -> None:
    # On a one-part bounce without a From address flufl.bounce's Yale detector raises IndexError
    # and all_failures() re-raises it: only read_bounce's catch-all keeps it from the watcher. If a
    # flufl.bounce release stops raising here, this input no longer reaches it: find another.
    raw = _one_part_bounce(from_header)
    report = read_bounce(raw, keys=KeyRing(SECRET))
    assert report == BounceReport(
        None, False, None, None, None, (), "unreadable bounce (IndexError)"
    )
    # The same bounce with a sender is read and names the signed probe: the catch-all, not a
    # failure to find the probe, is what left it out above.
    readable = read_bounce(
        _one_part_bounce(b"From: MAILER-DAEMON@mail.good.test\n"), keys=KeyRing(SECRET)
    )
    assert readable == BounceReport(PROBE_ID, True, None, None, None, (), NO_FAILURE)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "not a bounce: malformed"),
        (b"\x00\x01 not a message", "not a bounce: malformed"),
        (
            HARD.replace(b"message/delivery-status", b"message/delivery-status; x=" + b"y" * 9000),
            "not a bounce: malformed",
        ),
        (
            b"From: MAILER-DAEMON@x.test\r\nSubject: Undelivered Mail\r\n"
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=\r\n\r\n--\r\n",
            NO_FAILURE,
        ),
    ],
    ids=["empty", "binary", "huge-parameter", "no-boundary"],
)
def test_broken_bounces_count_no_failure_and_name_no_probe(raw: bytes, expected: str) -> None:
    report = read_bounce(raw, keys=KeyRing(SECRET))
    assert report == BounceReport(None, False, None, None, None, (), expected)


def test_a_truncated_dsn_counts_no_failure_but_its_verp_address_names_the_probe() -> None:
    report = read_bounce(HARD[: len(HARD) // 3], keys=KeyRing(SECRET))
    assert report == BounceReport(PROBE_ID, False, None, None, None, (), NO_FAILURE)


def _config(route_extra: dict[str, object]) -> Config:
    return validate_config(
        {
            "secret": TEST_SECRET,
            "routes": [{"name": "r", "host": "h", "from": "p@example.com", **route_extra}],
            "mailboxes": [
                {
                    "name": "m",
                    "host": "h",
                    "auth": {"username": "u", "password": "pw-123456"},
                    "address": "seed@example.com",
                }
            ],
            "bounce_mailboxes": [
                {
                    "name": "b",
                    "host": "h",
                    "auth": {"username": "u", "password": "pw-123456"},
                    "address": "bounces@example.com",
                }
            ],
        },
        base_dir=Path("."),
        environ={},
    )


def test_envelope_sender_is_verp_on_the_bounce_mailbox() -> None:
    config = _config({"bounce_mailbox": "b"})
    assert config.envelope_from(config.routes[0], PROBE_ID) == f"bounces+{PROBE_ID}@example.com"


def test_envelope_sender_without_verp_is_the_bounce_mailbox_address() -> None:
    config = _config({"bounce_mailbox": "b", "verp": False})
    assert config.envelope_from(config.routes[0], PROBE_ID) == "bounces@example.com"


def test_envelope_sender_without_a_bounce_mailbox_is_envelope_from() -> None:
    config = _config({"envelope_from": "rp@example.com"})
    assert config.envelope_from(config.routes[0], PROBE_ID) == "rp@example.com"
