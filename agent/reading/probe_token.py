"""Probe identity and the probe message: ids, their signatures, and the email that carries them.

A probe id is a ULID-like string: 48 bits of milliseconds since the epoch then 80 random bits, in
Crockford base32 (lowercase), so ids sort by creation time and are safe in URLs, DNS labels, Subject
lines and Message-ID local parts. The signature is a truncated HMAC-SHA256 of the id under the
agent's secret; only a message whose probe header carries a valid signature counts as a probe, so
nobody without the secret can make a seed mailbox report a placement.

The id travels three ways so it survives whatever a mail system keeps: the `X-Deliverability-Probe`
header (authoritative, signed), the Message-ID (`<id.sig@from-domain>`, what bounces and replies
quote in In-Reply-To/References) and the Subject (what humans and auto-replies quote). Route and
mailbox names are only in the body: headers stay as plain as an ordinary message's, so they neither
leak our configuration into header-based filters nor differ between routes.
"""

from __future__ import annotations

import email.policy
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

__all__ = [
    "PROBE_HEADER",
    "PROBE_ID_PATTERN",
    "SIGNATURE_PATTERN",
    "SUBJECT_PREFIX",
    "ProbeToken",
    "build_probe_message",
    "format_probe_header",
    "is_probe_id",
    "new_probe_id",
    "parse_probe_header",
    "probe_id_time",
    "sign_probe_id",
    "verify_probe_token",
]

PROBE_HEADER = "X-Deliverability-Probe"
SUBJECT_PREFIX = "Deliverability probe"

# Crockford's base32: digits sort before letters in ASCII, so the text sorts like the number.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_ID_CHARS = 26  # 128 bits in 5-bit digits; the first digit holds only 3 bits
_SIG_BYTES = 16  # 128-bit truncated HMAC (NIST SP 800-107 allows truncation to >= 64 bits)
_SIG_CHARS = 26

PROBE_ID_PATTERN = r"[0-7][0-9a-hjkmnp-tv-z]{25}"
SIGNATURE_PATTERN = r"[0-7][0-9a-hjkmnp-tv-z]{25}"
_PROBE_ID_RE = re.compile(PROBE_ID_PATTERN)
_SIGNATURE_RE = re.compile(SIGNATURE_PATTERN)

# Domain separation: the same secret may one day sign other things.
_SIGNING_CONTEXT = b"deliverability-probe-id/v1\x00"

# `id=<id>; sig=<sig>`, each key exactly once; whitespace around separators tolerated.
_HEADER_RE = re.compile(
    rf"\s*id\s*=\s*(?P<id>{PROBE_ID_PATTERN})\s*;\s*sig\s*=\s*(?P<sig>{SIGNATURE_PATTERN})\s*;?\s*"
)


@dataclass(frozen=True, slots=True)
class ProbeToken:
    """The id and signature read from a probe header; not yet verified."""

    probe_id: str
    signature: str


def _encode(value: int, chars: int) -> str:
    digits = []
    for _ in range(chars):
        digits.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(digits))


def _decode(text: str) -> int:
    value = 0
    for char in text:
        value = (value << 5) | _ALPHABET.index(char)
    return value


def new_probe_id(*, now_ms: int | None = None) -> str:
    """A fresh probe id: 48-bit ms timestamp + 80 random bits, 26 lowercase base32 characters."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if not 0 <= ms < 1 << 48:
        raise ValueError("timestamp out of range for a probe id")
    return _encode((ms << 80) | secrets.randbits(80), _ID_CHARS)


def is_probe_id(text: str) -> bool:
    """Whether `text` has the exact shape of a probe id."""
    return _PROBE_ID_RE.fullmatch(text) is not None


def probe_id_time(probe_id: str) -> float:
    """The creation time (epoch seconds) encoded in a probe id."""
    if not is_probe_id(probe_id):
        raise ValueError("not a probe id")
    return (_decode(probe_id) >> 80) / 1000.0


def _mac(probe_id: str, secret: bytes) -> bytes:
    if not secret:
        raise ValueError("the probe signing secret must not be empty")
    digest = hmac.new(secret, _SIGNING_CONTEXT + probe_id.encode("ascii"), hashlib.sha256)
    return digest.digest()[:_SIG_BYTES]


def sign_probe_id(probe_id: str, secret: bytes) -> str:
    """The signature of `probe_id`: HMAC-SHA256 truncated to 128 bits, 26 base32 characters."""
    if not is_probe_id(probe_id):
        raise ValueError("not a probe id")
    return _encode(int.from_bytes(_mac(probe_id, secret), "big"), _SIG_CHARS)


def verify_probe_token(probe_id: str, signature: str, secret: bytes) -> bool:
    """Whether `signature` is the valid signature of `probe_id`; compares in constant time."""
    if not is_probe_id(probe_id) or _SIGNATURE_RE.fullmatch(signature) is None:
        return False
    expected = _encode(int.from_bytes(_mac(probe_id, secret), "big"), _SIG_CHARS)
    return hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii"))


def format_probe_header(probe_id: str, signature: str) -> str:
    """The value of the probe header."""
    return f"id={probe_id}; sig={signature}"


def parse_probe_header(value: str) -> ProbeToken | None:
    """Read a probe header value; None when it is not exactly `id=<id>; sig=<sig>`."""
    match = _HEADER_RE.fullmatch(value)
    if match is None:
        return None
    return ProbeToken(probe_id=match["id"], signature=match["sig"])


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
) -> EmailMessage:
    """The probe email for `probe_id`, signed with `secret`, ready for the SMTP sender."""
    if sent_at.tzinfo is None or sent_at.utcoffset() is None:
        raise ValueError("sent_at must be timezone-aware")
    _check_name(route, "route")
    _check_name(mailbox, "mailbox")
    from_address = _single_address(header_from, "header_from")
    _single_address(to, "to")
    signature = sign_probe_id(probe_id, secret)

    message = EmailMessage()
    message["From"] = header_from
    message["To"] = to
    message["Subject"] = f"{SUBJECT_PREFIX} {probe_id}"
    message["Date"] = format_datetime(sent_at)
    message["Message-ID"] = f"<{probe_id}.{signature}@{_ascii_domain(from_address.domain)}>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: well-behaved responders stay quiet
    message["X-Auto-Response-Suppress"] = "All"  # the Exchange equivalent
    message[PROBE_HEADER] = format_probe_header(probe_id, signature)
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
