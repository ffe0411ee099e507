"""Benchmark: what a credential's token source costs, against a scripted token endpoint.

    .venv/bin/python -m tests.benchmarks.token_refresh [--refreshes 30] [--callers 1000]

Method: the scripted endpoint of the tests (`tests/token_endpoint.py`, a threaded HTTP server on
127.0.0.1, over plain HTTP and over TLS with a trustme certificate) answers every refresh-token
request with a token. It times, in the agent's own code (`CachingTokenSource` over
`RefreshTokenGrant`): one refresh from a cold source (the request, TLS handshake included, and
reading the answer), median and p95 over `--refreshes`; `--callers` concurrent `access_token()`
calls on a cold source (how many requests they made, and how long until all had a token); and a
cached `access_token()`. Nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import trustme

from agent.oauth.endpoint import TokenEndpoint
from agent.oauth.grants import RefreshTokenGrant
from agent.oauth.lifecycle import CachingTokenSource
from agent.oauth.refresh_store import RefreshTokenStore
from tests.token_endpoint import TokenEndpointServer, token


async def _run(*, tls: bool, refreshes: int, callers: int, tmp: Path) -> str:
    ca = trustme.CA()
    context: ssl.SSLContext | None = None
    ca_file: Path | None = None
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        ca_file = tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
    with TokenEndpointServer([token("access")], tls=context) as server:
        store = RefreshTokenStore(tmp / "bench.refresh-token", credential="bench", configured="rt")
        endpoint = TokenEndpoint(server.url, credential="bench", timeout=10, ca_file=ca_file)
        grant = RefreshTokenGrant(endpoint, store, client_id="app", client_secret="s", scope="")
        times = []
        for _ in range(refreshes):
            cold = CachingTokenSource("bench", grant)
            started = time.perf_counter()
            await cold.access_token()
            times.append((time.perf_counter() - started) * 1000)
        shared = CachingTokenSource("bench", grant)
        before = len(server.requests)
        started = time.perf_counter()
        await asyncio.gather(*(shared.access_token() for _ in range(callers)))
        crowd_ms = (time.perf_counter() - started) * 1000
        requests = len(server.requests) - before
        started = time.perf_counter()
        for _ in range(10_000):
            await shared.access_token()
        cached_us = (time.perf_counter() - started) / 10_000 * 1e6
    p95 = sorted(times)[max(0, int(len(times) * 0.95) - 1)]
    return (
        f"{'https' if tls else 'http '}: refresh median {statistics.median(times):.1f} ms, "
        f"p95 {p95:.1f} ms; {callers} concurrent callers: {requests} request(s), all served in "
        f"{crowd_ms:.1f} ms; cached access_token() {cached_us:.1f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refreshes", type=int, default=30)
    parser.add_argument("--callers", type=int, default=1000)
    args = parser.parse_args()
    print(__doc__.split("\n\n", 2)[2].strip())
    with tempfile.TemporaryDirectory() as tmp:
        for tls in (False, True):
            line = asyncio.run(
                _run(tls=tls, refreshes=args.refreshes, callers=args.callers, tmp=Path(tmp))
            )
            print(line)


if __name__ == "__main__":
    main()
