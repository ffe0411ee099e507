"""What the IMAP adapter raises: every library exception and NO/BAD reply becomes an `ImapError`."""

from __future__ import annotations

from agent.errors import AgentError, ErrorCategory
from agent.model import ErrorKind

__all__ = ["FolderNotFound", "ImapError"]


class ImapError(AgentError):
    """An IMAP connection or command failed; `message` never contains the mailbox's secrets."""

    category = ErrorCategory.PEER

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"


class FolderNotFound(ImapError):
    """A configured folder is not in the server's LIST."""
