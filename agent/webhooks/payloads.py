"""Verified bodies -> `EspEvent`s, one reader per provider (pure).

Each provider's event names fold into `EspEventType`; a field of the wrong type reads as absent,
and a body that is not the provider's shape at all is `Refused` as malformed. Sample bodies the
providers publish are in tests/corpus/esp/ with their sources.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from agent.model import EspEvent, EspEventType, EspKind, WebhookRefusal
from agent.webhooks.signatures import Refused

__all__ = ["MAX_EVENTS", "message_id_from_reply", "parse_events", "read_json"]

MAX_EVENTS: Final = 5000  # per post; SendGrid batches, the body limit keeps it far lower anyway
_ENHANCED: Final = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_CODE: Final = re.compile(r"\b([245]\d\d)\b")
_MAX_TEXT: Final = 500  # characters of a diagnostic kept


def read_json(body: bytes) -> Any:
    """The body as JSON; Refused (malformed) when it is not UTF-8 JSON."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refused(WebhookRefusal.MALFORMED, "the body is not UTF-8 JSON") from None


def message_id_from_reply(text: str) -> str | None:
    """The ESP's message id in the 250 reply to end of data: `Ok: queued as <id>` (SendGrid,
    Postfix), `Ok <id>` (Amazon SES)."""
    match = re.search(r"queued as\s+<?([^\s<>]{1,200})>?", text, re.IGNORECASE) or re.match(
        r"\s*(?:\d\.\d\.\d\s+)?Ok:?\s+<?([^\s<>]{1,200})>?", text, re.IGNORECASE
    )
    return match.group(1) if match else None


def parse_events(kind: EspKind, payload: Any, *, metadata_key: str) -> tuple[EspEvent, ...]:
    """The events of a verified post (for SES, of the SNS notification's Message)."""
    match kind:
        case EspKind.SENDGRID:
            items = payload if isinstance(payload, list) else None
            reader = _sendgrid
        case EspKind.MAILGUN:
            data = payload.get("event-data") if isinstance(payload, dict) else None
            items = [data] if isinstance(data, dict) else None
            reader = _mailgun
        case EspKind.POSTMARK:
            known = isinstance(payload, dict) and (
                "RecordType" in payload or "MessageID" in payload
            )
            items = [payload] if known else None
            reader = _postmark
        case EspKind.SES:
            items = [payload] if isinstance(payload, dict) and "mail" in payload else None
            reader = _ses
        case EspKind.GENERIC:
            events = payload.get("events") if isinstance(payload, dict) else None
            items = events if isinstance(events, list) else None
            reader = _generic
    if items is None or len(items) > MAX_EVENTS:
        raise Refused(WebhookRefusal.MALFORMED, f"not a {kind.value} event post")
    return tuple(reader(item, metadata_key) for item in items if isinstance(item, dict))


# --- small readers -------------------------------------------------------------------------------


def _str(value: Any) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    return value[:_MAX_TEXT] if isinstance(value, str) and value else None


def _epoch(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _codes(*texts: str | None) -> tuple[str | None, str | None]:
    """The enhanced status and reply code found in a diagnostic's words."""
    status = code = None
    for text in texts:
        if text:
            status = status or (m.group(1) if (m := _ENHANCED.search(text)) else None)
            code = code or (m.group(1) if (m := _CODE.search(text)) else None)
    return status, code


# --- per provider --------------------------------------------------------------------------------

_SENDGRID_TYPES: Final = {
    "delivered": EspEventType.DELIVERED,
    "deferred": EspEventType.DEFERRED,
    "dropped": EspEventType.DROPPED,
    "spamreport": EspEventType.COMPLAINT,
}


def _sendgrid(item: Mapping[str, Any], key: str) -> EspEvent:
    name = item.get("event")
    kind = _SENDGRID_TYPES.get(str(name), EspEventType.OTHER)
    if name == "bounce":
        # "blocked" is a refusal SendGrid does not suppress the address for: not final.
        blocked = item.get("type") == "blocked"
        kind = EspEventType.SOFT_BOUNCE if blocked else EspEventType.BOUNCE
    diagnostic = _str(item.get("reason")) or _str(item.get("response"))
    status, code = _codes(_str(item.get("status")), diagnostic)
    message_id = _str(item.get("sg_message_id"))
    return EspEvent(
        kind,
        _epoch(item.get("timestamp")),
        # sg_message_id is "<the id of the 250 reply>.filter...": the part before the filter.
        message_id=message_id.split(".filter", 1)[0] if message_id else None,
        probe_id=_str(item.get(key)),
        status=status,
        smtp_code=code,
        diagnostic=diagnostic,
        recipient=_str(item.get("email")),
    )


def _mailgun(item: Mapping[str, Any], key: str) -> EspEvent:
    name, severity, reason = item.get("event"), item.get("severity"), str(item.get("reason"))
    kind = {
        "delivered": EspEventType.DELIVERED,
        "complained": EspEventType.COMPLAINT,
        "rejected": EspEventType.DROPPED,
    }.get(str(name), EspEventType.OTHER)
    if name == "failed":
        if severity == "permanent":
            suppressed = reason.startswith("suppress-")
            kind = EspEventType.DROPPED if suppressed else EspEventType.BOUNCE
        else:
            kind = EspEventType.DEFERRED  # temporary: Mailgun retries
    message = _str(_get(item, "delivery-status", "message"))
    description = _str(_get(item, "delivery-status", "description"))
    status, code = _codes(
        _str(_get(item, "delivery-status", "enhanced-code")), message, description
    )
    return EspEvent(
        kind,
        _epoch(item.get("timestamp")),
        message_id=_str(_get(item, "message", "headers", "message-id")),
        probe_id=_str(_get(item, "user-variables", key)),
        status=status,
        smtp_code=_str(_get(item, "delivery-status", "code")) or code,
        diagnostic=message or description,
        recipient=_str(item.get("recipient")),
    )


_POSTMARK_BOUNCES: Final = {
    "HardBounce": EspEventType.BOUNCE,
    "BadEmailAddress": EspEventType.BOUNCE,
    "DMARCPolicy": EspEventType.BOUNCE,
    "Blocked": EspEventType.SOFT_BOUNCE,
    "SoftBounce": EspEventType.SOFT_BOUNCE,
    "Transient": EspEventType.DEFERRED,
    "DnsError": EspEventType.SOFT_BOUNCE,
    "SpamComplaint": EspEventType.COMPLAINT,
    "ManuallyDeactivated": EspEventType.DROPPED,
}


def _postmark(item: Mapping[str, Any], key: str) -> EspEvent:
    record = item.get("RecordType")
    if record is None:  # the older posts, and Postmark's published examples, do not say
        record = "Bounce" if "BouncedAt" in item else "Delivery" if "DeliveredAt" in item else None
    kind = EspEventType.OTHER
    at = None
    if record == "Bounce":
        kind = _POSTMARK_BOUNCES.get(str(item.get("Type")), EspEventType.OTHER)
        at = _epoch(item.get("BouncedAt"))
    elif record == "Delivery":
        kind, at = EspEventType.DELIVERED, _epoch(item.get("DeliveredAt"))
    elif record == "SpamComplaint":
        kind, at = EspEventType.COMPLAINT, _epoch(item.get("BouncedAt"))
    details = _str(item.get("Details")) or _str(item.get("Description"))
    status, code = _codes(details)
    return EspEvent(
        kind,
        at,
        message_id=_str(item.get("MessageID")),
        probe_id=_str(_get(item, "Metadata", key)),
        status=status,
        smtp_code=code,
        diagnostic=details,
        recipient=_str(item.get("Email")) or _str(item.get("Recipient")),
    )


def _ses(item: Mapping[str, Any], key: str) -> EspEvent:
    # Identity notifications say notificationType; configuration-set event publishing, eventType.
    name = item.get("notificationType") or item.get("eventType")
    kind, at = EspEventType.OTHER, None
    status = code = diagnostic = recipient = None
    if name == "Bounce":
        bounce = item.get("bounce")
        bounce_type, sub_type = _get(bounce, "bounceType"), _get(bounce, "bounceSubType")
        if bounce_type == "Permanent":
            suppressed = sub_type in ("Suppressed", "OnAccountSuppressionList")
            kind = EspEventType.DROPPED if suppressed else EspEventType.BOUNCE
        else:
            kind = EspEventType.SOFT_BOUNCE  # Transient, Undetermined
        at = _epoch(_get(bounce, "timestamp"))
        recipients = _get(bounce, "bouncedRecipients")
        first = recipients[0] if isinstance(recipients, list) and recipients else {}
        diagnostic = _str(_get(first, "diagnosticCode"))
        status, code = _codes(_str(_get(first, "status")), diagnostic)
        recipient = _str(_get(first, "emailAddress"))
    elif name == "Delivery":
        kind, at = EspEventType.DELIVERED, _epoch(_get(item, "delivery", "timestamp"))
        diagnostic = _str(_get(item, "delivery", "smtpResponse"))
    elif name == "DeliveryDelay":
        kind, at = EspEventType.DEFERRED, _epoch(_get(item, "deliveryDelay", "timestamp"))
        diagnostic = _str(_get(item, "deliveryDelay", "delayType"))
    elif name == "Complaint":
        kind, at = EspEventType.COMPLAINT, _epoch(_get(item, "complaint", "timestamp"))
    tags = _get(item, "mail", "tags", key)
    return EspEvent(
        kind,
        at,
        message_id=_str(_get(item, "mail", "messageId")),
        probe_id=_str(tags[0]) if isinstance(tags, list) and tags else None,
        status=status,
        smtp_code=code,
        diagnostic=diagnostic,
        recipient=recipient,
    )


def _generic(item: Mapping[str, Any], key: str) -> EspEvent:
    try:
        kind = EspEventType(str(item.get("type")))
    except ValueError:
        kind = EspEventType.OTHER
    diagnostic = _str(item.get("diagnostic"))
    status, code = _codes(_str(item.get("status")), diagnostic)
    return EspEvent(
        kind,
        _epoch(item.get("timestamp")),
        message_id=_str(item.get("message_id")),
        probe_id=_str(item.get(key)),
        status=status,
        smtp_code=_str(item.get("smtp_code")) or code,
        diagnostic=diagnostic,
        recipient=_str(item.get("recipient")),
    )
