"""Triage of raw messages found in seed mailboxes, and placement by folder, without sockets."""

from __future__ import annotations

import base64
import io
import random
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.generator import BytesGenerator
from pathlib import Path

import pytest

from agent.model import (
    AuthResult,
    AuthVerdicts,
    Outcome,
    SpamCategory,
    SpamSource,
    SpamVerdict,
)
from agent.probing.probe_message import build_probe_message
from agent.reading.probe_token import KeyRing, new_probe_id, sign_probe_id
from agent.reading.triage import MAX_HEADER_BYTES, Triage, TriageKind, placement_of, triage_message

SECRET = b"test-secret-0123456789abcdef"
PROBE_ID = "01hzjb7m8k0000000000000000"
SIG = sign_probe_id(PROBE_ID, SECRET)
MESSAGES = Path(__file__).parent / "messages"


def _probe(*, linesep: str = "\r\n") -> bytes:
    """The probe as the SMTP sender puts it on the wire (policy.SMTP folds and ends lines)."""
    message = build_probe_message(
        probe_id=PROBE_ID,
        secret=SECRET,
        header_from="Probe <probe@sender.test>",
        to="seed@seed.test",
        route="primary-relay",
        mailbox="gmail-seed-1",
        sent_at=datetime(2024, 6, 4, 10, 4, 3, tzinfo=UTC),
    )
    out = io.BytesIO()
    BytesGenerator(out, policy=policy.SMTP.clone(linesep=linesep)).flatten(message)
    return out.getvalue()


def _with_headers(raw: bytes, *lines: bytes, drop: tuple[bytes, ...] = ()) -> bytes:
    """LF-only `raw` with `lines` on top and header lines starting with any of `drop` removed."""
    head, _, body = raw.partition(b"\n\n")
    kept = [line for line in head.split(b"\n") if not line.lower().startswith(drop)]
    return b"\n".join([*lines, *kept]) + b"\n\n" + body


def _sample(name: str, *, crlf: bool = False) -> bytes:
    original = _probe(linesep="\n")
    headers = original.partition(b"\n\n")[0] + b"\n"
    text = (MESSAGES / name).read_bytes()
    text = (
        text.replace(b"%%PROBE_ID%%", PROBE_ID.encode())
        .replace(b"%%SIG%%", SIG.encode())
        .replace(b"%%ORIGINAL_HEADERS_B64%%", base64.encodebytes(headers))
        .replace(b"%%ORIGINAL_HEADERS%%", headers)
        .replace(b"%%ORIGINAL%%", original)
    )
    return text.replace(b"\n", b"\r\n") if crlf else text


def _triage(raw: bytes, *, trusted: tuple[str, ...] = (), secret: bytes = SECRET) -> Triage:
    return triage_message(raw, keys=KeyRing(secret), trusted_authserv_ids=trusted)


# Probes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("linesep", ["\r\n", "\n"])
def test_a_signed_probe_is_a_probe(linesep: str) -> None:
    triage = _triage(_probe(linesep=linesep))
    assert triage == Triage(
        kind=TriageKind.PROBE,
        probe_id=PROBE_ID,
        auth=AuthVerdicts(),
        reason="signed probe",
        probe_id_signed=True,
        auth_unparseable=0,
    )


def test_a_fresh_probe_id_round_trips() -> None:
    probe_id = new_probe_id()
    message = build_probe_message(
        probe_id=probe_id,
        secret=SECRET,
        header_from="probe@sender.test",
        to="seed@seed.test",
        route="r",
        mailbox="m",
        sent_at=datetime.now(UTC),
    )
    triage = _triage(message.as_bytes())
    assert (triage.kind, triage.probe_id) == (TriageKind.PROBE, probe_id)


@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize("trusted", [(), ("mx.google.com",)])
def test_a_probe_delivered_by_gmail_carries_its_trusted_verdicts(
    crlf: bool, trusted: tuple[str, ...]
) -> None:
    # The sample also holds a forged "mx.google.com" header saying fail, below the real one.
    triage = _triage(_sample("gmail_inbox_probe.eml", crlf=crlf), trusted=trusted)
    assert (triage.kind, triage.probe_id) == (TriageKind.PROBE, PROBE_ID)
    assert (
        triage.auth.items()
        == AuthVerdicts(  # the four summaries
            spf=AuthResult.PASS, dkim=AuthResult.PASS, dmarc=AuthResult.PASS, arc=AuthResult.PASS
        ).items()
    )


def test_a_probe_carries_the_spam_verdict_its_receiver_appended() -> None:
    # rspamd's fields as the test mail system appends them (tests/corpus/spam), below the probe's.
    sample = (Path(__file__).parent / "corpus" / "spam" / "mailsystem-rspamd-ham.eml").read_bytes()
    head = sample.partition(b"\n\n")[0]
    rspamd = head[head.index(b"X-Spam-Status:") :]
    probe_head, _, body = _probe(linesep="\n").partition(b"\n\n")
    triage = _triage(probe_head + b"\n" + rspamd + b"\n\n" + body)
    assert triage.kind is TriageKind.PROBE
    assert triage.spam == (SpamVerdict(SpamSource.RSPAMD, 2.0, 50.0, False, SpamCategory.HAM),)


def test_auth_verdicts_and_unparseable_headers_are_reported_on_probes() -> None:
    raw = _with_headers(_probe(linesep="\n"), b"Authentication-Results: mx.test; dkim=")
    triage = _triage(raw)
    assert (triage.kind, triage.auth, triage.auth_unparseable) == (
        TriageKind.PROBE,
        AuthVerdicts(),
        1,
    )


def test_a_probe_with_auto_submitted_no_or_without_it_is_still_a_probe() -> None:
    probe = _probe(linesep="\n")
    no = _with_headers(probe, b"Auto-Submitted: no", drop=(b"auto-submitted:",))
    absent = _with_headers(probe, drop=(b"auto-submitted:",))
    assert _triage(no).kind is TriageKind.PROBE
    assert _triage(absent).kind is TriageKind.PROBE


def test_an_8bit_utf8_subject_does_not_stop_a_probe() -> None:
    raw = _with_headers(
        _probe(linesep="\n"), "Subject: [Spam?] caf\u00e9".encode(), drop=(b"subject:",)
    )
    assert _triage(raw).kind is TriageKind.PROBE


def test_huge_header_values_do_not_stop_classification() -> None:
    raw = _with_headers(_probe(linesep="\n"), b"X-Padding: " + b"x" * 500_000)
    assert _triage(raw).kind is TriageKind.PROBE
    subject = b"Subject: Out of office " + b"x " * 200_000
    raw = _with_headers(_probe(linesep="\n"), subject, drop=(b"subject:",))
    assert _triage(raw).kind is TriageKind.AUTO_REPLY


# Forgeries and noise -----------------------------------------------------------------------------


def test_a_probe_signed_with_another_secret_is_forged() -> None:
    triage = _triage(_probe(), secret=b"another secret")
    assert (triage.kind, triage.probe_id, triage.probe_id_signed) == (
        TriageKind.FORGED,
        None,
        False,
    )


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (f"X-Deliverability-Probe: id={PROBE_ID}", "probe header malformed"),
        (f"X-Deliverability-Probe: id={PROBE_ID}; sig=", "probe header malformed"),
        (f"X-Deliverability-Probe: id={PROBE_ID}; sig={SIG[:-1]}0", "probe signature invalid"),
        (f"x-deliverability-probe: id={new_probe_id()}; sig={SIG}", "probe signature invalid"),
        ("X-Deliverability-Probe: garbage", "probe header malformed"),
    ],
)
def test_a_probe_header_without_a_valid_signature_is_forged(header: str, reason: str) -> None:
    raw = _with_headers(
        _probe(linesep="\n"), header.encode(), drop=(b"x-deliverability-probe:", b" id=")
    )
    triage = _triage(raw)
    assert (triage.kind, triage.reason, triage.probe_id) == (TriageKind.FORGED, reason, None)


def test_a_second_probe_header_makes_even_a_signed_probe_forged() -> None:
    extra = f"X-Deliverability-Probe: id={new_probe_id()}; sig={SIG}".encode()
    triage = _triage(_with_headers(_probe(linesep="\n"), extra))
    assert (triage.kind, triage.reason) == (TriageKind.FORGED, "several probe headers")


def test_a_message_without_a_probe_header_is_unrelated_even_if_it_names_a_probe() -> None:
    raw = _with_headers(_probe(linesep="\n"), drop=(b"x-deliverability-probe:", b" id="))
    triage = _triage(raw)
    assert (triage.kind, triage.probe_id) == (TriageKind.UNRELATED, None)
    assert triage.reason == "probe header missing"
    newsletter = b"From: news@shop.test\nSubject: Sale!\nDate: Tue, 4 Jun 2024 10:00:00 +0000\n\nHi"
    assert _triage(newsletter).kind is TriageKind.UNRELATED


def test_a_probe_header_smuggled_in_an_encoded_subject_is_not_a_probe() -> None:
    smuggled = base64.b64encode(f"x\r\nX-Deliverability-Probe: id={PROBE_ID}; sig={SIG}".encode())
    raw = b"From: a@evil.test\nSubject: =?utf-8?b?" + smuggled + b"?=\n\nhi\n"
    assert _triage(raw).kind is TriageKind.UNRELATED


def test_a_probe_header_smuggled_behind_a_bare_cr_is_malformed() -> None:
    # Python splits header lines at a lone CR; most MTAs and IMAP servers do not.
    raw = b"From: a@evil.test\r\nX-Note: hi\rX-Deliverability-Probe: id=%s; sig=%s\r\n\r\nhi" % (
        PROBE_ID.encode(),
        SIG.encode(),
    )
    triage = _triage(raw)
    assert (triage.kind, triage.probe_id) == (TriageKind.MALFORMED, None)


# Bounces and auto-replies ------------------------------------------------------------------------


@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("postfix_bounce.eml", "bounce: multipart/report delivery-status"),
        ("gmail_dsn_headers_only.eml", "bounce: multipart/report delivery-status"),
        ("exchange_ndr_base64.eml", "bounce: From mailer-daemon/postmaster"),
        ("qmail_failure_notice.eml", "bounce: subject"),
    ],
)
def test_bounces_are_bounces_and_name_the_signed_probe_they_quote(
    name: str, reason: str, crlf: bool
) -> None:
    triage = _triage(_sample(name, crlf=crlf))
    assert (triage.kind, triage.reason) == (TriageKind.BOUNCE, reason)
    assert (triage.probe_id, triage.probe_id_signed) == (PROBE_ID, True)


def test_a_bounce_quoting_only_the_subject_names_the_probe_unsigned() -> None:
    raw = b"From: postmaster@outlook.test\nSubject: Undeliverable: Deliverability probe %s\n\nx" % (
        PROBE_ID.encode()
    )
    triage = _triage(raw)
    assert (triage.kind, triage.probe_id, triage.probe_id_signed) == (
        TriageKind.BOUNCE,
        PROBE_ID,
        False,
    )


def test_a_quoted_message_id_with_a_bad_signature_is_not_taken_as_signed() -> None:
    other = new_probe_id()
    raw = b"From: mailer-daemon@x.test\nIn-Reply-To: <%s.%s@sender.test>\n\nx" % (
        other.encode(),
        SIG.encode(),
    )
    triage = _triage(raw)
    assert (triage.kind, triage.probe_id, triage.probe_id_signed) == (
        TriageKind.BOUNCE,
        None,
        False,
    )


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("outlook_automatic_reply.eml", "auto-reply: subject"),
        ("vacation_copies_headers.eml", "auto-reply: X-Autoreply"),
    ],
)
def test_auto_replies_are_auto_replies_even_when_they_copy_the_signed_header(
    name: str, reason: str
) -> None:
    triage = _triage(_sample(name, crlf=True))
    assert (triage.kind, triage.reason) == (TriageKind.AUTO_REPLY, reason)
    assert (triage.probe_id, triage.probe_id_signed) == (PROBE_ID, True)


def test_outlook_auto_reply_carries_microsofts_verdicts() -> None:
    triage = _triage(_sample("outlook_automatic_reply.eml"))
    assert (
        triage.auth.items()
        == AuthVerdicts(  # the four summaries
            spf=AuthResult.PASS, dkim=AuthResult.PASS, dmarc=AuthResult.PASS
        ).items()
    )


@pytest.mark.parametrize(
    ("lines", "drop", "kind"),
    [
        ([b"Auto-Submitted: auto-replied"], (b"auto-submitted:",), TriageKind.AUTO_REPLY),
        ([b"Auto-Submitted: auto-notified; owner-email=x@y.test"], (), TriageKind.AUTO_REPLY),
        ([b"X-Autoreply: yes"], (), TriageKind.AUTO_REPLY),
        ([b"X-Autorespond: Out of office"], (), TriageKind.AUTO_REPLY),
        ([b"Precedence: auto_reply"], (), TriageKind.AUTO_REPLY),
        ([b"Subject: Out of Office: Deliverability probe"], (b"subject:",), TriageKind.AUTO_REPLY),
        ([b"Subject: Automatic reply: hello"], (b"subject:",), TriageKind.AUTO_REPLY),
        ([b"Return-Path: <>"], (), TriageKind.BOUNCE),
        ([b"Return-Path: < >"], (), TriageKind.BOUNCE),
        ([b"From: Mail Delivery System <MAILER-DAEMON@x.test>"], (b"from:",), TriageKind.BOUNCE),
        ([b"From: postmaster@x.test"], (b"from:",), TriageKind.BOUNCE),
        ([b"Subject: Undelivered Mail Returned to Sender"], (b"subject:",), TriageKind.BOUNCE),
        ([b"Subject: Delivery Status Notification (Delay)"], (b"subject:",), TriageKind.BOUNCE),
        ([b"Subject: Mail delivery failed: returning message"], (b"subject:",), TriageKind.BOUNCE),
    ],
)
def test_a_signed_probe_with_any_bounce_or_auto_reply_mark_is_never_a_probe(
    lines: list[bytes], drop: tuple[bytes, ...], kind: TriageKind
) -> None:
    triage = _triage(_with_headers(_probe(linesep="\n"), *lines, drop=drop))
    assert (triage.kind, triage.probe_id, triage.probe_id_signed) == (kind, PROBE_ID, True)


def test_a_read_receipt_report_is_an_auto_reply() -> None:
    raw = (
        b"From: seed@seed.test\nSubject: Read: Deliverability probe %s\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"\n\n'
        b"--b\nContent-Type: text/plain\n\nRead.\n--b--\n"
    ) % PROBE_ID.encode()
    triage = _triage(raw)
    assert (triage.kind, triage.reason) == (
        TriageKind.AUTO_REPLY,
        "auto-reply: multipart/report disposition-notification",
    )
    assert (triage.probe_id, triage.probe_id_signed) == (PROBE_ID, False)


def test_an_auto_generated_message_without_a_probe_header_is_an_auto_reply() -> None:
    raw = b"From: no-reply@gmail.test\nAuto-Submitted: auto-generated\nSubject: Welcome\n\nhi"
    triage = _triage(raw)
    assert (triage.kind, triage.probe_id) == (TriageKind.AUTO_REPLY, None)


def test_an_unknown_auto_submitted_value_is_not_echoed_into_the_reason() -> None:
    raw = b"From: a@b.test\nAuto-Submitted: \x1b[31mevil\nSubject: x\n\nhi"
    triage = _triage(raw)
    assert (triage.kind, triage.reason) == (
        TriageKind.AUTO_REPLY,
        "auto-reply: Auto-Submitted other",
    )


def test_a_bounce_with_broken_mime_is_still_a_bounce() -> None:
    raw = _sample("postfix_bounce.eml").rsplit(b"--4VtQ2m0bZ1z9", 1)[0]  # no closing boundary
    raw = raw.replace(b"Content-Type: message/rfc822\n\n", b"Content-Type: message/rfc822\n")
    triage = _triage(raw)
    assert triage.kind is TriageKind.BOUNCE


# Hostile and broken input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"", TriageKind.MALFORMED),
        (b"\r\n\r\n  \n", TriageKind.MALFORMED),
        (b"\x00\xff\xfe\x00binary garbage", TriageKind.MALFORMED),
        (b"not a header line\n\nbody", TriageKind.MALFORMED),
        (b"From: a@b.test\nX-Bad: \x00\n\nbody", TriageKind.MALFORMED),
        (b"X-Padding: " + b"x" * MAX_HEADER_BYTES + b"\n\nbody", TriageKind.MALFORMED),
        (b"Subject: \xff\xfe\xc3\x28 invalid utf-8\nFrom: \xe9@\xe9\n\nbody", TriageKind.UNRELATED),
        (b"Subject: =?bogus-charset?q?abc?= =?utf-8?b?!!!?=\n\nbody", TriageKind.UNRELATED),
        (b"From: a@b.test\nContent-Type: multipart/mixed\n\nno boundary", TriageKind.UNRELATED),
        (b"Content-Type: multipart/mixed; boundary=b\n\n--b\n--b\n\xff\n--b", TriageKind.UNRELATED),
        (
            b"Content-Type: text/plain; charset*=bogus''x\nContent-Transfer-Encoding: base64\n\n!",
            TriageKind.UNRELATED,
        ),
        (
            b"Content-Type: multipart/report; report-type*=us-ascii''delivery-status;"
            b" boundary=b\n\n--b\n--b--",
            TriageKind.BOUNCE,
        ),
    ],
)
def test_hostile_input_is_classified_without_raising(raw: bytes, kind: TriageKind) -> None:
    triage = _triage(raw)
    assert triage.kind is kind
    assert triage.probe_id is None
    assert not triage.reason.startswith("unreadable")


def test_a_probe_truncated_anywhere_never_raises_and_is_a_probe_only_when_intact() -> None:
    probe = _probe()
    signed_from = probe.index(SIG.encode(), probe.index(b"X-Deliverability-Probe")) + len(SIG)
    last_header_cr = probe.index(b"\r\n\r\n") + 2
    kinds = []
    for cut in range(len(probe) + 1):
        triage = _triage(probe[:cut])
        assert not triage.reason.startswith("unreadable"), cut
        # A cut just after the CR of a header CRLF leaves a bare CR: malformed, not a probe.
        bare_cr = probe[cut - 1 : cut] == b"\r" and cut - 1 <= last_header_cr
        intact = cut >= signed_from and not bare_cr
        assert (triage.kind is TriageKind.PROBE) == intact, cut
        kinds.append(triage.kind)
    assert kinds[signed_from + 1] is TriageKind.MALFORMED


def test_a_from_header_that_makes_the_stdlib_default_policy_raise_is_handled() -> None:
    raw = _with_headers(_probe(linesep="\n"), b"From: a@", drop=(b"from:",))
    with pytest.raises(IndexError):  # the hazard: policy.default parses headers lazily
        _ = message_from_bytes(raw, policy=policy.default)["From"]
    assert _triage(raw).kind is TriageKind.PROBE


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        # Each would send a stdlib parser into deep recursion or superlinear time.
        (b"From: " + b"(" * 200_000, TriageKind.PROBE),
        (b"From: " + b"<" * 200_000, TriageKind.PROBE),
        (b"Subject: " + b"=?utf-8?q?a?= " * 20_000, TriageKind.PROBE),
        (b"Auto-Submitted: " + b"(" * 200_000, TriageKind.AUTO_REPLY),
        (b"Content-Type: multipart/report; report-type=" + b";" * 200_000, TriageKind.MALFORMED),
        (
            b"Content-Type: multipart/mixed; boundary=b;\n" + b" a=b;\n" * 3_000,
            TriageKind.MALFORMED,
        ),
    ],
)
def test_pathological_header_values_are_handled_without_raising(
    line: bytes, kind: TriageKind
) -> None:
    drop = (line.split(b":", 1)[0].lower() + b":",)
    triage = _triage(_with_headers(_probe(linesep="\n"), line, drop=drop))
    assert triage.kind is kind
    assert not triage.reason.startswith("unreadable")


def test_deeply_nested_mime_is_malformed_not_an_exception() -> None:
    depth = 2000
    head = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (level, level)
        for level in range(depth)
    )
    triage = _triage(b"From: mailer-daemon@x.test\n" + head + b"\nleaf\n")
    assert triage.kind in (TriageKind.MALFORMED, TriageKind.BOUNCE)


def test_random_and_mutated_messages_never_raise_nor_pass_as_an_unsigned_probe() -> None:
    rng = random.Random(20240604)
    seeds = [_probe(), _probe(linesep="\n"), _sample("postfix_bounce.eml", crlf=True)]
    specials = [b"\r", b"\n", b"\x00", b"\xff", b":", b";", b"=", b"(", b'"', b"=?", b"--"]
    inputs: list[bytes] = []
    for _ in range(150):
        inputs.append(rng.randbytes(rng.randrange(0, 400)))
    for _ in range(450):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 8)):
            position = rng.randrange(0, len(data) + 1)
            action = rng.randrange(4)
            if action == 0 and data:
                data[min(position, len(data) - 1)] = rng.randrange(256)
            elif action == 1:
                data[position:position] = rng.choice(specials)
            elif action == 2:
                del data[position : position + rng.randrange(1, 40)]
            else:
                line = bytes(data[position : position + rng.randrange(1, 120)])
                data[position:position] = line
        inputs.append(bytes(data))
    kinds = set()
    for raw in inputs:
        triage = _triage(raw)
        kinds.add(triage.kind)
        assert isinstance(triage.kind, TriageKind)
        assert not triage.reason.startswith("unreadable"), raw[:200]
        if triage.kind is TriageKind.PROBE:
            assert triage.probe_id == PROBE_ID  # the only id ever signed under SECRET
        assert SECRET.decode() not in repr(triage)
    # The corpus exercises more than one verdict, or it proves little.
    assert {TriageKind.PROBE, TriageKind.BOUNCE, TriageKind.MALFORMED} <= kinds


def test_an_empty_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        triage_message(_probe(), keys=KeyRing(b""), trusted_authserv_ids=())


# Placement ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "inbox", "junk", "outcome"),
    [
        ("INBOX", "INBOX", "Junk", Outcome.INBOX),
        ("inbox", "INBOX", "Junk", Outcome.INBOX),
        ("Inbox", "inbox", None, Outcome.INBOX),
        ("Junk", "INBOX", "Junk", Outcome.SPAM),
        ("junk", "INBOX", "Junk", Outcome.OTHER),  # only INBOX is case-insensitive
        ("[Gmail]/Spam", "INBOX", "[Gmail]/Spam", Outcome.SPAM),
        ("INBOX.Junk", "INBOX", "INBOX.Junk", Outcome.SPAM),
        ("inbox.Junk", "INBOX", "INBOX.Junk", Outcome.OTHER),
        ("Junk", "INBOX", None, Outcome.OTHER),
        ("INBOXES", "INBOX", "Junk", Outcome.OTHER),
        ("Archive", "INBOX", "Junk", Outcome.OTHER),
        ("", "INBOX", "Junk", Outcome.OTHER),
    ],
)
def test_placement_compares_folder_names_the_imap_way(
    folder: str, inbox: str, junk: str | None, outcome: Outcome
) -> None:
    assert placement_of(folder, inbox=inbox, junk=junk) is outcome
