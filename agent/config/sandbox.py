"""The `sandbox` section: the embedded sandbox mail provider and its scenario rules.

A local SMTP submission server and IMAP server on loopback, started inside the agent for demos
(docs/sandbox.md); each rule matches transactions by login and recipient and takes one action:
deliver, reply, discard or bounce.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, Field

from agent.config.base import _Model
from agent.config.credentials import Auth
from agent.config.errors import _format_loc, _invalid, _Loc, _Problems
from agent.config.scalars import AddrSpec, Port, Text, Word, _duration
from agent.model import AuthResult, Stage

__all__ = [
    "Sandbox",
    "SandboxBounce",
    "SandboxDeliver",
    "SandboxMailbox",
    "SandboxMatch",
    "SandboxReply",
    "SandboxRule",
    "SandboxVerdicts",
]


# Before AUTH the sandbox cannot tell one route from another, so rules act from AUTH on; before
# RCPT it does not know the recipient either.
_SANDBOX_STAGES: Final = (Stage.AUTH, Stage.MAIL, Stage.RCPT, Stage.DATA, Stage.END_OF_DATA)
_RECIPIENT_STAGES: Final = (Stage.RCPT, Stage.DATA, Stage.END_OF_DATA)
_ENHANCED_CODE_RE: Final = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_LOOPBACK_HINT: Final = "expected a loopback IP address such as 127.0.0.1 or ::1"


def _quoted_list(values: Sequence[str]) -> str:
    quoted = [f"'{value}'" for value in values]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}"


def _loopback(value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid(_LOOPBACK_HINT)
    try:
        address = ipaddress.ip_address(value.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise _invalid(_LOOPBACK_HINT) from None
    if not address.is_loopback:
        raise _invalid(f"{_LOOPBACK_HINT} (the sandbox serves this machine only)")
    return str(address)


def _sandbox_stage(value: Any) -> Stage:
    names = [stage.value for stage in _SANDBOX_STAGES]
    if isinstance(value, str) and value in names:
        return Stage(value)
    raise _invalid(
        f"expected {_quoted_list(names)} (before AUTH the sandbox cannot tell routes apart)"
    )


class SandboxReply(_Model):
    """Answer a 4xx or 5xx at one SMTP stage instead of going on."""

    stage: Annotated[Stage, BeforeValidator(_sandbox_stage)]
    code: Annotated[int, Field(ge=400, le=599)]
    enhanced_code: Word | None = None
    text: Text = "refused by a sandbox rule"

    def _check(self, problems: _Problems) -> None:
        code = self.enhanced_code
        if code is not None and (
            not _ENHANCED_CODE_RE.fullmatch(code) or code[0] != str(self.code)[0]
        ):
            problems.add(
                ("enhanced_code",),
                f"expected an enhanced status code of the class of {self.code}, such as "
                f"{str(self.code)[0]}.7.1",
                got=code,
            )


class SandboxVerdicts(_Model):
    """The verdicts the sandbox stamps into an Authentication-Results header; unset: left out."""

    spf: AuthResult | None = None
    dkim: AuthResult | None = None
    dmarc: AuthResult | None = None
    arc: AuthResult | None = None


class SandboxDeliver(_Model):
    """Deliver into a folder of the recipient's sandbox mailbox after a delay."""

    folder: Text = "INBOX"
    delay: Annotated[float, _duration()] = 0.0
    authentication_results: SandboxVerdicts | None = None
    authserv_id: Word | None = None  # None: the sandbox's authserv_id


class SandboxBounce(_Model):
    """Accept, then after a delay send a DSN (RFC 3464) back to the envelope sender."""

    delay: Annotated[float, _duration()] = 0.0
    status: Word = "5.1.1"
    diagnostic: Text = "550 5.1.1 The email account that you tried to reach does not exist"
    mailbox: AddrSpec | None = None  # None: the mailbox of the envelope sender (+detail dropped)

    def _check(self, problems: _Problems) -> None:
        if not (_ENHANCED_CODE_RE.fullmatch(self.status) and self.status.startswith("5")):
            problems.add(
                ("status",), "expected a permanent status code such as 5.1.1", got=self.status
            )


class SandboxMatch(_Model):
    """Which transactions a rule applies to: every key given must match."""

    login: Text | None = None  # the SMTP AUTH username: one per route
    recipient: AddrSpec | None = None  # an envelope recipient, compared case-insensitively

    def _check(self, problems: _Problems) -> None:
        if self.login is None and self.recipient is None:
            problems.add((), "expected login, recipient or both")


_ACTIONS: Final = ("deliver", "reply", "discard", "bounce")


class SandboxRule(_Model):
    """One scenario: what the sandbox does with the transactions its `match` selects."""

    match: SandboxMatch
    deliver: SandboxDeliver | None = None
    reply: SandboxReply | None = None
    discard: bool = False
    bounce: SandboxBounce | None = None

    def _check(self, problems: _Problems) -> None:
        chosen = [key for key in _ACTIONS if getattr(self, key) not in (None, False)]
        if len(chosen) != 1:
            problems.add(
                (),
                f"expected exactly one of {_quoted_list(_ACTIONS)}"
                + (f", got {' and '.join(chosen)}" if chosen else ""),
            )
        reply = self.reply
        if self.match.recipient is not None and reply and reply.stage not in _RECIPIENT_STAGES:
            names = [stage.value for stage in _RECIPIENT_STAGES]
            problems.add(
                ("reply", "stage"),
                f"expected {_quoted_list(names)} in a rule that matches a recipient (the "
                "recipient is not known before RCPT)",
                got=reply.stage.value,
            )

    @property
    def action(self) -> str:
        """Which action this rule takes: "deliver", "reply", "discard" or "bounce"."""
        return next(key for key in _ACTIONS if getattr(self, key) not in (None, False))


class SandboxMailbox(_Model):
    """A seed mailbox the sandbox hosts: mail for `address` lands here, read over IMAP."""

    address: AddrSpec
    auth: Auth


class Sandbox(_Model):
    """A local SMTP submission server and IMAP server, started inside the agent, for demos."""

    host: Annotated[str, BeforeValidator(_loopback)] = "127.0.0.1"
    hostname: Word = "sandbox.localhost"
    authserv_id: Word = ""  # default: hostname, filled in by _prepare
    submission_port: Port = 2587
    submissions_port: Port = 2465
    imaps_port: Port = 2993
    users: tuple[Auth, ...] = ()
    mailboxes: tuple[SandboxMailbox, ...] = ()
    rules: tuple[SandboxRule, ...] = ()

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        if "authserv_id" not in data and isinstance(data.get("hostname"), str):
            data["authserv_id"] = data["hostname"]
        elif "authserv_id" not in data:
            data["authserv_id"] = "sandbox.localhost"

    def _check(self, problems: _Problems) -> None:
        ports: dict[int, str] = {}
        for key in ("submission_port", "submissions_port", "imaps_port"):
            port: int = getattr(self, key)
            if port in ports:
                problems.add((key,), f"expected a port not already used by {ports[port]}", got=port)
            ports.setdefault(port, key)
        _unique(
            [user.username for user in self.users], ("users",), ("username",), "username", problems
        )
        _unique(
            [m.auth.username for m in self.mailboxes],
            ("mailboxes",),
            ("auth", "username"),
            "username",
            problems,
        )
        addresses = [m.address.lower() for m in self.mailboxes]
        _unique(addresses, ("mailboxes",), ("address",), "address", problems)
        logins = [user.username for user in self.users]
        for index, rule in enumerate(self.rules):
            login = rule.match.login
            if login is not None and login not in logins:
                problems.add(
                    ("rules", index, "match", "login"),
                    f"expected the username of a sandbox user ({', '.join(logins) or 'none'})",
                    got=login,
                )
            target = rule.bounce.mailbox if rule.bounce is not None else None
            if target is not None and target.lower() not in addresses:
                problems.add(
                    ("rules", index, "bounce", "mailbox"),
                    "expected the address of a sandbox mailbox",
                    got=target,
                )


def _unique(
    values: Sequence[str], section: _Loc, key: _Loc, what: str, problems: _Problems
) -> None:
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in first:
            problems.add(
                (*section, index, *key),
                f"expected a unique {what} (also used by {_format_loc((*section, first[value]))})",
                got=value,
            )
        first.setdefault(value, index)
