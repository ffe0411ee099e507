"""What a message in a bounce mailbox says about our probes: which probe, hard or soft, why.

Triage first decides that the message is a bounce at all (auto-replies and everything else are
left alone). flufl.bounce then finds the failed recipients, temporary or permanent, across RFC 3464
DSNs and the common non-standard formats; where the bounce is a real DSN its own `Status`,
`Action` and `Reporting-MTA` fields give the status code and the reporting MTA. The probe is found
by its signed probe header in the returned original, or else by the VERP envelope address the
bounce was sent to (`user+<probe-id>@domain`), which the caller checks against the ledger.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser

from flufl.bounce import all_failures

from agent.model import BounceType
from agent.reading.probe_token import PROBE_ID_PATTERN, KeyRing
from agent.reading.triage import TriageKind, triage_message

__all__ = ["BounceReport", "read_bounce"]

log = logging.getLogger(__name__)

_VERP = re.compile(rf"\+({PROBE_ID_PATTERN})@", re.IGNORECASE)
_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
# Headers a bounce is addressed by: To (the envelope sender of the original), and what delivery
# agents add for the envelope recipient.
_ADDRESSED_BY = ("Delivered-To", "X-Original-To", "Envelope-To", "To")
_MAX_FIELDS = 64  # per-recipient blocks read from one DSN; more is not a real bounce


@dataclass(frozen=True, slots=True)
class BounceReport:
    """A bounce, as far as it could be read. `bounce_type` is None when it reports no failure."""

    probe_id: str | None
    signed: bool  # probe_id came from a signed probe header, not only from the VERP address
    bounce_type: BounceType | None
    status: str | None  # enhanced status code, e.g. "5.1.1"
    reporting_mta: str | None
    recipients: tuple[str, ...]  # the failed original recipients, lower-cased
    reason: str


def _dsn_fields(message: Message) -> tuple[str | None, list[tuple[str, str, str]]]:
    """Reporting-MTA and (recipient, action, status) of each per-recipient block of a DSN."""
    reporting_mta: str | None = None
    blocks: list[tuple[str, str, str]] = []
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
            recipient = str(fields.get("Final-Recipient", fields.get("Original-Recipient", "")))
            blocks.append(
                (
                    recipient.split(";", 1)[-1].strip().strip("<>").lower(),
                    str(fields.get("Action", "")).strip().lower(),
                    str(fields.get("Status", "")).strip(),
                )
            )
    return reporting_mta, blocks


def _status_code(text: str) -> str | None:
    match = _STATUS.match(text)
    return ".".join(match.groups()) if match else None


def _verp_probe_id(message: Message) -> str | None:
    for name in _ADDRESSED_BY:
        for value in message.get_all(name) or []:
            match = _VERP.search(str(value))
            if match:
                return match[1].lower()
    return None


def read_bounce(raw: bytes, *, keys: KeyRing) -> BounceReport:
    """Read one message from a bounce mailbox; never raises on the message's content."""
    triage = triage_message(raw, keys=keys, trusted_authserv_ids=())
    if triage.kind is not TriageKind.BOUNCE:
        return BounceReport(None, False, None, None, None, (), f"not a bounce: {triage.kind}")
    try:
        return _read(raw, triage.probe_id if triage.probe_id_signed else None)
    except Exception as exc:  # a hostile bounce must never stop the bounce watcher
        log.debug("unreadable bounce", exc_info=True)
        return BounceReport(
            None, False, None, None, None, (), f"unreadable bounce ({type(exc).__name__})"
        )


def _read(raw: bytes, signed_probe_id: str | None) -> BounceReport:
    message = BytesParser(policy=policy.compat32).parsebytes(raw)
    temporary, permanent = all_failures(message)
    recipients = {
        (address.decode("utf-8", "replace") if isinstance(address, bytes) else str(address)).lower()
        for address in (*temporary, *permanent)
    }
    reporting_mta, blocks = _dsn_fields(message)
    statuses = [_status_code(status) for _, _, status in blocks]
    failed = any(action == "failed" for _, action, _ in blocks) or any(
        code is not None and code.startswith("5") for code in statuses
    )
    delayed = any(action == "delayed" for _, action, _ in blocks) or any(
        code is not None and code.startswith("4") for code in statuses
    )
    recipients.update(r for r, action, _ in blocks if r and action in ("failed", "delayed"))
    if permanent or failed:
        bounce_type: BounceType | None = BounceType.HARD
        wanted = "5"
    elif temporary or delayed:
        bounce_type, wanted = BounceType.SOFT, "4"
    else:
        bounce_type, wanted = None, ""
    status = next((c for c in statuses if c is not None and c.startswith(wanted)), None)
    probe_id = signed_probe_id or _verp_probe_id(message)
    reason = f"{bounce_type} bounce" if bounce_type else "a bounce that reports no failed recipient"
    return BounceReport(
        probe_id=probe_id,
        signed=signed_probe_id is not None,
        bounce_type=bounce_type,
        status=status,
        reporting_mta=reporting_mta,
        recipients=tuple(sorted(recipients)),
        reason=reason,
    )
