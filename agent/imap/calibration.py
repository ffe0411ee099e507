"""Pure: the calibration marker and the arithmetic of a calibrated detection latency.

A watcher in IDLE learns of new mail when the server pushes `* n EXISTS`, and servers hold that
push back (Dovecot ~0.5 s after the change). To take that delay off, the watcher APPENDs a small
marker message to its own folder over a second, short-lived connection while its own connection
is in IDLE, and times the APPEND's tagged OK to the push (`notification_delay`). A probe found by
a push is then taken to have arrived that delay before the watcher saw it (`arrived_at`).

The marker carries `MARKER_HEADER` with a token the watcher chose; a message with that header is
never handed to the consumer (never a probe, never malformed), whoever's token it bears.
"""

from __future__ import annotations

import email.parser
import email.policy
import enum
import time
from email.message import EmailMessage
from email.utils import formatdate
from typing import Final

__all__ = [
    "MARKER_HEADER",
    "CalibrationFailure",
    "arrived_at",
    "build_marker",
    "marker_token",
    "notification_delay",
]

MARKER_HEADER: Final = "X-Deliverability-Calibration"
_MARKER_NAME: Final = MARKER_HEADER.lower().encode("ascii") + b":"
_HEADER_PARSER: Final = email.parser.BytesHeaderParser(policy=email.policy.compat32)


class CalibrationFailure(enum.StrEnum):
    """Why a folder has no calibrated notification delay: its latency stays the raw figure."""

    NO_IDLE = "no_idle"  # the server has no IDLE (or IDLE is off): nothing to calibrate
    APPEND_REFUSED = "append_refused"  # APPEND answered NO/BAD (no insert right, quota, ...)
    NO_PUSH = "no_push"  # the marker was appended but no push came within the IDLE interval
    ERROR = "error"  # the second connection failed (connect, sign-in, timeout)


def build_marker(token: str, *, address: str, now: float | None = None) -> bytes:
    """The marker message: a few hundred bytes, CRLF line ends as APPEND wants them."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = address
    message["To"] = address
    message["Date"] = formatdate(time.time() if now is None else now)
    message["Subject"] = "deliverability agent: IDLE calibration marker (deleted right away)"
    message[MARKER_HEADER] = token
    message.set_content(
        "The deliverability agent appended this message to time the server's IDLE "
        "notification and deletes it right away.\n"
    )
    return message.as_bytes()


def marker_token(raw: bytes) -> str | None:
    """The calibration token of a fetched message, or None when it is no marker.

    A cheap byte test first (every message passes through here), the stdlib's header parser only
    for a message whose header block names the marker header.
    """
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[: end + 2]
    if _MARKER_NAME not in head.lower():
        return None
    value = _HEADER_PARSER.parsebytes(head).get(MARKER_HEADER)
    if not isinstance(value, str):  # compat32 gives a Header for undecodable bytes: not ours
        return None
    token = value.strip()
    return token or None


def notification_delay(appended_at: float, pushed_at: float) -> float:
    """The server's notification delay from one calibration, in seconds, never below 0 (a push
    that overtook the APPEND's OK means the server held nothing back)."""
    return max(0.0, pushed_at - appended_at)


def arrived_at(seen_at: float, delay: float | None) -> float:
    """When a message found by a push most likely arrived: `delay` before it was seen (`seen_at`
    itself without a calibrated delay). Latency is taken from here and clamped at 0 by the caller
    (`agent.probing.outcomes`), so a delay larger than the real one never yields a negative one."""
    if delay is None:
        return seen_at
    return seen_at - max(0.0, delay)
