"""Token sources for the OAuth sign-in tests of the SMTP and IMAP edges."""

from __future__ import annotations

import asyncio

from agent.oauth import AccessToken, TokenError, TokenErrorKind

__all__ = ["FailingTokenSource", "HangingTokenSource", "RecordingTokenSource"]


class RecordingTokenSource:
    """Hands out one fixed token and records what the edge did with it."""

    def __init__(self, token: str, *, credential: str = "test-credential") -> None:
        self.token = AccessToken(token)
        self.credential = credential
        self.asked = 0
        self.refused_tokens: list[AccessToken] = []

    async def access_token(self) -> AccessToken:
        self.asked += 1
        return self.token

    def refused(self, token: AccessToken) -> None:
        self.refused_tokens.append(token)


class FailingTokenSource:
    """A credential whose token endpoint says the refresh token is no longer valid."""

    credential = "revoked-credential"

    def __init__(self) -> None:
        self.refusals = 0

    async def access_token(self) -> AccessToken:
        raise TokenError(
            TokenErrorKind.INVALID_GRANT,
            self.credential,
            "the token endpoint answered invalid_grant (refresh token revoked or expired)",
        )

    def refused(self, token: AccessToken) -> None:
        self.refusals += 1


class HangingTokenSource:
    """A credential whose token endpoint never answers."""

    credential = "hanging-credential"

    async def access_token(self) -> AccessToken:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def refused(self, token: AccessToken) -> None:
        raise AssertionError("no token was handed out")
