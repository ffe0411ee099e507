"""What a message in a bounce mailbox says about our probes: which probe, hard or soft, why.

Triage first decides that the message is a bounce at all (auto-replies and everything else are
left alone). flufl.bounce then finds the failed recipients, temporary or permanent, across RFC 3464
DSNs and the common non-standard formats; where the bounce is a real DSN its own `Status`,
`Action` and `Reporting-MTA` fields give the status code and the reporting MTA.

Anybody can send a message to a bounce mailbox, and probe ids are not secret (every delivered
probe's Message-ID and the status page show them), so a bounce must prove which probe it is about:
it quotes the probe's signed token (the probe header or the signed Message-ID of the returned
original), or it was sent to the probe's VERP address, whose tag is a MAC of the id that appears
nowhere but in the envelope (`user+<probe-id>-<tag>@domain`, see `agent.reading.probe_token`). A
proven bounce must also be consistent: the token and the tag name the same probe, and the returned
original's Message-ID is the probe's. Anything else that names a probe is reported as forged; the
caller counts it and changes no outcome.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser

from flufl.bounce import all_failures

from agent.model import BounceType
from agent.reading.probe_token import (
    PROBE_ID_PATTERN,
    SIGNATURE_PATTERN,
    VERP_PATTERN,
    KeyRing,
)
from agent.reading.triage import TriageKind, triage_message

__all__ = ["BounceProof", "BounceReport", "read_bounce"]

log = logging.getLogger(__name__)

# ASCII: a Unicode case fold (the Kelvin sign is a "k") must not widen the match.
_VERP = re.compile(VERP_PATTERN, re.IGNORECASE | re.ASCII)
# Any probe id after a `+`, tagged or not: what a bounce claims even when it proves nothing.
_VERP_CLAIM = re.compile(rf"\+({PROBE_ID_PATTERN})[-@]", re.IGNORECASE | re.ASCII)
_PROBE_MESSAGE_ID = re.compile(
    rf"<\s*({PROBE_ID_PATTERN})\.({SIGNATURE_PATTERN})@", re.IGNORECASE | re.ASCII
)
_MAX_ORIGINALS = 8  # returned originals read from one bounce
_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
# Headers a bounce is addressed by: To (the envelope sender of the original), and what delivery
# agents add for the envelope recipient.
_ADDRESSED_BY = ("Delivered-To", "X-Original-To", "Envelope-To", "To")
_MAX_FIELDS = 64  # per-recipient blocks read from one DSN; more is not a real bounce


class BounceProof(enum.StrEnum):
    """How a bounce proved which probe it is about."""

    SIGNED_TOKEN = "signed token"  # the probe header or signed Message-ID, returned or quoted
    VERP_TAG = "verp tag"  # sent to the probe's VERP address, with the tag that only we can make


@dataclass(frozen=True, slots=True)
class BounceReport:
    """A bounce, as far as it could be read. `bounce_type` is None when it reports no failure."""

    probe_id: str | None  # the probe the bounce names, proven or not
    proof: BounceProof | None  # None: it names a probe but proves nothing
    bounce_type: BounceType | None
    status: str | None  # enhanced status code, e.g. "5.1.1"
    reporting_mta: str | None
    recipients: tuple[str, ...]  # the failed recipients, final and original, lower-cased
    reason: str
    forgery: str | None = None  # why a bounce that names a probe cannot be about it

    @property
    def forged(self) -> bool:
        """Names a probe without proof, or with proof that contradicts itself."""
        return self.forgery is not None


def _address(field: object) -> str:
    return str(field or "").split(";", 1)[-1].strip().strip("<>").lower()


def _dsn_fields(
    message: Message,
) -> tuple[str | None, list[tuple[str, str, str]], set[str]]:
    """Reporting-MTA, (recipient, action, status) of each per-recipient block of a DSN, and the
    Original-Recipient of every block."""
    reporting_mta: str | None = None
    blocks: list[tuple[str, str, str]] = []
    originals: set[str] = set()
    for part in message.walk():
        if part.get_content_type() not in (
            "message/delivery-status",
            "message/global-delivery-status",
        ):
            continue
        payload = part.get_payload()
        if not isinstance(payload, list):
            continue
        for index, fields in enumerate(payload[: _MAX_FIELDS + 1]):
            if not isinstance(fields, Message):
                continue
            if index == 0:
                mta = str(fields.get("Reporting-MTA", "")).strip()
                reporting_mta = mta.split(";", 1)[-1].strip() or None
                continue
            if original := _address(fields.get("Original-Recipient")):
                originals.add(original)
            blocks.append(
                (
                    _address(fields.get("Final-Recipient", fields.get("Original-Recipient"))),
                    str(fields.get("Action", "")).strip().lower(),
                    str(fields.get("Status", "")).strip(),
                )
            )
    return reporting_mta, blocks, originals


def _status_code(text: str) -> str | None:
    match = _STATUS.match(text)
    return ".".join(match.groups()) if match else None


def _verp(message: Message, keys: KeyRing) -> tuple[str | None, str | None]:
    """(the probe a valid VERP tag proves, the probe a VERP address names at all)."""
    claimed: str | None = None
    for name in _ADDRESSED_BY:
        for value in (message.get_all(name) or [])[:_MAX_ORIGINALS]:
            text = str(value)
            for match in _VERP.finditer(text):
                if keys.verify_verp(match[1].lower(), match[2]):
                    return match[1].lower(), match[1].lower()
            if claimed is None and (claim := _VERP_CLAIM.search(text)):
                claimed = claim[1].lower()
    return None, claimed


def _original_message_ids(message: Message) -> list[str]:
    """The Message-ID of each returned original (whole or headers only), and what the bounce
    says it replies to."""
    found = [str(value) for value in message.get_all("In-Reply-To") or []]
    for part in message.walk():
        if len(found) >= _MAX_ORIGINALS:
            break
        content_type = part.get_content_type()
        if content_type in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            originals = payload if isinstance(payload, list) else []
        elif content_type in ("text/rfc822-headers", "message/global-headers"):
            text = part.get_payload(decode=True)
            originals = (
                [BytesParser(policy=policy.compat32).parsebytes(text, headersonly=True)]
                if isinstance(text, bytes)
                else []
            )
        else:
            continue
        found.extend(
            str(original["Message-ID"])
            for original in originals
            if isinstance(original, Message) and original["Message-ID"] is not None
        )
    return found[:_MAX_ORIGINALS]


def _forgery(
    signed_id: str | None,
    verp_id: str | None,
    original_ids: list[str],
    keys: KeyRing,
) -> str | None:
    """Why a bounce's proof does not hold, or None when it does."""
    if signed_id is None and verp_id is None:
        return "it carries neither the probe's signed token nor its VERP tag"
    if signed_id is not None and verp_id is not None and signed_id != verp_id:
        return f"its signed token names probe {signed_id} and its VERP tag probe {verp_id}"
    proven = signed_id or verp_id
    for message_id in original_ids:
        match = _PROBE_MESSAGE_ID.search(message_id)
        if (
            match is None
            or match[1].lower() != proven
            or not keys.verify(match[1].lower(), match[2].lower())
        ):
            return "the returned message's Message-ID is not the probe's"
    return None


def read_bounce(raw: bytes, *, keys: KeyRing) -> BounceReport:
    """Read one message from a bounce mailbox; never raises on the message's content."""
    triage = triage_message(raw, keys=keys, trusted_authserv_ids=())
    if triage.kind is not TriageKind.BOUNCE:
        return BounceReport(None, None, None, None, None, (), f"not a bounce: {triage.kind}")
    signed_id = triage.probe_id if triage.probe_id_signed else None
    unsigned_id = None if triage.probe_id_signed else triage.probe_id
    try:
        return _read(raw, keys, signed_id, unsigned_id)
    except Exception as exc:  # a hostile bounce must never stop the bounce watcher
        log.debug("unreadable bounce", exc_info=True)
        return BounceReport(
            None, None, None, None, None, (), f"unreadable bounce ({type(exc).__name__})"
        )


def _read(
    raw: bytes, keys: KeyRing, signed_id: str | None, unsigned_id: str | None
) -> BounceReport:
    message = BytesParser(policy=policy.compat32).parsebytes(raw)
    temporary, permanent = all_failures(message)
    recipients = {
        (address.decode("utf-8", "replace") if isinstance(address, bytes) else str(address)).lower()
        for address in (*temporary, *permanent)
    }
    reporting_mta, blocks, original_recipients = _dsn_fields(message)
    statuses = [_status_code(status) for _, _, status in blocks]
    failed = any(action == "failed" for _, action, _ in blocks) or any(
        code is not None and code.startswith("5") for code in statuses
    )
    delayed = any(action == "delayed" for _, action, _ in blocks) or any(
        code is not None and code.startswith("4") for code in statuses
    )
    recipients.update(r for r, action, _ in blocks if r and action in ("failed", "delayed"))
    recipients.update(original_recipients)
    if permanent or failed:
        bounce_type: BounceType | None = BounceType.HARD
        wanted = "5"
    elif temporary or delayed:
        bounce_type, wanted = BounceType.SOFT, "4"
    else:
        bounce_type, wanted = None, ""
    status = next((c for c in statuses if c is not None and c.startswith(wanted)), None)
    verp_id, verp_claim = _verp(message, keys)
    probe_id = signed_id or verp_id or verp_claim or unsigned_id
    forgery = None
    if probe_id is not None:
        forgery = _forgery(signed_id, verp_id, _original_message_ids(message), keys)
    proof = None
    if forgery is None:
        proof = BounceProof.SIGNED_TOKEN if signed_id is not None else BounceProof.VERP_TAG
    reason = f"{bounce_type} bounce" if bounce_type else "a bounce that reports no failed recipient"
    return BounceReport(
        probe_id=probe_id,
        proof=proof if probe_id is not None else None,
        bounce_type=bounce_type,
        status=status,
        reporting_mta=reporting_mta,
        recipients=tuple(sorted(recipients)),
        reason=reason,
        forgery=forgery,
    )
