"""Benchmark: one status page view at 10,000 pairs, the list's first page, a later page, a filter.

    .venv/bin/python -m tests.benchmarks.status_page [--pairs 10000] [--rows 100000]

Method: a ledger shaped as in `tests.benchmarks.ledger_history` (N finished probes with the
agent's transcripts and arrivals spread over the pairs and 30 days, plus one probe in flight per
pair, so every pair has a latest probe to decode) and a config of R x M pairs (R = M =
sqrt(pairs)). It times, in this process, the part of a view that runs on the agent's event loop
(`collect`: the ledger reads) and the rest (`render`), median of five, for:

- before: what the page did before pagination (every pair's latest probe read in full with
  `latest_by_pair`, then the 100 worst ranked and rendered), rebuilt here from the same pieces;
- `/`, `/?page=50` and `/?route=r001&outcome=missing`: `collect` with that query and `render`.

The agent builds the page with `collect_in_steps` (the loop runs other work between steps of
`STEP_PAIRS` pairs): "longest step" is the most one step of it holds the loop (median of five
views of the longest), the figure the goal of 100 ms is about.

Nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.config import Config, validate_config
from agent.store.ledger import Ledger
from agent.web.status_page import (
    Health,
    PageData,
    PageQuery,
    collect,
    collect_in_steps,
    render,
)
from tests.benchmarks.ledger_history import NOW, _fill

HEALTH = Health("bench", True, "probing", NOW - 3600, True, NOW - 60)


def _config(side: int, directory: Path) -> Config:
    data = {
        "secret": "status-page-bench-secret-0123456",
        "routes": [
            {
                "name": f"r{index:03d}",
                "host": "smtp.example.com",
                "auth": {"username": "probe", "password": "bench-password"},
                "from": "probe@example.com",
            }
            for index in range(side)
        ],
        "mailboxes": [
            {
                "name": f"m{index:03d}",
                "host": "imap.example.com",
                "auth": {"username": f"m{index:03d}", "password": "bench-password"},
                "address": f"m{index:03d}@example.com",
            }
            for index in range(side)
        ],
    }
    return validate_config(data, base_dir=directory, environ={})


def _median(run: Callable[[], object], times: int = 5) -> float:
    spent = []
    for _ in range(times):
        begin = time.perf_counter()
        run()
        spent.append(time.perf_counter() - begin)
    return statistics.median(spent)


async def _longest_step(build: Callable[[], object]) -> float:
    """The longest stretch the loop was held while `build()` (a coroutine) ran: the time from
    each resumption of a second task, yielding after every loop iteration, to the next."""
    longest = 0.0
    done = False

    async def tick() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    ticking = asyncio.create_task(tick())
    await asyncio.sleep(0)
    await build()  # type: ignore[misc]
    done = True
    await ticking
    return longest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    side = math.isqrt(args.pairs - 1) + 1
    pairs = [(f"r{r:03d}", f"m{m:03d}") for r in range(side) for m in range(side)]
    print(__doc__.split("Method:", 1)[1].split("Nothing here", 1)[0].strip())
    print(
        f"\nmachine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
        f"{len(pairs)} pairs, {args.rows} finished probes\n"
    )
    print("| view | collect | longest step on the loop | render | total | page size |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="page-bench-") as workdir:
        path = Path(workdir) / "ledger.sqlite3"
        _fill(path, args.rows, pairs)
        config = _config(side, Path(workdir))
        with Ledger(path) as ledger:

            def before_collect() -> PageData:
                return PageData(
                    routes=tuple(route.name for route in config.routes),
                    mailboxes=tuple(mailbox.name for mailbox in config.mailboxes),
                    pairs=frozenset(pairs),
                    interval_seconds=config.probes.interval,
                    latest=ledger.latest_by_pair(pairs),
                    recent=tuple(ledger.recent(50)),
                    in_flight=sum(ledger.in_flight_counts().values()),
                    health=HEALTH,
                    now=NOW,
                )

            views: list[tuple[str, Callable[[], PageData]]] = [("before", before_collect)]
            for url in ("/", "/?page=50", "/?route=r001&outcome=missing"):
                query = PageQuery.parse(url.partition("?")[2])

                def after(query: PageQuery = query) -> PageData:
                    return collect(ledger, config, HEALTH, now=NOW, query=query)

                views.append((url, after))
            for name, build in views:
                data = build()
                collect_seconds = _median(build)
                render_seconds = _median(lambda data=data: render(data))  # type: ignore[misc]
                size = len(render(data).encode())
                total = (collect_seconds + render_seconds) * 1000
                if name == "before":
                    step = collect_seconds  # one call: all of it on the loop
                else:
                    query = PageQuery.parse(name.partition("?")[2])

                    def stepped(query: PageQuery = query) -> object:
                        return collect_in_steps(ledger, config, HEALTH, now=NOW, query=query)

                    step = statistics.median(asyncio.run(_longest_step(stepped)) for _ in range(5))
                print(
                    f"| {name} | {collect_seconds * 1000:.1f} ms | {step * 1000:.1f} ms "
                    f"| {render_seconds * 1000:.1f} ms | {total:.1f} ms | {size / 1000:.0f} KB |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
