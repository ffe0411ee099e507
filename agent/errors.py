"""The one root of the agent's own errors, and the categories that say where a failure belongs.

Every error the agent raises on purpose is an `AgentError`: the command line catches that one type
and prints its message, which never holds a secret. Library exceptions are translated into these at
the edge (the SMTP, IMAP, DNS and SQLite adapters), so nothing above the adapters sees aiosmtplib,
aioimaplib, dnspython or sqlite3 errors. Why a connection failed (`ErrorKind`) is a label set and
lives in `agent.model` with the other bounded labels.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = ["AgentError", "ErrorCategory"]


class ErrorCategory(enum.StrEnum):
    """Whose problem an error is: what the operator should look at first."""

    CONFIG = "config"  # the configuration is wrong: fix the file
    STATE = "state"  # the state directory or the ledger cannot be used
    PEER = "peer"  # a server the agent talks to (SMTP, IMAP, DNS) failed, refused or misbehaved
    SERVER = "server"  # a server of the agent's own (HTTP, sandbox) cannot start or serve
    INPUT = "input"  # data from outside (a DNS record) is not what its format says


class AgentError(Exception):
    """The root of every error the agent raises on purpose; `category` says where it belongs."""

    category: ClassVar[ErrorCategory]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "category" not in vars(cls) and not any(hasattr(b, "category") for b in cls.__mro__[1:]):
            raise TypeError(f"{cls.__name__} must set a category")
