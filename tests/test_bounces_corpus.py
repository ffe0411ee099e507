"""Reading real bounces and look-alikes (tests/corpus/bounces): kind and every field, by the same
manifest the `inspect` command is checked against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.model import BounceReason
from agent.reading.bounces import BounceFields, BounceKind, read_bounce_fields

CORPUS = Path(__file__).parent / "corpus" / "bounces"
SAMPLES: list[dict[str, Any]] = yaml.safe_load((CORPUS / "manifest.yaml").read_text())["samples"]
MANIFEST_KEYS = {"file", "source", "licence", "changes", "expected"}
BOUNCE_KEYS = [
    "type",
    "status",
    "smtp_code",
    "recipient",
    "recipient_invalid",
    "action",
    "reporting_mta",
    "original_message_id",
]


def _raw(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def _as_manifest(fields: BounceFields | None) -> dict[str, object] | None:
    if fields is None:
        return None
    return {
        "type": fields.bounce_type.value,
        "status": fields.status,
        "smtp_code": fields.smtp_code,
        "recipient": fields.recipient,
        "recipient_invalid": fields.recipient_invalid,
        "action": fields.action,
        "reporting_mta": fields.reporting_mta,
        "original_message_id": fields.original_message_id,
    }


@pytest.mark.parametrize("sample", SAMPLES, ids=[s["file"] for s in SAMPLES])
def test_every_corpus_sample_reads_as_its_manifest_says(sample: dict[str, Any]) -> None:
    reading = read_bounce_fields(_raw(sample["file"]))
    expected = sample["expected"]
    assert {"kind": reading.kind.value, "bounce": _as_manifest(reading.bounce)} == expected


def test_the_manifest_names_every_file_once_with_its_source_licence_and_changes() -> None:
    files = [s["file"] for s in SAMPLES]
    assert sorted(files) == sorted(p.name for p in CORPUS.glob("*.eml"))
    assert len(set(files)) == len(files)
    for sample in SAMPLES:
        assert set(sample) == MANIFEST_KEYS, sample["file"]
        assert sample["source"].startswith("https://"), sample["file"]
        assert sample["licence"] and sample["changes"], sample["file"]
        bounce = sample["expected"]["bounce"]
        assert bounce is None or list(bounce) == BOUNCE_KEYS, sample["file"]


def test_the_corpus_covers_every_class_with_at_least_thirty_samples() -> None:
    kinds = [s["expected"]["kind"] for s in SAMPLES]
    assert len(kinds) >= 30
    assert {k: kinds.count(k) for k in set(kinds)} == {"bounce": 29, "auto_reply": 6, "other": 3}


# The reason class behind the bounded `reason` label, per sample (not part of the shared manifest).
REASONS = {
    "sisimai-lhost-postfix-33.eml": BounceReason.RECIPIENT_INVALID,  # 5.1.1
    "sisimai-lhost-postfix-35.eml": BounceReason.RECIPIENT_INVALID,  # 5.0.0 "User unknown"
    "sisimai-lhost-postfix-06.eml": BounceReason.RECIPIENT_INVALID,  # domain name not found
    "sisimai-lhost-exchange2003-01.eml": BounceReason.RECIPIENT_INVALID,  # words, no code
    "sisimai-lhost-postfix-63.eml": BounceReason.MAILBOX_FULL,  # 5.2.2
    "sisimai-lhost-gmail-06.eml": BounceReason.MAILBOX_FULL,  # 4.2.2, a delay
    "sisimai-lhost-qmail-08.eml": BounceReason.MAILBOX_FULL,  # "disk quota exceeded"
    "sisimai-lhost-exim-07.eml": BounceReason.MAILBOX_FULL,  # "mailbox is full", no code
    "sisimai-lhost-biglobe-01.eml": BounceReason.MAILBOX_FULL,  # "exceeded the local limit"
    "sisimai-lhost-postfix-54.eml": BounceReason.POLICY,  # 5.7.1
    "sisimai-lhost-postfix-70.eml": BounceReason.POLICY,  # Gmail 5.7.26
    "sisimai-lhost-gmail-04.eml": BounceReason.POLICY,  # 5.7.1 DNSBL
    "sisimai-lhost-exim-01.eml": BounceReason.POLICY,  # 5.7.0
    "sisimai-lhost-postfix-09.eml": BounceReason.OTHER,  # 4.3.2 rate limit
}


@pytest.mark.parametrize(("name", "reason"), REASONS.items(), ids=REASONS.keys())
def test_invalid_recipient_policy_block_and_full_mailbox_are_told_apart(
    name: str, reason: BounceReason
) -> None:
    bounce = read_bounce_fields(_raw(name)).bounce
    assert bounce is not None and bounce.reason is reason


@pytest.mark.parametrize(
    ("name", "recipient", "status", "reason"),
    [
        ("sisimai-lhost-postfix-13.eml", "noraneko@example.jp", "5.2.2", BounceReason.MAILBOX_FULL),
        (
            "sisimai-lhost-outlook-04.eml",
            "MIKENEKO@example.co.jp",
            "5.2.2",
            BounceReason.MAILBOX_FULL,
        ),
        (
            "sisimai-lhost-sendmail-02.eml",
            "filtered@example.com",
            "5.2.1",
            BounceReason.RECIPIENT_INVALID,
        ),
    ],
)
def test_a_dsn_about_several_recipients_gives_the_asked_recipients_block(
    name: str, recipient: str, status: str, reason: BounceReason
) -> None:
    reading = read_bounce_fields(_raw(name), recipient=recipient)
    assert reading.bounce is not None
    assert (reading.bounce.recipient, reading.bounce.status, reading.bounce.reason) == (
        recipient.lower(),
        status,
        reason,
    )
    assert len(reading.blocks) == 2


def test_a_text_bounce_that_names_no_recipient_is_still_read() -> None:
    # The real Exim "mailbox is full" bounce without its X-Failed-Recipients header: its text
    # names no address ("save to xxxx"), yet it is a failure and says why.
    raw = _raw("sisimai-lhost-exim-07.eml").replace(
        b"X-Failed-Recipients: shiba@example.com\n", b""
    )
    reading = read_bounce_fields(raw)
    assert reading.kind is BounceKind.BOUNCE and reading.bounce is not None
    assert reading.bounce.recipient is None
    assert reading.bounce.reason is BounceReason.MAILBOX_FULL


def test_an_auto_reply_with_an_empty_return_path_is_not_a_bounce() -> None:
    # Exchange sends automatic replies from <>, as bounces are; the subject says what it is.
    raw = _raw("sisimai-rfc3834-02.eml")
    assert b"Return-path: <>" in raw
    assert read_bounce_fields(raw).kind is BounceKind.AUTO_REPLY


def test_a_forwarded_bounce_is_not_a_bounce_though_the_bounce_inside_is() -> None:
    assert read_bounce_fields(_raw("forwarded-postfix-33-as-attachment.eml")).bounce is None
    assert read_bounce_fields(_raw("sisimai-lhost-postfix-33.eml")).kind is BounceKind.BOUNCE
