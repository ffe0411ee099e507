"""The three OAuth 2.0 grants the agent uses to get access tokens from a token endpoint.

Each is a fetcher for `agent.oauth.lifecycle.CachingTokenSource`: `fetch(now)` makes one token
request and returns the access token; caching, refresh ahead of expiry, single flight and
backoff are the lifecycle's. Request bodies are encoded by oauthlib (no I/O of its own); the
service account's JWT (RFC 7523) is signed by PyJWT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

import jwt
from oauthlib.oauth2.rfc6749.parameters import prepare_token_request

from agent.oauth.endpoint import TokenEndpoint
from agent.oauth.refresh_store import RefreshTokenStore
from agent.oauth.token_source import AccessToken, TokenError, TokenErrorKind

__all__ = ["ClientCredentialsGrant", "RefreshTokenGrant", "ServiceAccountGrant"]

JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 section 2.1
ASSERTION_LIFETIME: Final = 3600  # seconds; Google's maximum for a service account assertion


def _token(answer_token: str, expires_in: float | None, now: float) -> AccessToken:
    return AccessToken(answer_token, now + expires_in if expires_in is not None else None)


class RefreshTokenGrant:
    """Delegated access: trade the stored refresh token for an access token (RFC 6749 6).

    A refresh token the endpoint rotates (Microsoft does) replaces the stored one at once, so
    the next refresh, and the next start, use it.
    """

    method: Final = "refresh_token"

    def __init__(
        self,
        endpoint: TokenEndpoint,
        store: RefreshTokenStore,
        *,
        client_id: str,
        client_secret: str | None,
        scope: str,
    ) -> None:
        self._endpoint = endpoint
        self._store = store
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._refresh_token: str | None = None  # read from the store at the first fetch
        self.persist_error: TokenError | None = None  # the last rotation that was not written

    @property
    def refresh_token(self) -> str | None:
        """The refresh token in use (for masking), once read."""
        return self._refresh_token

    async def fetch(self, now: float) -> AccessToken:
        if self._refresh_token is None:
            self._refresh_token = self._store.load()
        form = prepare_token_request(
            "refresh_token",
            refresh_token=self._refresh_token,
            client_id=self._client_id,
            client_secret=self._client_secret,
            scope=self._scope or None,
        )
        answer = await self._endpoint.request(form)
        if answer.refresh_token is not None and answer.refresh_token != self._refresh_token:
            # Used from now on even if it cannot be written: the old one may be dead already.
            self._refresh_token = answer.refresh_token
            try:
                self._store.save(answer.refresh_token)
                self.persist_error = None
            except TokenError as exc:
                self.persist_error = exc
        return _token(answer.access_token, answer.expires_in, now)

    def changed(self) -> bool:
        return False


class ClientCredentialsGrant:
    """App-only access (RFC 6749 4.4): Microsoft 365's IMAP.AccessAsApp / SMTP.SendAsApp."""

    method: Final = "client_credentials"

    def __init__(
        self, endpoint: TokenEndpoint, *, client_id: str, client_secret: str, scope: str
    ) -> None:
        self._endpoint = endpoint
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope

    async def fetch(self, now: float) -> AccessToken:
        form = prepare_token_request(
            "client_credentials",
            client_id=self._client_id,
            client_secret=self._client_secret,
            scope=self._scope or None,
        )
        answer = await self._endpoint.request(form)
        return _token(answer.access_token, answer.expires_in, now)

    def changed(self) -> bool:
        return False


class ServiceAccountGrant:
    """A Google service account with domain-wide delegation: a JWT signed with its key, with
    `sub` the mailbox's address, traded for an access token (RFC 7523)."""

    method: Final = "service_account"

    def __init__(
        self, endpoint: TokenEndpoint, *, key_file: Path, subject: str, scope: str, credential: str
    ) -> None:
        self._endpoint = endpoint
        self._key_file = key_file
        self._subject = subject
        self._scope = scope
        self._credential = credential

    def _key(self) -> tuple[str, str, str | None]:
        try:
            data = json.loads(self._key_file.read_text(encoding="utf-8"))
            return data["client_email"], data["private_key"], data.get("private_key_id")
        except (OSError, ValueError, KeyError, TypeError):
            raise TokenError(
                TokenErrorKind.FILE,
                self._credential,
                f"cannot read the service account key {self._key_file}",
            ) from None

    def assertion(self, now: float) -> str:
        """The signed JWT for a token request at `now`."""
        issuer, private_key, key_id = self._key()
        claims = {
            "iss": issuer,
            "sub": self._subject,
            "scope": self._scope,
            "aud": self._endpoint.url,
            "iat": int(now),
            "exp": int(now) + ASSERTION_LIFETIME,
        }
        headers = {"kid": key_id} if isinstance(key_id, str) else None
        try:
            return jwt.encode(claims, private_key, algorithm="RS256", headers=headers)
        except (ValueError, TypeError, jwt.PyJWTError):
            raise TokenError(
                TokenErrorKind.FILE,
                self._credential,
                f"cannot sign with the service account key {self._key_file}",
            ) from None

    async def fetch(self, now: float) -> AccessToken:
        form = prepare_token_request(
            JWT_BEARER, assertion=self.assertion(now), include_client_id=False
        )
        answer = await self._endpoint.request(form)
        return _token(answer.access_token, answer.expires_in, now)

    def changed(self) -> bool:
        return False
