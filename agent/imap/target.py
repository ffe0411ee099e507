"""Where and how to reach one seed mailbox over IMAP."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agent.model import TlsMode
from agent.oauth.token_source import OAuthSignIn

__all__ = ["ImapTarget"]

# Opportunistic TLS would send the password in clear text to a server that offers no STARTTLS.
_SUPPORTED_TLS: Final = (TlsMode.IMPLICIT, TlsMode.STARTTLS, TlsMode.NONE)


@dataclass(frozen=True, kw_only=True)
class ImapTarget:
    """Where and how to reach one seed mailbox; `mailbox` is its configured name (for logs).

    `secrets` are further secret values of the mailbox's configuration (beyond `password`): the
    IMAP code masks them, like the password, in every error message and log line it writes.
    """

    mailbox: str
    host: str
    port: int
    tls: TlsMode
    username: str
    password: str = field(repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)
    tls_verify: bool = True
    ca_file: Path | None = None
    connect_timeout: float = 15.0  # TCP connect, greeting, CAPABILITY, TLS (STARTTLS too)
    command_timeout: float = 30.0  # each command after that
    oauth: OAuthSignIn | None = None

    def __post_init__(self) -> None:
        if self.tls not in _SUPPORTED_TLS:
            raise ValueError(
                f"IMAP supports tls 'implicit', 'starttls' or 'none', got {self.tls.value!r}"
            )
        if self.connect_timeout <= 0 or self.command_timeout <= 0:
            raise ValueError("IMAP timeouts must be positive")
