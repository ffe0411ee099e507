"""What the SMTP and IMAP edges need of an OAuth 2.0 credential: a current access token.

A `TokenSource` is one credential (a refresh token, a client-credentials app, a service account,
a token command or file). It is shared by every connection that signs in with that credential,
caches the access token, refreshes it ahead of expiry one refresh at a time, and raises
`TokenError` with a bounded `kind` when it cannot get one. An edge that had a token refused by the
server calls `refused(token)`, so the next `access_token()` fetches a new one instead of handing
out the cached token again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from agent.errors import AgentError, ErrorCategory

__all__ = [
    "AccessToken",
    "OAuthSignIn",
    "SaslMechanism",
    "StaticTokenSource",
    "TokenError",
    "TokenErrorKind",
    "TokenSource",
]


class SaslMechanism(enum.StrEnum):
    """The SASL mechanisms that carry an OAuth 2.0 bearer token (IMAP AUTHENTICATE, SMTP AUTH)."""

    XOAUTH2 = "xoauth2"  # Google's and Microsoft's mechanism
    OAUTHBEARER = "oauthbearer"  # RFC 7628


class TokenErrorKind(enum.StrEnum):
    """Why a credential could not produce an access token: a bounded metric label."""

    INVALID_GRANT = "invalid_grant"  # refresh token revoked, expired or for another client
    INVALID_CLIENT = "invalid_client"  # client id or secret wrong, app deleted or disabled
    REFUSED = "refused"  # any other OAuth error answer (invalid_scope, unauthorized_client, ...)
    ENDPOINT = "endpoint"  # the token endpoint failed: 5xx, unreachable, TLS, malformed answer
    TIMEOUT = "timeout"  # the token endpoint or the token command did not answer in time
    COMMAND = "command"  # token_command failed (exit status, empty output)
    FILE = "file"  # token_file or refresh_token_file unreadable, empty, or not writable


class TokenError(AgentError):
    """A credential could not produce an access token. The message never holds a secret."""

    category: ClassVar[ErrorCategory] = ErrorCategory.PEER

    def __init__(
        self, kind: TokenErrorKind, credential: str, message: str, *, code: str | None = None
    ) -> None:
        super().__init__(f"credential {credential!r}: {message}")
        self.kind = kind
        self.credential = credential
        self.code = code  # the OAuth error code the server answered, if any (RFC 6749 5.2)


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A bearer token and when it stops working (Unix time; None: not known)."""

    value: str = field(repr=False)
    expires_at: float | None = None


@runtime_checkable
class TokenSource(Protocol):
    """One OAuth credential, shared by every connection that signs in with it."""

    @property
    def credential(self) -> str:
        """The credential's name for logs and metrics (never a secret)."""
        ...

    async def access_token(self) -> AccessToken:
        """A token valid for at least the next minute; raises TokenError."""
        ...

    def refused(self, token: AccessToken) -> None:
        """The server refused `token`: the next `access_token()` must not return it."""
        ...


@dataclass(frozen=True, slots=True)
class OAuthSignIn:
    """How an SMTP route or an IMAP mailbox signs in with OAuth 2.0 instead of a password.

    `mechanism` None: the edge picks from what the server advertises (OAUTHBEARER first, then
    XOAUTH2).
    """

    username: str
    tokens: TokenSource = field(repr=False)
    mechanism: SaslMechanism | None = None


class StaticTokenSource:
    """A fixed token (tests; a token handed in from outside with no way to refresh it)."""

    def __init__(self, token: str, *, credential: str = "static") -> None:
        self._token = AccessToken(token)
        self._credential = credential
        self.refusals = 0

    @property
    def credential(self) -> str:
        return self._credential

    async def access_token(self) -> AccessToken:
        return self._token

    def refused(self, token: AccessToken) -> None:
        self.refusals += 1
