"""Reading bounces: a real Postfix DSN, its variants, and what must never count as a bounce."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import Config, ConfigError, validate_config
from agent.model import BounceReason, BounceType
from agent.reading.bounces import (
    BounceKind,
    BounceProof,
    BounceReport,
    bounce_reason,
    read_bounce,
    read_bounce_fields,
)
from agent.reading.probe_token import KeyRing, sign_probe_id, verp_address
from tests.agent_setup import TEST_SECRET

SECRET = TEST_SECRET.encode()
MESSAGES = Path(__file__).parent / "messages"
# Produced by the test mail system: submission accepted nobody-132a2d3e@seed.test, the MX refused
# it with 550 5.1.1, and Postfix returned the probe to its VERP envelope sender.
HARD = (MESSAGES / "postfix-dsn-hard-5.1.1.eml").read_bytes()
PROBE_ID = "01m8h9j127ya08stfwvwzdepnt"


def _tagged(raw: bytes, probe_id: str = PROBE_ID, secret: bytes = SECRET) -> bytes:
    """`raw` addressed to the probe's tagged VERP address, as this agent sends probes today (the
    sample was captured before VERP addresses carried a tag)."""
    tagged = verp_address("box000@seed.test", probe_id, secret).encode()
    return raw.replace(f"box000+{PROBE_ID}@seed.test".encode(), tagged)


def test_real_postfix_dsn_is_a_hard_bounce_of_the_signed_probe() -> None:
    report = read_bounce(HARD, keys=KeyRing(SECRET))
    assert report.bounce_type is BounceType.HARD
    assert report.probe_id == PROBE_ID
    assert report.proof is BounceProof.SIGNED_TOKEN and not report.forged
    assert report.status == "5.1.1"
    assert report.reporting_mta == "mail.good.test"
    assert report.recipients == ("nobody-132a2d3e@seed.test",)


# The real DSN without the returned probe: only the envelope recipient names the probe.
HEADERS_ONLY = HARD.split(b"Content-Description: Undelivered Message")[0]


def test_without_the_returned_message_the_verp_tag_proves_the_probe() -> None:
    report = read_bounce(_tagged(HEADERS_ONLY), keys=KeyRing(SECRET))
    assert report.bounce_type is BounceType.HARD
    assert (report.probe_id, report.proof, report.forgery) == (
        PROBE_ID,
        BounceProof.VERP_TAG,
        None,
    )


def test_a_verp_address_without_a_tag_proves_nothing() -> None:
    # The id alone is public (Message-ID, status page): anyone can send to bounces+<id>@.
    report = read_bounce(HEADERS_ONLY, keys=KeyRing(SECRET))
    assert (report.probe_id, report.proof) == (PROBE_ID, None)
    assert report.forgery == "it carries neither the probe's signed token nor its VERP tag"


def test_a_dsn_signed_with_another_secret_proves_nothing() -> None:
    report = read_bounce(_tagged(HARD), keys=KeyRing(b"another-agent-secret-0123456789"))
    assert (report.probe_id, report.proof) == (PROBE_ID, None)
    assert report.forged


def test_a_verp_tag_made_with_an_earlier_secret_still_proves_the_probe() -> None:
    keys = KeyRing(b"another-agent-secret-0123456789").rotated(SECRET).rotated(b"n" * 32)
    report = read_bounce(_tagged(HEADERS_ONLY), keys=keys)
    assert report.proof is BounceProof.VERP_TAG


OTHER_PROBE = "01m8h9j127ya08stfwvwzdepnv"


def test_a_signed_token_and_a_verp_tag_for_different_probes_contradict_each_other() -> None:
    report = read_bounce(_tagged(HARD, OTHER_PROBE), keys=KeyRing(SECRET))
    assert report.proof is None
    assert report.forgery == (
        f"its signed token names probe {PROBE_ID} and its VERP tag probe {OTHER_PROBE}"
    )


def test_a_returned_message_that_is_not_the_probe_contradicts_the_verp_tag() -> None:
    # Tagged for PROBE_ID, but what came back is another message of ours (signed as OTHER_PROBE).
    other = RETURNED.replace(PROBE_ID.encode(), OTHER_PROBE.encode())
    other = other.replace(
        b"51x5p2dw49darx0h0tqj9kndv3", sign_probe_id(OTHER_PROBE, SECRET).encode()
    )
    raw = _tagged(HEADERS_ONLY) + b"Content-Type: message/rfc822\n\n" + other
    report = read_bounce(raw, keys=KeyRing(SECRET))
    assert report.forged and report.proof is None


def _dsn(*, to: str, returned: str = "", returned_type: str = "message/rfc822") -> bytes:
    """A minimal RFC 3464 DSN to `to`, optionally returning `returned` as `returned_type`."""
    parts = (
        "--b\r\nContent-Type: text/plain\r\n\nYour message could not be delivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; relay.test\r\n\r\n"
        "Final-Recipient: rfc822; seed@seed.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
    )
    if returned:
        parts += f"--b\r\nContent-Type: {returned_type}\r\n\r\n{returned}\r\n"
    return (
        "From: MAILER-DAEMON@relay.test\r\n"
        f"To: {to}\r\n"
        "Subject: Delivery Status Notification (Failure)\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        f"{parts}--b--\r\n"
    ).encode()


def _text_bounce(*, to: str, quoted: str) -> bytes:
    """A non-DSN bounce, one text part quoting the original, in qmail's words."""
    return (
        "Return-Path: <>\r\n"
        "From: MAILER-DAEMON@relay.test\r\n"
        f"To: {to}\r\n"
        "Subject: failure notice\r\n\r\n"
        "Hi. This is the qmail-send program at relay.test.\r\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
        "<seed@seed.test>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
        f"--- Below this line is a copy of the message.\r\n\r\n{quoted}\r\n"
    ).encode()


# What a forger knows: the probe id (Message-ID local part, status page) and the bounce mailbox.
# The probe signature in the Message-ID is public too, so forgeries below guess the rest.
UNTAGGED = f"bounces+{PROBE_ID}@seed.test"
WRONG_TAG = f"bounces+{PROBE_ID}-0123456789abc@seed.test"
GUESSED_HEADERS = (
    f"Message-ID: <{PROBE_ID}.0000000000000000000000000a@good.test>\r\n"
    f"X-Deliverability-Probe: id={PROBE_ID}; sig=0000000000000000000000000a\r\n"
    f"Subject: Deliverability probe {PROBE_ID}\r\n"
)
FORGED_BOUNCES = {
    "dsn-returning-the-message": _dsn(
        to=UNTAGGED, returned=GUESSED_HEADERS + "\r\nThis is an automated probe.\r\n"
    ),
    "dsn-returning-headers": _dsn(
        to=UNTAGGED, returned=GUESSED_HEADERS, returned_type="text/rfc822-headers"
    ),
    "dsn-returning-nothing": _dsn(to=UNTAGGED),
    "dsn-with-a-wrong-tag": _dsn(to=WRONG_TAG),
    "text-bounce-quoting-the-subject": _text_bounce(
        to="bounces@seed.test", quoted=f"Subject: Deliverability probe {PROBE_ID}"
    ),
    "text-bounce-to-the-verp-address": _text_bounce(to=UNTAGGED, quoted="(nothing)"),
}


@pytest.mark.parametrize("raw", FORGED_BOUNCES.values(), ids=FORGED_BOUNCES.keys())
def test_a_bounce_that_only_names_the_probe_is_forged(raw: bytes) -> None:
    report = read_bounce(raw, keys=KeyRing(SECRET))
    assert report.bounce_type is BounceType.HARD
    assert (report.probe_id, report.proof) == (PROBE_ID, None)
    assert report.forged


TAGGED = verp_address("bounces@seed.test", PROBE_ID, SECRET)
SIGNED_HEADERS = (
    f"Message-ID: <{PROBE_ID}.{sign_probe_id(PROBE_ID, SECRET)}@good.test>\r\n"
    f"X-Deliverability-Probe: id={PROBE_ID}; sig={sign_probe_id(PROBE_ID, SECRET)}\r\n"
)
PROVEN_BOUNCES = {
    "dsn-returning-the-message": (
        _dsn(to=UNTAGGED, returned=SIGNED_HEADERS + "\r\nbody\r\n"),
        BounceProof.SIGNED_TOKEN,
    ),
    "dsn-returning-headers": (
        _dsn(to=UNTAGGED, returned=SIGNED_HEADERS, returned_type="text/rfc822-headers"),
        BounceProof.SIGNED_TOKEN,
    ),
    "dsn-returning-nothing": (_dsn(to=TAGGED), BounceProof.VERP_TAG),
    "dsn-returning-both": (
        _dsn(to=TAGGED, returned=SIGNED_HEADERS, returned_type="text/rfc822-headers"),
        BounceProof.SIGNED_TOKEN,
    ),
    "text-bounce-quoting-the-header": (
        _text_bounce(to="bounces@seed.test", quoted=SIGNED_HEADERS),
        BounceProof.SIGNED_TOKEN,
    ),
    "text-bounce-to-the-verp-address": (
        _text_bounce(to=TAGGED, quoted="(nothing)"),
        BounceProof.VERP_TAG,
    ),
}


@pytest.mark.parametrize(("raw", "proof"), PROVEN_BOUNCES.values(), ids=PROVEN_BOUNCES.keys())
def test_a_bounce_with_the_signed_token_or_the_verp_tag_proves_the_probe(
    raw: bytes, proof: BounceProof
) -> None:
    report = read_bounce(raw, keys=KeyRing(SECRET))
    assert report.bounce_type is BounceType.HARD
    assert (report.probe_id, report.proof, report.forgery) == (PROBE_ID, proof, None)
    assert report.recipients == ("seed@seed.test",)


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
        None, None, None, None, None, (), "unreadable bounce (IndexError)"
    )
    # The same bounce with a sender is read and names the signed probe: the catch-all, not a
    # failure to find the probe, is what left it out above.
    readable = read_bounce(
        _one_part_bounce(b"From: MAILER-DAEMON@mail.good.test\n"), keys=KeyRing(SECRET)
    )
    assert readable == BounceReport(
        PROBE_ID, BounceProof.SIGNED_TOKEN, None, None, None, (), NO_FAILURE
    )


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
    assert report == BounceReport(None, None, None, None, None, (), expected)


def test_a_truncated_dsn_counts_no_failure_but_its_verp_tag_proves_the_probe() -> None:
    report = read_bounce(_tagged(HARD[: len(HARD) // 3]), keys=KeyRing(SECRET))
    assert report == BounceReport(PROBE_ID, BounceProof.VERP_TAG, None, None, None, (), NO_FAILURE)


def _config(
    route_extra: dict[str, object], *, bounce_address: str = "bounces@example.com"
) -> Config:
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
                    "address": bounce_address,
                }
            ],
        },
        base_dir=Path("."),
        environ={},
    )


def test_envelope_sender_is_the_tagged_verp_address_on_the_bounce_mailbox() -> None:
    config = _config({"bounce_mailbox": "b"})
    sender = config.envelope_from(config.routes[0], PROBE_ID)
    match = re.fullmatch(rf"bounces\+{PROBE_ID}-([0-9a-z]{{13}})@example\.com", sender)
    assert match is not None
    assert KeyRing(SECRET).verify_verp(PROBE_ID, match[1])
    assert len(sender.split("@")[0]) <= 64


def test_a_bounce_mailbox_too_long_for_a_verp_address_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        _config({"bounce_mailbox": "b"}, bounce_address="a-very-long-bounce-mailbox@example.com")
    assert "routes[0].bounce_mailbox" in str(refused.value)
    assert "local part of at most 23 characters" in str(refused.value)
    # Without VERP the address is used as it is.
    config = _config(
        {"bounce_mailbox": "b", "verp": False},
        bounce_address="a-very-long-bounce-mailbox@example.com",
    )
    assert config.envelope_from(config.routes[0], PROBE_ID).startswith("a-very-long")


def test_envelope_sender_without_verp_is_the_bounce_mailbox_address() -> None:
    config = _config({"bounce_mailbox": "b", "verp": False})
    assert config.envelope_from(config.routes[0], PROBE_ID) == "bounces@example.com"


def test_envelope_sender_without_a_bounce_mailbox_is_envelope_from() -> None:
    config = _config({"envelope_from": "rp@example.com"})
    assert config.envelope_from(config.routes[0], PROBE_ID) == "rp@example.com"


def test_a_proven_bounce_keeps_what_the_dsn_says_about_the_probe_recipient() -> None:
    report = read_bounce(HARD, keys=KeyRing(SECRET))
    fields = report.fields_for("Nobody-132a2d3e@seed.test")
    assert fields is not None
    assert (fields.status, fields.smtp_code, fields.action, fields.reason) == (
        "5.1.1",
        "550",
        "failed",
        BounceReason.RECIPIENT_INVALID,
    )
    assert fields.recipient_invalid
    assert fields.reporting_mta == "mail.good.test"
    assert fields.original_message_id is not None
    assert fields.original_message_id.startswith(PROBE_ID)


def test_a_bounce_of_an_automatic_reply_is_still_a_bounce() -> None:
    # Its subject quotes the auto-reply's; the bounce subject and sender come first.
    raw = _text_bounce(to=UNTAGGED, quoted="").replace(
        b"Subject: failure notice", b"Subject: Undeliverable: Automatic reply: hello"
    )
    assert read_bounce_fields(raw).kind is BounceKind.BOUNCE


@pytest.mark.parametrize(
    ("status", "code", "text", "reason"),
    [
        ("5.1.1", "550", "", BounceReason.RECIPIENT_INVALID),
        ("5.1.10", "550", "", BounceReason.RECIPIENT_INVALID),  # null MX (RFC 7505)
        ("4.1.2", "450", "Domain not found", BounceReason.OTHER),  # a DNS hiccup, not invalid
        (None, "550", "Unknown user kijitora@example.net", BounceReason.RECIPIENT_INVALID),
        ("5.7.1", "550", "User unknown", BounceReason.POLICY),  # a specific status decides
        ("4.2.2", "450", "", BounceReason.MAILBOX_FULL),
        ("5.0.0", "552", "Quota exceeded", BounceReason.MAILBOX_FULL),
        (None, "554", "Client host blocked using a DNSBL", BounceReason.POLICY),
        ("5.3.4", "552", "Message size exceeds fixed maximum", BounceReason.OTHER),
    ],
)
def test_bounce_reason_tells_invalid_recipient_policy_and_full_mailbox_apart(
    status: str | None, code: str | None, text: str, reason: BounceReason
) -> None:
    assert bounce_reason(status, code, text) is reason


def test_a_text_bounce_about_two_recipients_gives_each_its_own_codes() -> None:
    raw = _text_bounce(to=UNTAGGED, quoted="").replace(
        b"<seed@seed.test>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n",
        b"<other@seed.test>:\r\nRemote host said: 552 5.2.2 Mailbox full\r\n\r\n"
        b"<seed@seed.test>:\r\nRemote host said: 550 5.7.1 Access denied\r\n",
    )
    seed = read_bounce_fields(raw, recipient="seed@seed.test").bounce
    other = read_bounce_fields(raw, recipient="other@seed.test").bounce
    assert seed is not None and other is not None
    assert (seed.smtp_code, seed.status, seed.reason) == ("550", "5.7.1", BounceReason.POLICY)
    assert (other.smtp_code, other.status, other.reason) == (
        "552",
        "5.2.2",
        BounceReason.MAILBOX_FULL,
    )
