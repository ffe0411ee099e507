"""Spam-filter verdicts: normalised from real samples (tests/corpus/spam/README.md says where each
comes from) and read only from the receiving hop's fields."""

from __future__ import annotations

from email import policy
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

import pytest

from agent.model import SpamCategory, SpamSource, SpamVerdict
from agent.reading.probe_token import PROBE_HEADER
from agent.reading.spam import read_spam_verdicts, verdicts_of_fields

CORPUS = Path(__file__).parent / "corpus" / "spam"
# A probe field as the agent writes it, last of the probe's own fields; only its position matters
# here (triage checks its signature before the spam fields are read).
PROBE_FIELD = f"{PROBE_HEADER}: id=p1; sig=s1"


def parse(raw: bytes) -> Message:
    return BytesParser(policy=policy.compat32).parsebytes(raw)


def sample(name: str) -> Message:
    return parse((CORPUS / name).read_bytes())


def all_fields(message: Message) -> tuple[SpamVerdict, ...]:
    return verdicts_of_fields([(str(name), str(value)) for name, value in message.raw_items()])


def with_fields_after(name: str, anchor: str, *lines: str) -> Message:
    """The sample with `lines` inserted right after its field starting with `anchor` (the
    sending side's fields, in these tests)."""
    text = (CORPUS / name).read_text()
    head, sep, body = text.partition("\n\n")
    out: list[str] = []
    for line in head.split("\n"):
        out.append(line)
        if line.startswith(anchor):
            out.extend(lines)
    return parse(("\n".join(out) + sep + body).encode())


# --- normalisation, per source, on real samples ---------------------------------------------------


def test_rspamd_ham_gives_its_score_and_reject_threshold_and_not_spam() -> None:
    assert all_fields(sample("mailsystem-rspamd-ham.eml")) == (
        SpamVerdict(SpamSource.RSPAMD, 2.0, 50.0, False, SpamCategory.HAM),
    )


def test_rspamd_add_header_verdict_overrides_its_below_reject_flag() -> None:
    # X-Spamd-Result says False (below the reject action); X-Spam-Status: Yes is the add-header
    # action that filed the message into Junk.
    assert all_fields(sample("mailsystem-rspamd-spam.eml")) == (
        SpamVerdict(SpamSource.RSPAMD, 25.4, 50.0, True, SpamCategory.SPAM),
    )


@pytest.mark.parametrize(
    ("name", "score", "threshold"),
    [
        ("sisimai-lhost-exim-30.headers", -1.9, 5.0),
        ("sisimai-lhost-postfix-05.headers", -2.6, 5.0),
        # Above SpamAssassin's default 5.0 but under this site's own required score: not spam.
        ("sisimai-lhost-messagingserver-12.headers", 7.1, 15.0),
    ],
)
def test_spamassassin_status_gives_score_required_and_verdict(
    name: str, score: float, threshold: float
) -> None:
    assert all_fields(sample(name)) == (
        SpamVerdict(SpamSource.SPAMASSASSIN, score, threshold, False, SpamCategory.HAM),
    )


def test_outlook_inbox_delivery_is_not_spam_with_its_bulk_level() -> None:
    assert all_fields(sample("sisimai-lhost-office365-10.headers")) == (
        SpamVerdict(SpamSource.MICROSOFT, None, None, False, SpamCategory.HAM, bulk_level=0),
    )


def test_outlook_junk_delivery_is_spam() -> None:
    assert all_fields(sample("sisimai-lhost-postfix-57.headers")) == (
        SpamVerdict(SpamSource.MICROSOFT, None, None, True, SpamCategory.SPAM, bulk_level=0),
    )


def test_forefront_report_gives_scl_against_microsofts_threshold_and_the_filter_verdict() -> None:
    value = (CORPUS / "msdocs-forefront-antispam-report.txt").read_text().strip()
    assert verdicts_of_fields([("X-Forefront-Antispam-Report", value)]) == (
        SpamVerdict(SpamSource.MICROSOFT, 1.0, 5.0, False, SpamCategory.HAM),
    )


# Minimal values in the fields' formats, not samples of any site (none with a clear licence was
# found): SpamAssassin's own spamd tests expect `X-Spam-Flag: YES` on spam; the SCL scale (-1 to
# 9, 5 and up spam) is Microsoft's anti-spam documentation's.
@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            [("X-Spam-Flag", "YES"), ("X-Spam-Score", "8.0")],
            SpamVerdict(SpamSource.SPAMASSASSIN, 8.0, None, True, SpamCategory.SPAM),
        ),
        (
            [("X-Spam-Score", "-0.9")],
            SpamVerdict(SpamSource.SPAMASSASSIN, -0.9, None, None, SpamCategory.UNKNOWN),
        ),
        (
            [("X-Rspamd-Score", "3.84")],
            SpamVerdict(SpamSource.RSPAMD, 3.84, None, None, SpamCategory.UNKNOWN),
        ),
        (
            [("X-MS-Exchange-Organization-SCL", "6")],
            SpamVerdict(SpamSource.MICROSOFT, 6.0, 5.0, True, SpamCategory.SPAM),
        ),
        (
            [("X-MS-Exchange-Organization-SCL", "-1")],
            SpamVerdict(SpamSource.MICROSOFT, -1.0, 5.0, False, SpamCategory.HAM),
        ),
    ],
)
def test_score_only_and_flag_fields_normalise_by_their_documented_meaning(
    fields: list[tuple[str, str]], expected: SpamVerdict
) -> None:
    assert verdicts_of_fields(fields) == (expected,)


# --- which fields are the receiver's --------------------------------------------------------------


def test_spam_fields_the_sender_wrote_among_its_own_fields_are_ignored() -> None:
    # The real rspamd-stamped message, made a probe: the sending side's fields end at the probe
    # field; a sender's forged X-Spam-Flag and Forefront report sit among them.
    message = with_fields_after(
        "mailsystem-rspamd-spam.eml",
        "Date:",
        "X-Spam-Flag: NO",
        "X-Forefront-Antispam-Report: CIP:192.0.2.1;SCL:-1;SFV:SKN;CAT:NONE;",
        PROBE_FIELD,
    )
    assert read_spam_verdicts(message, trusted_auth_results=1) == (
        SpamVerdict(SpamSource.RSPAMD, 25.4, 50.0, True, SpamCategory.SPAM),
    )


def test_a_forged_x_spam_status_below_the_receivers_fields_does_not_count() -> None:
    # SpamAssassin prepends above the topmost Received field; a sender's own X-Spam-Status below
    # it (in the message as sent) says "No" and is never read.
    message = with_fields_after(
        "sisimai-lhost-exim-30.headers",
        "Received:",
        "X-Spam-Status: No, score=-99.0 required=5.0 tests=FORGED",
    )
    assert read_spam_verdicts(message, trusted_auth_results=0) == (
        SpamVerdict(SpamSource.SPAMASSASSIN, -1.9, 5.0, False, SpamCategory.HAM),
    )
    forged_only = parse(
        b"Received: from a by b; Sun, 6 Dec 2026 03:41:22 +0000\n"
        b"X-Spam-Status: Yes, score=99.0 required=5.0 tests=FORGED\n"
        b"From: x@example.com\n\nbody\n"
    )
    assert read_spam_verdicts(forged_only, trusted_auth_results=0) == ()


def test_fields_appended_below_the_probe_field_are_the_receivers() -> None:
    # rspamd through Postfix appends below everything it received, the probe field included.
    message = with_fields_after("mailsystem-rspamd-ham.eml", "Date:", PROBE_FIELD)
    assert read_spam_verdicts(message, trusted_auth_results=1) == (
        SpamVerdict(SpamSource.RSPAMD, 2.0, 50.0, False, SpamCategory.HAM),
    )


def test_without_a_probe_field_appended_fields_are_not_trusted() -> None:
    # Nothing marks where the sent message ended, so nothing below it can be told apart.
    assert read_spam_verdicts(sample("mailsystem-rspamd-ham.eml"), trusted_auth_results=1) == ()


def test_the_receivers_instance_wins_over_a_sending_relays_appended_one() -> None:
    # Both appended below the probe field: the receiver appends after the sending relay did.
    message = parse(
        b"Received: from mx by inbox; Sun, 6 Dec 2026 03:41:22 +0000\n"
        b"From: x@example.com\n" + PROBE_FIELD.encode() + b"\n"
        b"X-Spam-Status: Yes, score=30.00\n"
        b"X-Spam-Status: No, score=1.00\n\nbody\n"
    )
    assert read_spam_verdicts(message, trusted_auth_results=0) == (
        SpamVerdict(SpamSource.RSPAMD, 1.0, None, False, SpamCategory.HAM),
    )


# --- hostile or odd values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        [("X-Spamd-Result", "default: maybe [x / y]")],
        [("X-Spam-Status", "perhaps")],
        [("X-Spam-Score", "*****")],
        [("X-Forefront-Antispam-Report", "garbage without pairs")],
        [("X-Spam-Status", "Yes, score=1.0 " + "x" * 20000)],  # over the size bound: not read
    ],
)
def test_unreadable_values_give_no_verdict(fields: list[tuple[str, str]]) -> None:
    assert verdicts_of_fields(fields) == ()


def test_microsoft_categories_fold_into_the_bounded_set() -> None:
    def category(cat: str) -> SpamCategory:
        (verdict,) = verdicts_of_fields([("X-Forefront-Antispam-Report", f"SCL:9;CAT:{cat};")])
        return verdict.category

    assert category("HPHSH") is SpamCategory.PHISH
    assert category("BULK") is SpamCategory.BULK
    assert category("UIMP") is SpamCategory.IMPERSONATION
    assert category("SOMETHINGNEW") is SpamCategory.OTHER
