"""Benchmark: the /metrics exposition and the series declaration, in this process, per pair count.

    .venv/bin/python -m tests.benchmarks.exposition [--pairs 100,1024,10000] [--repeat 3]

Method: for each N, a Recorder on a fresh registry declares R = M = sqrt(N) routes and seed
mailboxes (the budgeted series, as the agent at start), then:

- exposition: the CPU time (this thread) of prometheus_client's `generate_latest` and of the
  agent's `FastExposition.text()` / `.openmetrics()` on that registry (median of --repeat, after
  one warm-up each), the size, and whether the text outputs are byte for byte equal;
- gzip at level 6 (the agent's) and 9 (prometheus_client's) of the text;
- declaration: `declare_steps` driven as the agent drives it (collect the young generations and
  `gc.freeze` between steps): its total CPU and its longest step, then a reload that drops one
  mailbox and adds one route (total and longest step).
"""

from __future__ import annotations

import argparse
import functools
import gc
import gzip
import math
import statistics
import time
from collections.abc import Callable, Iterator

from prometheus_client import generate_latest

from agent.monitoring.catalog import new_registry
from agent.monitoring.exposition import FastExposition
from agent.monitoring.recorder import Recorder


def _pairs(routes: int, mailboxes: int) -> list[tuple[str, str]]:
    return [(f"r{i:03d}", f"m{j:03d}") for i in range(routes) for j in range(mailboxes)]


def _cpu(run: Callable[[], object], repeat: int) -> float:
    run()
    times = []
    for _ in range(repeat):
        begin = time.thread_time()
        run()
        times.append(time.thread_time() - begin)
    return statistics.median(times)


def _steps(steps: Iterator[None]) -> tuple[float, float, int]:
    """(total CPU, longest step, steps) of a declaration driven as Agent._declare drives it."""
    longest, total, count = 0.0, 0.0, 0
    while True:
        begin = time.thread_time()
        try:
            next(steps)
        except StopIteration:
            break
        finally:
            gc.collect(1)
            gc.freeze()
            spent = time.thread_time() - begin
            longest, total, count = max(longest, spent), total + spent, count + 1
    return total, longest, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="100,1024,10000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(__doc__)
    print(
        "| pairs | series | /metrics | generate_latest | fast text | fast OpenMetrics | equal "
        "| gzip 6 / 9 | declare at start (longest step, steps) | reload (longest step) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pairs in (int(n) for n in args.pairs.split(",")):
        side = math.isqrt(pairs - 1) + 1
        registry = new_registry()
        recorder = Recorder(registry)
        start, start_longest, start_steps = _steps(recorder.declare_steps(_pairs(side, side)))
        reloaded = [(r, m) for r, m in _pairs(side + 1, side) if m != "m000"]
        reload, reload_longest, _ = _steps(recorder.declare_steps(reloaded))
        gc.unfreeze()
        fast = FastExposition(registry)
        text = fast.text()
        equal = text == generate_latest(registry)
        theirs = _cpu(functools.partial(generate_latest, registry), args.repeat)
        ours = _cpu(fast.text, args.repeat)
        ours_om = _cpu(fast.openmetrics, args.repeat)
        gzip6 = _cpu(functools.partial(gzip.compress, text, compresslevel=6), args.repeat)
        gzip9 = _cpu(functools.partial(gzip.compress, text, compresslevel=9), args.repeat)
        series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
        print(
            f"| {side * side} | {series} | {len(text) / 1e6:.1f} MB | {theirs:.3f} s "
            f"| {ours:.3f} s | {ours_om:.3f} s | {equal} | {gzip6:.3f} / {gzip9:.3f} s "
            f"| {start:.2f} s ({start_longest * 1000:.0f} ms, {start_steps}) "
            f"| {reload:.3f} s ({reload_longest * 1000:.0f} ms) |"
        )


if __name__ == "__main__":
    main()
