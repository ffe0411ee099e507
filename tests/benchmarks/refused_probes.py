"""Benchmark: the agent's own CPU per probe as the pair count grows, with servers that refuse.

    .venv/bin/python -m tests.benchmarks.refused_probes [--pairs 100,1024,10000] [--rounds 3]
        [--event-loop uvloop|asyncio]

Method: for each N, an agent in this process with R = M = sqrt(N) routes and seed mailboxes, every
SMTP and IMAP server 127.0.0.1 port 1 (connections refused at once, so no mail system costs
anything and each probe runs the agent's whole path for a failed send: its message, the ledger
row before the send, the connect, the result and the outcome in the ledger, the recorder). After
one warm-up round, `probe_all_once` probes every pair `--rounds` times; the figure is the median
round's CPU time of this process (user + system, all threads) divided by the probes of the round.
Start-up (series declaration) is not in it: `tests.benchmarks.scale` measures that. The loop is
the one `run` uses (uvloop where installed) unless `--event-loop` says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
import time
from pathlib import Path

from agent.app import event_loop
from agent.app.event_loop import EventLoopKind
from agent.app.service import Agent
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder
from tests.refused_config import refused_config


async def _cpu_per_probe(pairs: int, rounds: int) -> tuple[int, float]:
    side = math.isqrt(pairs)
    with tempfile.TemporaryDirectory() as tmp:
        agent = Agent(
            refused_config(Path(tmp), routes=side, mailboxes=side),
            recorder=Recorder(new_registry()),
        )
        await agent.start()
        try:
            await agent.wait_final(await agent.probe_all_once())
            figures = []
            for _ in range(rounds):
                started = time.process_time()
                probe_ids = await agent.probe_all_once()
                await agent.wait_final(probe_ids)
                figures.append((time.process_time() - started) / len(probe_ids))
        finally:
            await agent.stop()
    return side * side, statistics.median(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="100,1024,10000")
    parser.add_argument("--rounds", type=int, default=3)
    event_loop.add_event_loop_option(parser)
    args = parser.parse_args()
    kind = EventLoopKind(args.event_loop)
    logging.disable(logging.CRITICAL)  # every probe fails; its log lines are not the point
    results = [
        event_loop.run(_cpu_per_probe(int(size), args.rounds), kind)
        for size in args.pairs.split(",")
    ]
    print(__doc__.split("Method: ")[1].strip())
    print(f"\n{kind} event loop")
    for pairs, cpu in results:
        print(f"{pairs:6d} pairs: {cpu * 1000:6.2f} ms CPU per probe")


if __name__ == "__main__":
    main()
