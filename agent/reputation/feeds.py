"""The reputation feeds' schedule: one task per configured feed, off the probing path.

Each feed fetches at start, then every `interval` (jittered by up to a tenth, so agents started
together do not fetch together). A failed fetch is retried with exponential backoff from a minute
up to the interval, jittered (half to all of the step), never sooner than a Retry-After the
server sent: no retry storms. A fetch runs under one deadline (`timeout`); whatever a feed
answers, or a bug in reading it, is recorded as a failure of a kind and never ends the task.
Parsing of large bodies happens in a worker thread, so the event loop keeps probing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Final

from agent.config import GoogleReputation, MailAuth, Reputation, Snds
from agent.oauth.lifecycle import CachingTokenSource, CredentialState
from agent.reputation.http import FeedHttp
from agent.reputation.model import (
    Feed,
    FeedError,
    FeedErrorKind,
    FeedFailed,
    PostmasterFetched,
    SndsFetched,
)
from agent.reputation.postmaster import PostmasterClient
from agent.reputation.snds import SndsClient

__all__ = ["BACKOFF_FIRST", "FeedState", "ReputationFeeds", "backoff_delay"]

log = logging.getLogger(__name__)

BACKOFF_FIRST: Final = 60.0
# The Google feed's credential label; a colon, which no route or mailbox name has.
POSTMASTER_CREDENTIAL: Final = "reputation:google"

FeedResult = PostmasterFetched | SndsFetched | FeedFailed


def backoff_delay(
    failures: int, *, interval: float, retry_after: float | None, rng: random.Random
) -> float:
    """Seconds before retry number `failures` (1, 2, ...): a minute doubling up to `interval`,
    jittered to half..all of the step, and at least what the server asked for."""
    step = min(interval, BACKOFF_FIRST * float(2 ** min(failures - 1, 30)))
    delay = step * rng.uniform(0.5, 1.0)
    return max(delay, retry_after or 0.0)


@dataclass(frozen=True, slots=True)
class FeedState:
    """A feed's health for the status page (no key, no token)."""

    feed: Feed
    last_success: float | None = None
    last_error: FeedErrorKind | None = None
    last_error_message: str = ""
    last_error_at: float | None = None
    next_fetch: float | None = None
    failures: int = 0  # consecutive


class _Runner:
    def __init__(
        self,
        feed: Feed,
        fetch: Callable[[], Awaitable[list[FeedResult]]],
        *,
        interval: float,
        timeout: float,
        record: Callable[[FeedResult], None],
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.feed = feed
        self._fetch = fetch
        self._interval = interval
        self._timeout = timeout
        self._record = record
        self._clock = clock
        self._rng = rng
        self.state = FeedState(feed)
        self.fetched = asyncio.Event()  # set after each fetch ends (tests wait on it)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name=f"reputation:{self.feed.value}")

    async def _loop(self) -> None:
        while True:
            delay = await self.run_once()
            self.state = replace(self.state, next_fetch=self._clock() + delay)
            await asyncio.sleep(delay)

    async def run_once(self) -> float:
        """One fetch, recorded; the delay until the next."""
        try:
            return await self._fetch_and_record()
        finally:
            self.fetched.set()  # after the results are recorded

    async def _fetch_and_record(self) -> float:
        try:
            async with asyncio.timeout(self._timeout):
                results = await self._fetch()
        except TimeoutError:
            return self._failed(
                FeedError(FeedErrorKind.TIMEOUT, f"no answer within {self._timeout:g} s")
            )
        except FeedError as exc:
            return self._failed(exc)
        except Exception as exc:  # a bug reading a hostile answer must not end the feed
            log.exception("reputation feed %s: unexpected failure", self.feed.value)
            return self._failed(FeedError(FeedErrorKind.MALFORMED, type(exc).__name__))
        for result in results:
            self._record(result)
        failed = [r for r in results if isinstance(r, FeedFailed)]
        succeeded = any(not isinstance(r, FeedFailed) for r in results)
        if failed and not succeeded:
            last = failed[-1]
            return self._failed(FeedError(last.kind, last.message), recorded=True)
        self.state = replace(
            self.state,
            last_success=self._clock(),
            failures=0,
            last_error=failed[-1].kind if failed else None,
            last_error_message=failed[-1].message if failed else "",
            last_error_at=failed[-1].at if failed else None,
        )
        return self._interval * self._rng.uniform(0.9, 1.0)

    def _failed(self, exc: FeedError, *, recorded: bool = False) -> float:
        now = self._clock()
        if not recorded:
            self._record(FeedFailed(self.feed, exc.kind, now, str(exc)))
        failures = self.state.failures + 1
        log.warning("reputation feed %s: %s (%s)", self.feed.value, exc, exc.kind.value)
        self.state = replace(
            self.state,
            failures=failures,
            last_error=exc.kind,
            last_error_message=str(exc),
            last_error_at=now,
        )
        return backoff_delay(
            failures, interval=self._interval, retry_after=exc.retry_after, rng=self._rng
        )

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None


class ReputationFeeds:
    """Starts, keeps across reloads and stops the configured feeds."""

    def __init__(
        self,
        *,
        record: Callable[[FeedResult], None],
        token_source: Callable[[str, MailAuth], CachingTokenSource],
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._record = record
        self._token_source = token_source
        self._clock = clock
        self._rng = rng or random.Random()
        self._config: Reputation | None = None
        self._runners: dict[Feed, _Runner] = {}
        self._tokens: tuple[MailAuth, CachingTokenSource] | None = None
        self._stale: list[_Runner] = []  # replaced by configure(), cancelled, awaited by stop()

    @property
    def runners(self) -> dict[Feed, _Runner]:
        return self._runners

    def credentials(self) -> list[str]:
        """The OAuth credential the Google feed uses, for the credential series."""
        return [POSTMASTER_CREDENTIAL] if self._tokens is not None else []

    def token_states(self) -> list[CredentialState]:
        """The Google feed's credential state, beside the routes' and mailboxes' ones."""
        return [self._tokens[1].state()] if self._tokens is not None else []

    def states(self) -> list[FeedState]:
        return [runner.state for _, runner in sorted(self._runners.items())]

    def configure(self, config: Reputation | None) -> None:
        """Build the runners of `config` (not started); unchanged feeds keep theirs."""
        old = self._config
        self._config = config
        google = config.google if config is not None else None
        snds = config.snds if config is not None else None
        if google is None:
            self._tokens = None
        elif self._tokens is None or self._tokens[0] != google.auth:
            self._tokens = (google.auth, self._token_source(POSTMASTER_CREDENTIAL, google.auth))
        wanted: dict[Feed, _Runner] = {}
        if google is not None:
            same = old is not None and old.google == google and Feed.POSTMASTER in self._runners
            wanted[Feed.POSTMASTER] = (
                self._runners[Feed.POSTMASTER] if same else self._google_runner(google)
            )
        if snds is not None:
            same = old is not None and old.snds == snds and Feed.SNDS in self._runners
            wanted[Feed.SNDS] = self._runners[Feed.SNDS] if same else self._snds_runner(snds)
        replaced = [r for feed, r in self._runners.items() if wanted.get(feed) is not r]
        for runner in replaced:
            # Cancelled now (a reload need not reschedule); stop() awaits them.
            if runner.task is not None:
                runner.task.cancel()
        self._stale += replaced
        self._runners = wanted

    def start(self) -> None:
        """Start the runners not running yet (in the running loop)."""
        for runner in self._runners.values():
            if runner.task is None:
                runner.start()

    async def stop(self) -> None:
        for runner in (*self._runners.values(), *self._stale):
            await runner.stop()
        self._stale = []

    def _google_runner(self, google: GoogleReputation) -> _Runner:
        assert self._tokens is not None
        client = PostmasterClient(
            base_url=google.base_url,
            domains=google.domains,
            tokens=self._tokens[1],
            http=FeedHttp(ca_file=google.ca_file, timeout=google.timeout),
            days=google.days,
            clock=self._clock,
        )

        async def fetch() -> list[FeedResult]:
            fetched, errors = await client.fetch()
            failures: list[FeedResult] = [
                FeedFailed(Feed.POSTMASTER, exc.kind, self._clock(), str(exc)) for exc in errors
            ]
            return [fetched, *failures] if fetched.domains or not errors else failures

        return _Runner(
            Feed.POSTMASTER,
            fetch,
            interval=google.interval,
            timeout=google.timeout,
            record=self._record,
            clock=self._clock,
            rng=self._rng,
        )

    def _snds_runner(self, snds: Snds) -> _Runner:
        client = SndsClient(
            base_url=snds.base_url,
            key=snds.key.get_secret_value(),
            ips=snds.ips,
            cap=snds.max_ips,
            http=FeedHttp(ca_file=snds.ca_file, timeout=snds.timeout),
            clock=self._clock,
        )

        async def fetch() -> list[FeedResult]:
            return [await client.fetch()]

        return _Runner(
            Feed.SNDS,
            fetch,
            interval=snds.interval,
            timeout=snds.timeout,
            record=self._record,
            clock=self._clock,
            rng=self._rng,
        )
