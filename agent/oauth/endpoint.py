"""One request to an OAuth 2.0 token endpoint (RFC 6749 section 5), errors mapped to kinds.

The only httpx user: the HTTP is async, bounded by one deadline over the whole request (httpx's
own timeouts are only backstops; a server that drips bytes would outlast them). oauthlib, which
does no I/O, encodes the form and reads the answer, so error answers come back as its typed
errors (`invalid_grant`, `invalid_client`, ...) instead of a hand-written parser's.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from oauthlib.oauth2.rfc6749 import errors as oauth_errors
from oauthlib.oauth2.rfc6749.parameters import validate_token_parameters
from oauthlib.oauth2.rfc6749.tokens import OAuth2Token

from agent.oauth.token_source import TokenError, TokenErrorKind

__all__ = ["TokenAnswer", "TokenEndpoint"]

_MAX_DESCRIPTION: Final = 300  # characters of the server's error_description kept in a message
_MAX_BODY: Final = 1 << 20  # a token answer is a few KB; more is not a token endpoint

# OAuth errors that say the server itself is in trouble, not the credential (RFC 6749 4.1.2.1).
_SERVER_ERRORS: Final = frozenset({"server_error", "temporarily_unavailable"})


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    """A successful token answer: the access token, its lifetime, and a rotated refresh token."""

    access_token: str = field(repr=False)
    expires_in: float | None = None
    refresh_token: str | None = field(default=None, repr=False)


class TokenEndpoint:
    """POSTs token requests to one URL; raises TokenError with a kind on every failure.

    `redact` masks the credential's secrets in every message (an endpoint may echo what it got).
    """

    def __init__(
        self,
        url: str,
        *,
        credential: str,
        timeout: float,
        ca_file: Path | None = None,
        redact: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.url = url
        self.credential = credential
        self._credential = credential
        self._timeout = timeout
        self._verify: ssl.SSLContext = ssl.create_default_context(
            cafile=str(ca_file) if ca_file is not None else None
        )
        self._redact = redact

    def _error(self, kind: TokenErrorKind, message: str, code: str | None = None) -> TokenError:
        return TokenError(kind, self._credential, self._redact(message), code=code)

    async def request(self, form: str) -> TokenAnswer:
        """Send one urlencoded token request body and read the answer."""
        status, body = await self._timed_post(form)
        return self._read(status, body)

    async def request_json(self, form: str) -> dict[str, Any]:
        """Send one urlencoded body and return the answer's JSON object, for answers that are
        not tokens (RFC 8628's device authorization); an OAuth error answer raises TokenError
        with its `code`."""
        status, body = await self._timed_post(form)
        params = self._object(status, body)
        if "error" in params or status >= 400:
            code = str(params.get("error") or f"HTTP {status}")
            raise self._coded(code, str(params.get("error_description") or ""))
        return params

    async def _timed_post(self, form: str) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._post(form)
        except TimeoutError:
            raise self._error(
                TokenErrorKind.TIMEOUT,
                f"token endpoint {self.url} did not answer within {self._timeout:g} s",
            ) from None

    async def _post(self, form: str) -> tuple[int, bytes]:
        try:
            async with (
                httpx.AsyncClient(
                    verify=self._verify, timeout=self._timeout, follow_redirects=False
                ) as client,
                client.stream(
                    "POST",
                    self.url,
                    content=form.encode("ascii"),
                    headers={
                        "Content-Type": "application/x-www-form-urlencoded",
                        "Accept": "application/json",
                    },
                ) as response,
            ):
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_BODY:
                        raise self._error(
                            TokenErrorKind.ENDPOINT,
                            f"token endpoint {self.url} answered more than {_MAX_BODY} bytes",
                        )
                return response.status_code, body
        except httpx.TimeoutException:
            raise self._error(
                TokenErrorKind.TIMEOUT,
                f"token endpoint {self.url} did not answer within {self._timeout:g} s",
            ) from None
        except httpx.HTTPError as exc:
            raise self._error(
                TokenErrorKind.ENDPOINT, f"token endpoint {self.url} unreachable: {_reason(exc)}"
            ) from None

    def _object(self, status: int, body: bytes) -> dict[str, Any]:
        if status >= 500:
            raise self._error(
                TokenErrorKind.ENDPOINT, f"token endpoint {self.url} answered HTTP {status}"
            )
        try:
            params: Any = json.loads(body)
        except ValueError:
            params = None
        if not isinstance(params, dict):
            raise self._error(
                TokenErrorKind.ENDPOINT,
                f"token endpoint {self.url} answered HTTP {status} without a JSON object",
            )
        return params

    def _read(self, status: int, body: bytes) -> TokenAnswer:
        params = self._object(status, body)
        try:
            # Not parse_token_response: it would compare scopes (Microsoft answers with fewer
            # than asked, e.g. without offline_access) and read expiry off the wall clock.
            validate_token_parameters(OAuth2Token(params))
        except oauth_errors.OAuth2Error as exc:
            raise self._oauth_error(exc, status) from None
        expires_in = params.get("expires_in")
        refresh = params.get("refresh_token")
        token = params["access_token"]
        if not isinstance(token, str) or not token:
            raise self._error(
                TokenErrorKind.ENDPOINT, f"token endpoint {self.url} answered an empty access_token"
            )
        return TokenAnswer(
            access_token=token,
            expires_in=float(expires_in)
            if expires_in is not None and _number(expires_in)
            else None,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        )

    def _oauth_error(self, exc: oauth_errors.OAuth2Error, status: int) -> TokenError:
        if isinstance(exc, oauth_errors.MissingTokenError):
            return self._error(
                TokenErrorKind.ENDPOINT,
                f"token endpoint {self.url} answered HTTP {status} without an access_token",
            )
        return self._coded(str(exc.error), str(exc.description or ""))

    def _coded(self, code: str, description: str) -> TokenError:
        kind = {
            "invalid_grant": TokenErrorKind.INVALID_GRANT,
            "invalid_client": TokenErrorKind.INVALID_CLIENT,
        }.get(code, TokenErrorKind.ENDPOINT if code in _SERVER_ERRORS else TokenErrorKind.REFUSED)
        description = " ".join(description.split())
        if len(description) > _MAX_DESCRIPTION:
            description = description[: _MAX_DESCRIPTION - 3] + "..."
        return self._error(
            kind,
            f"token endpoint refused: {code}" + (f": {description}" if description else ""),
            code,
        )


def _number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value > 0
    if isinstance(value, str):  # some servers send "3599"
        try:
            return float(value) > 0
        except ValueError:
            return False
    return False


def _reason(exc: httpx.HTTPError) -> str:
    """A short cause: the TLS failure or socket error underneath httpx's wrapper."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return f"TLS: {cause.reason or cause}"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__
