"""The probe email: what the SMTP sender hands to a route for one probe.

Route and mailbox names are only in the body: headers stay as plain as an ordinary message's, so
they neither leak our configuration into header-based filters nor differ between routes. The probe
id and its signature travel in the `X-Deliverability-Probe` header, the Message-ID and the Subject
(`agent.reading.probe_token` says why).

The prober sends `probe_message_bytes`: the stdlib's header registry costs about a millisecond per
message, so the message of each (From, To, route, mailbox) is built once with placeholders of the
exact length and alphabet of a probe id, its signature and a date, and each probe fills them in.
The bytes are those `build_probe_message(...).as_bytes(policy=email.policy.SMTP)` gives
(tests/test_probe_message.py proves it for plain and non-ASCII names).
"""

from __future__ import annotations

import email.policy
import functools
import json
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from agent.model import EspKind
from agent.reading.probe_token import (
    PROBE_HEADER,
    SUBJECT_PREFIX,
    format_probe_header,
    sign_probe_id,
)

__all__ = ["build_probe_message", "esp_metadata_headers", "probe_message_bytes"]


def esp_metadata_headers(kind: EspKind, key: str, probe_id: str) -> dict[str, str]:
    """The header that makes the ESP repeat the probe id in its events, under `key`: SendGrid's
    X-SMTPAPI unique_args, Mailgun's X-Mailgun-Variables, SES message tags (events published
    through a configuration set carry them), Postmark's X-PM-Metadata-<key>. The generic form
    reads the probe header every probe has. ESPs strip these headers before delivery."""
    match kind:
        case EspKind.SENDGRID:
            return {"X-SMTPAPI": json.dumps({"unique_args": {key: probe_id}})}
        case EspKind.MAILGUN:
            return {"X-Mailgun-Variables": json.dumps({key: probe_id})}
        case EspKind.SES:
            return {"X-SES-MESSAGE-TAGS": f"{key}={probe_id}"}
        case EspKind.POSTMARK:
            return {f"X-PM-Metadata-{key}": probe_id}
        case EspKind.GENERIC:
            return {}


# Placeholders shaped like what they stand for (same length, same characters: the stdlib folds
# and encodes them exactly as it would the real values) and found nowhere else in a message.
_ID_SLOT = b"7zzzzzzzzzzzzzzzzzzzzzzzzz"
_SIGNATURE_SLOT = b"7yyyyyyyyyyyyyyyyyyyyyyyyy"
_DATE_SLOT_TEXT = format_datetime(datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)).encode()
# Message templates kept: one per pair (~0.9 KB each), up to well past 10,000 pairs.
_TEMPLATES = 16384


def _single_address(value: str, what: str) -> Address:
    """The one address in `value` ("a@b.example" or "Name <a@b.example>"), or ValueError."""
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError(f"{what} must not contain control characters")
    try:
        header = email.policy.default.header_factory("From", value)
    except Exception as exc:  # the stdlib header parser has raised IndexError on odd input
        raise ValueError(f"{what} is not a single email address") from exc
    addresses: tuple[Address, ...] = getattr(header, "addresses", ())
    if header.defects or len(addresses) != 1:
        raise ValueError(f"{what} is not a single email address")
    address: Address = addresses[0]
    if not address.username or not address.domain:
        raise ValueError(f"{what} is not a single email address")
    return address


def _ascii_domain(domain: str) -> str:
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError("the From domain cannot be written in ASCII") from exc


def _check_name(value: str, what: str) -> None:
    if not 0 < len(value) <= 200 or any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError(f"{what} must be 1 to 200 characters, without control characters")


def build_probe_message(
    *,
    probe_id: str,
    secret: bytes,
    header_from: str,
    to: str,
    route: str,
    mailbox: str,
    sent_at: datetime,
    extra_headers: dict[str, str] | None = None,
) -> EmailMessage:
    """The probe email for `probe_id`, signed with `secret`, ready for the SMTP sender."""
    _check_time(sent_at)
    signature = sign_probe_id(probe_id, secret)
    return _compose(
        probe_id=probe_id,
        signature=signature,
        date=format_datetime(sent_at),
        header_from=header_from,
        to=to,
        route=route,
        mailbox=mailbox,
        extra_headers=extra_headers,
    )


def probe_message_bytes(
    *,
    probe_id: str,
    secret: bytes,
    header_from: str,
    to: str,
    route: str,
    mailbox: str,
    sent_at: datetime,
) -> bytes:
    """`build_probe_message(...)` as the SMTP sender sends it (CRLF line ends), from a template
    made once per (From, To, route, mailbox)."""
    _check_time(sent_at)
    signature = sign_probe_id(probe_id, secret)  # also checks the id's shape
    template = _template(header_from, to, route, mailbox)
    if template is None:  # a name holds a placeholder's text: built the slow way
        return _compose(
            probe_id=probe_id,
            signature=signature,
            date=format_datetime(sent_at),
            header_from=header_from,
            to=to,
            route=route,
            mailbox=mailbox,
        ).as_bytes(policy=email.policy.SMTP)
    # Each placeholder's text is found nowhere else in the template (checked when it is made).
    return (
        template.replace(_ID_SLOT, probe_id.encode("ascii"))
        .replace(_SIGNATURE_SLOT, signature.encode("ascii"))
        .replace(_DATE_SLOT_TEXT, format_datetime(sent_at).encode("ascii"))
    )


@functools.lru_cache(maxsize=_TEMPLATES)
def _template(header_from: str, to: str, route: str, mailbox: str) -> bytes | None:
    """The pair's message as sent, with placeholders for the id, the signature and the date;
    None when a name holds a placeholder's text (filling it would change the name too)."""
    message = _compose(
        probe_id=_ID_SLOT.decode(),
        signature=_SIGNATURE_SLOT.decode(),
        date=_DATE_SLOT_TEXT.decode(),
        header_from=header_from,
        to=to,
        route=route,
        mailbox=mailbox,
    )
    template = message.as_bytes(policy=email.policy.SMTP)
    # Subject, Message-ID, probe header and body carry the id; Message-ID and the probe header
    # the signature; Date the date. A name holding a placeholder's text would be filled too.
    expected = {_ID_SLOT: 4, _SIGNATURE_SLOT: 2, _DATE_SLOT_TEXT: 1}
    if any(template.count(slot) != count for slot, count in expected.items()):
        return None
    return template


def _check_time(sent_at: datetime) -> None:
    if sent_at.tzinfo is None or sent_at.utcoffset() is None:
        raise ValueError("sent_at must be timezone-aware")


def _compose(
    *,
    probe_id: str,
    signature: str,
    date: str,
    header_from: str,
    to: str,
    route: str,
    mailbox: str,
    extra_headers: dict[str, str] | None = None,
) -> EmailMessage:
    _check_name(route, "route")
    _check_name(mailbox, "mailbox")
    from_address = _single_address(header_from, "header_from")
    _single_address(to, "to")

    message = EmailMessage()
    message["From"] = header_from
    message["To"] = to
    message["Subject"] = f"{SUBJECT_PREFIX} {probe_id}"
    message["Date"] = date
    message["Message-ID"] = f"<{probe_id}.{signature}@{_ascii_domain(from_address.domain)}>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: well-behaved responders stay quiet
    message["X-Auto-Response-Suppress"] = "All"  # the Exchange equivalent
    message[PROBE_HEADER] = format_probe_header(probe_id, signature)
    for name, value in (extra_headers or {}).items():
        message[name] = value
    body = (
        "This is an automated email deliverability probe.\n"
        "\n"
        "It was sent to check that mail from this sender reaches this mailbox and\n"
        "where it is filed. It needs no action and can be ignored or deleted.\n"
        "\n"
        f"Probe: {probe_id}\n"
        f"Route: {route}\n"
        f"Mailbox: {mailbox}\n"
    )
    # 7bit when ASCII, else quoted-printable; never raw 8bit (which the default policy would pick).
    cte = "7bit" if body.isascii() else "quoted-printable"
    message.set_content(body, charset="utf-8", cte=cte)
    return message
