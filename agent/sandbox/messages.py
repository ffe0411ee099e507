"""The bytes the sandbox writes into mailboxes: a delivered message's trace headers, and DSNs.

Pure functions. A delivery gets the headers a receiving provider adds on top (Return-Path,
Delivered-To, Authentication-Results when a rule gives verdicts, Received). A bounce is a real
RFC 3464 delivery status notification: `multipart/report; report-type=delivery-status` with a
human-readable part, a `message/delivery-status` part and the returned message as
`message/rfc822`, sent from the null sender.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, formatdate, make_msgid
from typing import Final

from agent.config import SandboxVerdicts
from agent.model import AuthMethod

__all__ = ["Bounce", "Delivery", "build_dsn", "stamp_delivery"]

_CRLF: Final = "\r\n"
# Authentication-Results property of each method (RFC 8601 section 2.7).
_PROPERTY: Final = {
    AuthMethod.SPF: "smtp.mailfrom",
    AuthMethod.DKIM: "header.d",
    AuthMethod.DMARC: "header.from",
    AuthMethod.ARC: "smtp.remote-ip",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One accepted message on its way into one recipient's mailbox."""

    envelope_from: str
    recipient: str
    login: str | None
    client_name: str  # the EHLO name
    client_address: str
    hostname: str  # the sandbox's own name
    queue_id: str
    received_at: float  # time.time() of the end-of-data 250
    tls: bool = True


def _clean(text: str) -> str:
    """Header-safe: one line, no control characters (addresses come from the client)."""
    return "".join(char for char in " ".join(text.split()) if char.isprintable())


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or address


def _verdict_header(authserv_id: str, verdicts: SandboxVerdicts, delivery: Delivery) -> str:
    values = {
        AuthMethod.SPF: _domain(delivery.envelope_from),
        AuthMethod.DKIM: _domain(delivery.envelope_from),
        AuthMethod.DMARC: _domain(delivery.envelope_from),
        AuthMethod.ARC: delivery.client_address,
    }
    parts = [
        f"{method.value}={result.value} {_PROPERTY[method]}={_clean(values[method])}"
        for method, result in (
            (AuthMethod.SPF, verdicts.spf),
            (AuthMethod.DKIM, verdicts.dkim),
            (AuthMethod.DMARC, verdicts.dmarc),
            (AuthMethod.ARC, verdicts.arc),
        )
        if result is not None
    ]
    if not parts:
        parts = ["none"]
    return f"Authentication-Results: {authserv_id};{_CRLF}\t" + f";{_CRLF}\t".join(parts)


def stamp_delivery(
    raw: bytes,
    delivery: Delivery,
    *,
    verdicts: SandboxVerdicts | None = None,
    authserv_id: str | None = None,
) -> bytes:
    """`raw` with the receiving side's headers on top, newest first, as a provider adds them."""
    when = formatdate(delivery.received_at, localtime=False, usegmt=True)
    protocol = "ESMTPSA" if delivery.login is not None and delivery.tls else "ESMTP"
    client = f"{_clean(delivery.client_name)} ([{_clean(delivery.client_address)}])"
    received = (
        f"Received: from {client}{_CRLF}"
        f"\tby {delivery.hostname} (deliverability-agent sandbox) with {protocol}"
        f" id {delivery.queue_id}{_CRLF}\tfor <{_clean(delivery.recipient)}>; {when}"
    )
    headers = [
        f"Return-Path: <{_clean(delivery.envelope_from)}>",
        f"Delivered-To: {_clean(delivery.recipient)}",
    ]
    if verdicts is not None:
        headers.append(_verdict_header(authserv_id or delivery.hostname, verdicts, delivery))
    headers.append(received)
    return (_CRLF.join(headers) + _CRLF).encode("ascii", "replace") + _crlf(raw)


def _crlf(raw: bytes) -> bytes:
    """Line ends as CRLF throughout, as IMAP serves them."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@dataclass(frozen=True, slots=True, kw_only=True)
class Bounce:
    """Why a message could not be delivered to one recipient."""

    status: str  # enhanced status code, 5.x.x
    diagnostic: str  # the remote server's reply, as it would appear in the DSN
    bounced_at: float


def build_dsn(original: bytes, delivery: Delivery, bounce: Bounce) -> bytes:
    """A delivery status notification (RFC 3464) for `delivery`, returning `original` whole."""
    boundary = f"dsn-{secrets.token_hex(12)}"
    hostname = delivery.hostname
    recipient = _clean(delivery.recipient)
    sender = _clean(delivery.envelope_from)
    diagnostic = _clean(bounce.diagnostic)
    arrival = format_datetime(datetime.fromtimestamp(delivery.received_at, UTC))
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {formatdate(bounce.bounced_at, usegmt=True)}",
        f"Message-ID: {make_msgid('dsn', domain=hostname)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Description: Notification",
        "",
        f"This is the mail system at host {hostname}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "",
        f"<{recipient}>: {diagnostic}",
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-Sandbox-Queue-ID: {delivery.queue_id}",
        f"Arrival-Date: {arrival}",
        "",
        f"Final-Recipient: rfc822; {recipient}",
        f"Original-Recipient: rfc822; {recipient}",
        "Action: failed",
        f"Status: {bounce.status}",
        f"Remote-MTA: dns; {hostname}",
        f"Diagnostic-Code: smtp; {diagnostic}",
        "",
        f"--{boundary}",
        "Content-Type: message/rfc822",
        "Content-Description: Undelivered Message",
        "",
    ]
    head = _CRLF.join(lines).encode("ascii", "replace") + _CRLF.encode()
    tail = f"{_CRLF}--{boundary}--{_CRLF}".encode()
    return head + _crlf(original).rstrip(b"\r\n") + tail
