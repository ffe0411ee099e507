"""Which scenario rule applies to a transaction, and what the sandbox answers at each stage.

Pure functions over the configured rules, so every scenario is tested without a socket. A rule
matches when each of its `match` keys does: `login` is the SMTP AUTH username (one per route),
`recipient` an envelope recipient (case-insensitive, exact). The first matching rule wins, and
at each stage only rules whose keys are known by then take part: before RCPT, only rules without
a `recipient`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.config import SandboxReply, SandboxRule
from agent.model import Stage

__all__ = ["Reply", "reply_at", "rule_for", "unknown_recipient"]


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply line the sandbox sends: `code`, optional enhanced code, text."""

    code: int
    enhanced_code: str | None
    text: str

    @classmethod
    def of(cls, reply: SandboxReply) -> Reply:
        return cls(reply.code, reply.enhanced_code, reply.text)

    def line(self) -> str:
        text = " ".join(self.text.split())  # never a CR or LF inside one reply line
        return " ".join(str(part) for part in (self.code, self.enhanced_code, text) if part)


def _matches(rule: SandboxRule, login: str | None, recipient: str | None) -> bool:
    match = rule.match
    if match.login is not None and match.login != login:
        return False
    if match.recipient is None:
        return True
    return recipient is not None and match.recipient.lower() == recipient.lower()


def rule_for(
    rules: Sequence[SandboxRule], *, login: str | None, recipient: str | None
) -> SandboxRule | None:
    """The first rule that matches; with `recipient` None, only rules without a recipient."""
    return next((rule for rule in rules if _matches(rule, login, recipient)), None)


def reply_at(
    rules: Sequence[SandboxRule], stage: Stage, *, login: str | None, recipients: Sequence[str]
) -> Reply | None:
    """The reply a rule gives at `stage` instead of the normal answer, or None to go on.

    Before RCPT (AUTH, MAIL) the rule is the first without a recipient matching the login; at
    RCPT `recipients` holds the one being added; at DATA and end of data every accepted
    recipient's rule is asked, in order, and the first reply at this stage wins.
    """
    candidates = [None] if stage in (Stage.AUTH, Stage.MAIL) else list(recipients)
    for recipient in candidates:
        rule = rule_for(rules, login=login, recipient=recipient)
        if rule is not None and rule.reply is not None and rule.reply.stage is stage:
            return Reply.of(rule.reply)
    return None


def unknown_recipient(recipient: str) -> Reply:
    """What the sandbox answers at RCPT for an address it hosts no mailbox for, without a rule."""
    return Reply(550, "5.1.1", f"<{recipient}>: no such mailbox in the sandbox")
