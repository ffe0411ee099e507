"""Probe ids, their signatures and the probe email, without sockets."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes, policy
from email.utils import format_datetime, parsedate_to_datetime

import pytest

from agent.probing.probe_message import build_probe_message, probe_message_bytes
from agent.reading.probe_token import (
    PROBE_HEADER,
    ProbeToken,
    format_probe_header,
    is_probe_id,
    new_probe_id,
    parse_probe_header,
    probe_id_time,
    sign_probe_id,
    verify_probe_token,
)

SECRET = b"test-secret-0123456789abcdef"
PROBE_ID = "01hzjb7m8k0000000000000000"
SENT_AT = datetime(2024, 6, 4, 10, 4, 3, tzinfo=UTC)


def _build(**overrides: object) -> bytes:
    options: dict[str, object] = {
        "probe_id": PROBE_ID,
        "secret": SECRET,
        "header_from": "Probe <probe@sender.test>",
        "to": "seed@seed.test",
        "route": "primary-relay",
        "mailbox": "gmail-seed-1",
        "sent_at": SENT_AT,
    }
    options.update(overrides)
    return build_probe_message(**options).as_bytes()  # type: ignore[arg-type]


def test_probe_id_is_26_lowercase_base32_characters_safe_in_urls_and_dns_labels() -> None:
    probe_id = new_probe_id()
    assert re.fullmatch(r"[0-9a-z]{26}", probe_id)
    assert is_probe_id(probe_id)
    assert not set(probe_id) & set("ilou")  # Crockford's alphabet leaves out look-alikes


def test_probe_ids_are_unique() -> None:
    assert len({new_probe_id(now_ms=1_717_495_445_000) for _ in range(2000)}) == 2000


def test_probe_ids_sort_by_creation_time_and_carry_it() -> None:
    times = [0, 1, 999, 1_000, 1_717_495_445_123, 1_717_495_445_124, (1 << 48) - 1]
    ids = [new_probe_id(now_ms=ms) for ms in times]
    assert ids == sorted(ids)
    assert [round(probe_id_time(probe_id) * 1000) for probe_id in ids] == times


def test_new_probe_id_defaults_to_the_current_time() -> None:
    before = datetime.now(UTC).timestamp()
    created = probe_id_time(new_probe_id())
    after = datetime.now(UTC).timestamp()
    assert before - 0.001 <= created <= after


def test_new_probe_id_rejects_timestamps_that_do_not_fit_48_bits() -> None:
    with pytest.raises(ValueError):
        new_probe_id(now_ms=1 << 48)
    with pytest.raises(ValueError):
        new_probe_id(now_ms=-1)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "01hzjb7m8k000000000000000",
        "01hzjb7m8k00000000000000000",
        "01HZJB7M8K0000000000000000",
        "81hzjb7m8k0000000000000000",
        "01hzjb7m8k000000000000000u",
        "01hzjb7m8k00000000000000\n0",
    ],
)
def test_is_probe_id_rejects_anything_but_the_exact_shape(text: str) -> None:
    assert not is_probe_id(text)


def test_signature_matches_the_known_answer_so_ids_in_flight_survive_upgrades() -> None:
    assert sign_probe_id(PROBE_ID, SECRET) == "0me2zn2gw8mk5nnq3w80nv6kwm"


def test_signature_verifies_only_with_the_same_id_and_secret() -> None:
    signature = sign_probe_id(PROBE_ID, SECRET)
    other_id = new_probe_id()
    assert verify_probe_token(PROBE_ID, signature, SECRET)
    assert not verify_probe_token(PROBE_ID, signature, SECRET + b"x")
    assert not verify_probe_token(other_id, signature, SECRET)
    assert verify_probe_token(other_id, sign_probe_id(other_id, SECRET), SECRET)


def test_a_signature_with_any_character_changed_does_not_verify() -> None:
    signature = sign_probe_id(PROBE_ID, SECRET)
    for index in range(len(signature)):
        replacement = "1" if signature[index] != "1" else "2"
        tampered = signature[:index] + replacement + signature[index + 1 :]
        assert not verify_probe_token(PROBE_ID, tampered, SECRET), index


@pytest.mark.parametrize(
    "signature",
    ["", "0me2zn2gw8mk5nnq3w80nv6kw", "0ME2ZN2GW8MK5NNQ3W80NV6KWM", "x" * 26, "0" * 100],
)
def test_malformed_signatures_do_not_verify(signature: str) -> None:
    assert not verify_probe_token(PROBE_ID, signature, SECRET)


def test_signing_refuses_an_empty_secret_and_a_malformed_id() -> None:
    with pytest.raises(ValueError):
        sign_probe_id(PROBE_ID, b"")
    with pytest.raises(ValueError):
        verify_probe_token(PROBE_ID, "0me2zn2gw8mk5nnq3w80nv6kwm", b"")
    with pytest.raises(ValueError):
        sign_probe_id("not-a-probe-id", SECRET)


def test_probe_header_round_trips_and_tolerates_folding_whitespace() -> None:
    signature = sign_probe_id(PROBE_ID, SECRET)
    token = ProbeToken(PROBE_ID, signature)
    assert parse_probe_header(format_probe_header(PROBE_ID, signature)) == token
    assert parse_probe_header(f"\r\n id={PROBE_ID};\r\n\tsig={signature};") == token


@pytest.mark.parametrize(
    "value",
    [
        "",
        f"id={PROBE_ID}",
        f"id={PROBE_ID}; sig=",
        f"sig=0me2zn2gw8mk5nnq3w80nv6kwm; id={PROBE_ID}",
        f"id={PROBE_ID}; sig=0me2zn2gw8mk5nnq3w80nv6kwm; id=01hzjb7m8k1111111111111111",
        f"id={PROBE_ID}; sig=0me2zn2gw8mk5nnq3w80nv6kwm; x=1",
        f"id={PROBE_ID}; sig=0me2zn2gw8mk5nnq3w80nv6kwm\nX-Injected: 1",
    ],
)
def test_probe_header_parsing_rejects_anything_but_id_then_sig(value: str) -> None:
    assert parse_probe_header(value) is None


def test_probe_message_carries_the_id_in_subject_message_id_and_signed_header() -> None:
    message = message_from_bytes(_build(), policy=policy.default)
    signature = sign_probe_id(PROBE_ID, SECRET)
    assert message["Subject"] == f"Deliverability probe {PROBE_ID}"
    # Stripped: a Message-ID this long is folded onto its own line, which is legal.
    assert str(message["Message-ID"]).strip() == f"<{PROBE_ID}.{signature}@sender.test>"
    token = parse_probe_header(str(message[PROBE_HEADER]))
    assert token == ProbeToken(PROBE_ID, signature)
    assert verify_probe_token(token.probe_id, token.signature, SECRET)
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["From"] == "Probe <probe@sender.test>"
    assert message["To"] == "seed@seed.test"
    assert parsedate_to_datetime(str(message["Date"])) == SENT_AT
    assert message["Date"] == format_datetime(SENT_AT)


def test_probe_message_date_keeps_the_given_time_zone() -> None:
    sent_at = datetime(2024, 6, 4, 12, 4, 3, tzinfo=timezone(timedelta(hours=2)))
    message = message_from_bytes(_build(sent_at=sent_at), policy=policy.default)
    assert str(message["Date"]).endswith("+0200")
    assert parsedate_to_datetime(str(message["Date"])) == SENT_AT


def test_probe_body_is_short_plain_7bit_text_that_explains_itself() -> None:
    message = message_from_bytes(_build(), policy=policy.default)
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message["Content-Transfer-Encoding"] == "7bit"
    body = message.get_content()
    assert "deliverability probe" in body
    assert "can be ignored" in body
    assert PROBE_ID in body
    assert "Route: primary-relay" in body
    assert "Mailbox: gmail-seed-1" in body
    assert len(body) < 1000


def test_route_and_mailbox_names_appear_only_in_the_body() -> None:
    raw = _build()
    head, _, body = raw.partition(b"\n\n")
    assert b"primary-relay" not in head and b"gmail-seed-1" not in head
    assert b"primary-relay" in body and b"gmail-seed-1" in body


def test_non_ascii_names_are_sent_as_quoted_printable_utf8_never_raw_8bit() -> None:
    raw = _build(route="relais-über", mailbox="boîte")
    assert raw.isascii()
    message = message_from_bytes(raw, policy=policy.default)
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Route: relais-über" in message.get_content()
    assert "Mailbox: boîte" in message.get_content()


def test_message_id_domain_of_an_internationalised_from_is_ascii() -> None:
    raw = _build(header_from="probe@bücher.test")
    message = message_from_bytes(raw, policy=policy.default)
    assert str(message["Message-ID"]).strip().endswith("@xn--bcher-kva.test>")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("to", "seed@seed.test\r\nBcc: victim@else.test"),
        ("to", "seed@seed.test, other@seed.test"),
        ("to", "not an address"),
        ("to", "seed@"),
        ("to", ""),
        ("header_from", "probe@sender.test\nX-Evil: 1"),
        ("header_from", "Probe <probe@sender.test"),
        ("route", "primary\r\nX-Evil: 1"),
        ("route", ""),
        ("mailbox", "m" * 201),
        ("probe_id", "not-a-probe-id"),
        ("secret", b""),
        ("sent_at", datetime(2024, 6, 4, 10, 4, 3)),
    ],
)
def test_build_probe_message_rejects_bad_arguments(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        _build(**{field: value})


@pytest.mark.parametrize(
    ("header_from", "to", "route", "mailbox"),
    [
        ("Probe <probe@sender.test>", "seed@seed.test", "primary-relay", "gmail-seed-1"),
        ("probe@bücher.test", "Seed Box <seed@seed.test>", "relais-über", "boîte"),
        (
            "A Very Long Display Name That Makes The From Header Fold <probe@sender.test>",
            "a-rather-long-seed-address-for-folding@a-long-subdomain.seed.test",
            "r" * 200,
            "m" * 200,
        ),
        ('"Müller, Jörg" <probe@sender.test>', "seed@seed.test", "route 1", "mailbox 1"),
    ],
)
def test_probe_message_bytes_are_the_built_message_as_smtp_sends_it(
    header_from: str, to: str, route: str, mailbox: str
) -> None:
    zones = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9, minutes=-30))]
    instants = [SENT_AT, datetime(2031, 12, 31, 23, 59, 59, tzinfo=UTC)]
    for (instant, zone), _ in itertools.product(itertools.product(instants, zones), range(3)):
        options: dict[str, object] = {
            "probe_id": new_probe_id(),
            "secret": SECRET,
            "header_from": header_from,
            "to": to,
            "route": route,
            "mailbox": mailbox,
            "sent_at": instant.astimezone(zone),
        }
        built = build_probe_message(**options).as_bytes(policy=policy.SMTP)  # type: ignore[arg-type]
        assert probe_message_bytes(**options) == built  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "route",
    ["7zzzzzzzzzzzzzzzzzzzzzzzzz", "7yyyyyyyyyyyyyyyyyyyyyyyyy", "Fri, 31 Dec 1999 23:59:59 +0000"],
)
def test_probe_message_bytes_keep_a_name_that_looks_like_a_placeholder(route: str) -> None:
    options: dict[str, object] = {
        "probe_id": PROBE_ID,
        "secret": SECRET,
        "header_from": "probe@sender.test",
        "to": "seed@seed.test",
        "route": route,
        "mailbox": "seed",
        "sent_at": SENT_AT,
    }
    built = build_probe_message(**options).as_bytes(policy=policy.SMTP)  # type: ignore[arg-type]
    assert probe_message_bytes(**options) == built  # type: ignore[arg-type]
    assert f"Route: {route}".encode() in built


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("to", "seed@seed.test\r\nBcc: victim@else.test"),
        ("header_from", "probe@sender.test\nX-Evil: 1"),
        ("route", ""),
        ("probe_id", "not-a-probe-id"),
        ("secret", b""),
        ("sent_at", datetime(2024, 6, 4, 10, 4, 3)),
    ],
)
def test_probe_message_bytes_reject_bad_arguments_like_the_builder(
    field: str, value: object
) -> None:
    options: dict[str, object] = {
        "probe_id": PROBE_ID,
        "secret": SECRET,
        "header_from": "Probe <probe@sender.test>",
        "to": "seed@seed.test",
        "route": "primary-relay",
        "mailbox": "gmail-seed-1",
        "sent_at": SENT_AT,
    }
    options[field] = value
    with pytest.raises(ValueError):
        probe_message_bytes(**options)  # type: ignore[arg-type]
