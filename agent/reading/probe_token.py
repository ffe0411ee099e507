"""Probe identity: ids, their signatures, and the key ring that signs and verifies them.

A probe id is a ULID-like string: 48 bits of milliseconds since the epoch then 80 random bits, in
Crockford base32 (lowercase), so ids sort by creation time and are safe in URLs, DNS labels, Subject
lines and Message-ID local parts. The signature is a truncated HMAC-SHA256 of the id under the
agent's secret; only a message whose probe header carries a valid signature counts as a probe, so
nobody without the secret can make a seed mailbox report a placement.

The id travels three ways so it survives whatever a mail system keeps: the `X-Deliverability-Probe`
header (authoritative, signed), the Message-ID (`<id.sig@from-domain>`, what bounces and replies
quote in In-Reply-To/References) and the Subject (what humans and auto-replies quote); the message
itself is built by `agent.probing.probe_message`.

Bounces need a proof of their own: a receiver may return the headers of a probe, or nothing at
all, so the envelope sender of a probe (VERP, `bounces+<id>-<tag>@domain`) carries a second MAC of
the id under a separate context. The tag is not in the Message-ID, the Subject or on the status
page, so knowing a probe id is not enough to bounce it.

A `KeyRing` holds the secret that signs new probes and the few earlier ones (a reloaded config with
a new secret) that still verify probes in flight, so a reader verifies a token against every key in
one pass instead of reading a message once per secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "PROBE_HEADER",
    "PROBE_ID_PATTERN",
    "SIGNATURE_PATTERN",
    "SUBJECT_PREFIX",
    "VERP_LOCAL_PART_MAX",
    "VERP_PATTERN",
    "KeyRing",
    "ProbeToken",
    "format_probe_header",
    "is_probe_id",
    "new_probe_id",
    "parse_probe_header",
    "probe_id_time",
    "sign_probe_id",
    "verify_probe_token",
    "verp_address",
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

# Domain separation: the same secret signs probe ids and VERP tags, and neither may stand in for
# the other (the probe signature is public in every delivered probe's Message-ID).
_SIGNING_CONTEXT = b"deliverability-probe-id/v1\x00"
_VERP_CONTEXT = b"deliverability-probe-verp/v1\x00"
# 64 bits keeps the VERP local part within RFC 5321's 64 octets (user + 41); a forger gets one guess
# per bounce sent, so 2^64 is out of reach.
_VERP_TAG_BYTES = 8
_VERP_TAG_CHARS = 13
_VERP_TAG_PATTERN = r"[0-9a-hjkmnp-tv-z]{13}"
# RFC 5321's 64-octet local part, less `+<id>-<tag>`.
VERP_LOCAL_PART_MAX = 64 - (2 + _ID_CHARS + _VERP_TAG_CHARS)
# `+<id>-<tag>@`: what a bounce's envelope recipient carries, case-insensitively.
VERP_PATTERN = rf"\+({PROBE_ID_PATTERN})-({_VERP_TAG_PATTERN})@"

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


def _mac(probe_id: str, secret: bytes, context: bytes = _SIGNING_CONTEXT) -> bytes:
    if not secret:
        raise ValueError("the probe signing secret must not be empty")
    digest = hmac.new(secret, context + probe_id.encode("ascii"), hashlib.sha256)
    return digest.digest()


def _verp_tag(probe_id: str, secret: bytes) -> str:
    tag = _mac(probe_id, secret, _VERP_CONTEXT)[:_VERP_TAG_BYTES]
    return _encode(int.from_bytes(tag, "big"), _VERP_TAG_CHARS)


def verp_address(address: str, probe_id: str, secret: bytes) -> str:
    """`address` with the probe's VERP extension: `local+<id>-<tag>@domain`."""
    if not is_probe_id(probe_id):
        raise ValueError("not a probe id")
    local, domain = address.rsplit("@", 1)
    return f"{local}+{probe_id}-{_verp_tag(probe_id, secret)}@{domain}"


def sign_probe_id(probe_id: str, secret: bytes) -> str:
    """The signature of `probe_id`: HMAC-SHA256 truncated to 128 bits, 26 base32 characters."""
    if not is_probe_id(probe_id):
        raise ValueError("not a probe id")
    return _encode(int.from_bytes(_mac(probe_id, secret)[:_SIG_BYTES], "big"), _SIG_CHARS)


def verify_probe_token(probe_id: str, signature: str, secret: bytes) -> bool:
    """Whether `signature` is the valid signature of `probe_id`; compares in constant time."""
    if not is_probe_id(probe_id) or _SIGNATURE_RE.fullmatch(signature) is None:
        return False
    expected = _encode(int.from_bytes(_mac(probe_id, secret)[:_SIG_BYTES], "big"), _SIG_CHARS)
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


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The secret that signs new probes, and earlier secrets that still verify probes in flight."""

    MAX_EARLIER: ClassVar[int] = 4  # a few reloads' worth; a probe lives minutes, not days

    current: bytes = field(repr=False)
    earlier: tuple[bytes, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not self.current or not all(self.earlier):
            raise ValueError("the probe signing secret must not be empty")

    def sign(self, probe_id: str) -> str:
        """The signature of `probe_id` under the current secret."""
        return sign_probe_id(probe_id, self.current)

    def verify(self, probe_id: str, signature: str) -> bool:
        """Whether any secret of the ring signed `probe_id` with `signature`."""
        return any(
            verify_probe_token(probe_id, signature, key) for key in (self.current, *self.earlier)
        )

    def verify_verp(self, probe_id: str, tag: str) -> bool:
        """Whether any secret of the ring made `tag`, the VERP tag of `probe_id`."""
        if not is_probe_id(probe_id):
            return False
        return any(
            hmac.compare_digest(_verp_tag(probe_id, key).encode(), tag.lower().encode())
            for key in (self.current, *self.earlier)
        )

    def rotated(self, secret: bytes) -> KeyRing:
        """The ring after a reload: `secret` signs from now on, the current one still verifies."""
        if secret == self.current:
            return self
        kept = tuple(key for key in (self.current, *self.earlier) if key != secret)
        return KeyRing(secret, kept[: self.MAX_EARLIER])
