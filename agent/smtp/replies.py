"""What an SMTP transaction's replies mean: enhanced status codes, the deciding reply, the verdict.

Pure functions over `SendResult`, so the outcomes, the status page and the command line read a
result without importing the aiosmtplib adapter (`agent.smtp.sender`).
"""

from __future__ import annotations

import re

from agent.model import Outcome, ReplyClass, SendResult, SmtpReply, Stage

__all__ = ["deciding_reply", "parse_enhanced_code", "verdict_of"]

_ENHANCED_CODE = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?=\s|$)")


def parse_enhanced_code(text: str) -> str | None:
    """The RFC 3463 enhanced status code at the start of a reply's text ("5.1.1"), if any."""
    match = _ENHANCED_CODE.match(text)
    return match.group(1) if match else None


def deciding_reply(result: SendResult) -> SmtpReply | None:
    """The reply that decided the transaction: the last one before the courtesy QUIT."""
    for reply in reversed(result.transcript):
        if reply.stage is not Stage.QUIT:
            return reply
    return None


def verdict_of(result: SendResult) -> Outcome | None:
    """None when the server accepted the probe (await its arrival), else its final outcome.

    REJECTED when a 5xx ended the transaction, DEFERRED when a 4xx did, ERROR when there is no
    SMTP verdict (`result.error` is set); an AUTH refusal is an ERROR of kind `auth`.
    """
    if result.error is not None:
        return Outcome.ERROR
    if result.accepted:
        return None
    reply = deciding_reply(result)
    reply_class = reply.reply_class if reply is not None else ReplyClass.INVALID
    if reply_class is ReplyClass.PERMANENT:
        return Outcome.REJECTED
    if reply_class is ReplyClass.TRANSIENT:
        return Outcome.DEFERRED
    return Outcome.ERROR
