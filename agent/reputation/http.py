"""One HTTPS request of a reputation feed, its failures mapped to `FeedErrorKind`.

Async httpx under one deadline (the caller's `asyncio.timeout` over a whole fetch; httpx's own
timeout only as a backstop), a size cap read as the body streams in, and no redirects. Messages
name the URL without its query string: SNDS carries its key there.
"""

from __future__ import annotations

import email.utils
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx

from agent.reputation.model import FeedError, FeedErrorKind

__all__ = ["MAX_BODY", "FeedHttp", "retry_after_seconds"]

# The largest answer read: a Postmaster query for 7 days x 15 metrics is ~30 KB and an SNDS CSV
# ~200 bytes per IP and period; 8 MiB holds tens of thousands of IPs. More is not the feed.
MAX_BODY: Final = 8 << 20
_MAX_RETRY_AFTER: Final = 86400.0  # a server asking for more than a day is capped at a day


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    retry_after: float | None


def retry_after_seconds(value: str | None, *, now: float) -> float | None:
    """RFC 9110 Retry-After: delay-seconds or an HTTP-date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - now), _MAX_RETRY_AFTER)


def _public(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class FeedHttp:
    """Sends a feed's requests; raises FeedError with a kind on every failure."""

    def __init__(self, *, ca_file: Path | None, timeout: float, max_body: int = MAX_BODY) -> None:
        self._timeout = timeout  # httpx's own, a backstop: the fetch's deadline is the bound
        self._verify = ssl.create_default_context(
            cafile=str(ca_file) if ca_file is not None else None
        )
        self._max_body = max_body

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        json: Any = None,
    ) -> bytes:
        """The body of a 200 answer; every other answer is a FeedError."""
        answer = await self._send(method, url, headers=headers or {}, json=json)
        if answer.status == 200:
            return answer.body
        where = _public(url)
        if answer.status == 401:
            raise FeedError(FeedErrorKind.AUTH, f"{where} refused the credential (HTTP 401)")
        if answer.status == 403:
            raise FeedError(
                FeedErrorKind.PERMISSION_DENIED, f"{where} denied permission (HTTP 403)"
            )
        if answer.status == 429:
            raise FeedError(
                FeedErrorKind.QUOTA,
                f"{where} is rate limiting (HTTP 429)",
                retry_after=answer.retry_after,
            )
        raise FeedError(
            FeedErrorKind.ENDPOINT,
            f"{where} answered HTTP {answer.status}",
            retry_after=answer.retry_after if answer.status == 503 else None,
        )

    async def _send(self, method: str, url: str, *, headers: dict[str, str], json: Any) -> _Answer:
        where = _public(url)
        try:
            async with (
                httpx.AsyncClient(
                    verify=self._verify, timeout=self._timeout, follow_redirects=False
                ) as client,
                client.stream(method, url, headers=headers, json=json) as response,
            ):
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self._max_body:
                        raise FeedError(
                            FeedErrorKind.ENDPOINT,
                            f"{where} answered more than {self._max_body} bytes",
                        )
                    chunks.append(chunk)
                return _Answer(
                    response.status_code,
                    b"".join(chunks),
                    retry_after_seconds(response.headers.get("Retry-After"), now=time.time()),
                )
        except httpx.TimeoutException:
            raise FeedError(
                FeedErrorKind.TIMEOUT, f"{where} did not answer within {self._timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise FeedError(
                FeedErrorKind.ENDPOINT, f"{where} unreachable: {type(exc).__name__}"
            ) from None
