"""A credential's access token over time: cached, refreshed ahead of expiry, one refresh at a time.

`CachingTokenSource` is the `TokenSource` every connection of a credential shares. It hands out
the cached token while it has more than `refresh_ahead` left; otherwise one refresh runs however
many callers wait, and they all get its result. A failed refresh backs off exponentially (30 s
doubling to 15 min) so a revoked credential does not hammer its endpoint; meanwhile a cached token
that still works is handed out, else the failure is raised again without a request. Every refresh
is reported (`on_refresh`) for the metrics; `state()` is what the status page and `once` show.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from agent.model import TokenRefreshed
from agent.oauth.token_source import AccessToken, TokenError, TokenErrorKind

__all__ = ["BACKOFF_MAX", "BACKOFF_MIN", "CachingTokenSource", "CredentialState", "Fetcher"]

log = logging.getLogger(__name__)

BACKOFF_MIN: Final = 30.0  # seconds after a first failed refresh
BACKOFF_MAX: Final = 900.0  # the cap: a revoked credential is tried every 15 min
AHEAD_MAX: Final = 300.0  # refresh at most 5 min before expiry ...
AHEAD_FRACTION: Final = 0.1  # ... or when 10 % of the lifetime is left, whichever comes later
AHEAD_MIN: Final = 60.0  # and never hand out a token with less than a minute left
# A token whose lifetime is not known (a token command's, an answer without expires_in) is reused
# this long; a server that refuses it sooner gets `refused()` and a fresh one.
UNKNOWN_LIFETIME_REUSE: Final = 300.0


class Fetcher(Protocol):
    """One way of getting an access token (a grant, a command, a file)."""

    @property
    def method(self) -> str: ...

    async def fetch(self, now: float) -> AccessToken: ...

    def changed(self) -> bool:
        """Whether a token of unknown lifetime should be fetched again before its reuse ends."""
        ...


@dataclass(frozen=True, slots=True)
class CredentialState:
    """What the status page and `once` show of a credential: never a token or secret."""

    credential: str
    method: str
    last_success_at: float | None
    expires_at: float | None
    error_kind: TokenErrorKind | None
    error: str | None  # the last failure's message (no secret), None after a success
    failures: int  # consecutive failed refreshes
    retry_at: float | None  # no refresh before this (backoff)


class CachingTokenSource:
    """A `TokenSource` over a `Fetcher`: cache, refresh ahead, single flight, backoff."""

    def __init__(
        self,
        credential: str,
        fetcher: Fetcher,
        *,
        clock: Callable[[], float] = time.time,
        on_refresh: Callable[[TokenRefreshed], None] | None = None,
        unknown_lifetime_reuse: float = UNKNOWN_LIFETIME_REUSE,
    ) -> None:
        self._credential = credential
        self.fetcher = fetcher
        self._clock = clock
        self._on_refresh = on_refresh
        self._reuse = unknown_lifetime_reuse
        self._token: AccessToken | None = None
        self._fetched_at = 0.0
        self._lifetime: float | None = None
        self._flight: asyncio.Task[AccessToken] | None = None
        self._failure: TokenError | None = None
        self._failures = 0
        self._retry_at: float | None = None
        self._last_success: float | None = None
        self.refreshes = 0  # token requests made (tests and the status page)

    @property
    def credential(self) -> str:
        return self._credential

    def set_on_refresh(self, on_refresh: Callable[[TokenRefreshed], None] | None) -> None:
        self._on_refresh = on_refresh

    # --- TokenSource ----------------------------------------------------------------------------

    async def access_token(self) -> AccessToken:
        now = self._clock()
        token = self._token
        if token is not None and self._usable(token, now, ahead=True):
            return token
        if self._flight is None:
            if self._retry_at is not None and now < self._retry_at:
                # Backing off: a token that still works beats none; else the last failure.
                if token is not None and self._usable(token, now, ahead=False):
                    return token
                assert self._failure is not None
                raise TokenError(
                    self._failure.kind,
                    self._credential,
                    f"{_bare(self._failure)} (next try in {self._retry_at - now:.0f} s)",
                )
            self._flight = asyncio.create_task(
                self._refresh(), name=f"token-refresh:{self._credential}"
            )
            self._flight.add_done_callback(self._landed)
        # Shielded: a caller that gives up (its own deadline) does not cancel the others' refresh.
        return await asyncio.shield(self._flight)

    def refused(self, token: AccessToken) -> None:
        if self._token is not None and self._token.value == token.value:
            log.info(
                "credential %s: the server refused its access token; fetching a new one",
                self._credential,
            )
            self._token = None

    # --- state ----------------------------------------------------------------------------------

    def state(self) -> CredentialState:
        return CredentialState(
            credential=self._credential,
            method=self.fetcher.method,
            last_success_at=self._last_success,
            expires_at=self._token.expires_at if self._token is not None else None,
            error_kind=self._failure.kind if self._failure is not None else None,
            error=_bare(self._failure) if self._failure is not None else None,
            failures=self._failures,
            retry_at=self._retry_at,
        )

    # --- internals ------------------------------------------------------------------------------

    def _usable(self, token: AccessToken, now: float, *, ahead: bool) -> bool:
        if token.expires_at is None:
            return now - self._fetched_at < self._reuse and not self.fetcher.changed()
        margin = 0.0
        if ahead:
            lifetime = self._lifetime or 0.0
            margin = max(AHEAD_MIN, min(AHEAD_MAX, AHEAD_FRACTION * lifetime))
        return token.expires_at - now > margin

    async def _refresh(self) -> AccessToken:
        started = self._clock()
        self.refreshes += 1
        try:
            token = await self.fetcher.fetch(started)
        except TokenError as exc:
            self._failed(exc)
            raise
        except Exception as exc:  # a fetcher's bug must not look like a hang to every caller
            log.exception("credential %s: token refresh failed unexpectedly", self._credential)
            error = TokenError(TokenErrorKind.ENDPOINT, self._credential, type(exc).__name__)
            self._failed(error)
            raise error from None
        now = self._clock()
        self._token = token
        self._fetched_at = now
        self._lifetime = token.expires_at - started if token.expires_at is not None else None
        if self._failures:
            log.info("credential %s: token refresh works again", self._credential)
        self._failure = None
        self._failures = 0
        self._retry_at = None
        self._last_success = now
        persist_error: TokenError | None = getattr(self.fetcher, "persist_error", None)
        if persist_error is not None:
            log.error("credential %s: %s", self._credential, _bare(persist_error))
        self._report("ok", now, token.expires_at)
        return token

    def _failed(self, error: TokenError) -> None:
        now = self._clock()
        self._failure = error
        self._failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (self._failures - 1))
        self._retry_at = now + delay
        # Loud once, then quiet: a revoked credential would otherwise log every 15 min forever.
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        log.log(
            level,
            "credential %s: token refresh failed (%s): %s; next try in %.0f s",
            self._credential,
            error.kind,
            _bare(error),
            delay,
        )
        self._report(error.kind.value, now, None)

    def _report(self, result: str, at: float, expires_at: float | None) -> None:
        if self._on_refresh is not None:
            self._on_refresh(TokenRefreshed(self._credential, result, at, expires_at))

    def _landed(self, task: asyncio.Task[AccessToken]) -> None:
        self._flight = None
        if not task.cancelled():
            task.exception()  # retrieved here too: no "never retrieved" warning without callers


def _bare(error: TokenError) -> str:
    """The error's message without the "credential 'x': " prefix TokenError adds."""
    return str(error).removeprefix(f"credential {error.credential!r}: ")
