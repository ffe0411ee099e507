"""Benchmark: the ledger's start-up, prune and page paths with a month of history or more.

    .venv/bin/python -m tests.benchmarks.ledger_history [--rows 10000,100000,1000000] [--pairs 1000]

Method: for each row count N it creates a fresh ledger file (every migration, as the agent does),
then writes N finished probes spread over the pairs and over 30 days, shaped like the agent's
rows (a transcript of six SMTP replies as the agent stores it, an arrival with verdicts), plus one
probe in flight per pair, straight through SQLite in one transaction. Then, on a new Ledger on
that file (a cold start of the agent's process, the OS page cache warm), it times the queries the
agent runs:

- start: `last_finished_at(pairs)` (restores the last-outcome gauges), `unsent_interrupted()`,
  `in_flight()` and `in_flight_counts()`;
- page: `latest_by_pair(pairs)`, `recent(50)`, `in_flight_counts()` (what the status page reads);
- prune: `prune()` of the oldest day (1/30 of the rows), as the hourly sweep does after a day.

Each figure is the median of three runs (prune: one run on each of three copies is too costly,
so one run). Nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.model import Outcome, SmtpReply, Stage
from agent.store.ledger import Ledger, transcript_json

DAY = 86400.0
NOW = 1_800_000_000.0
_TRANSCRIPT = transcript_json(
    SmtpReply(Stage(stage), code, enhanced, text)
    for stage, code, enhanced, text in (
        ("banner", 220, None, "smtp.example.com ESMTP Postfix (Debian/GNU) ready " + "x" * 60),
        ("ehlo", 250, None, "smtp.example.com PIPELINING SIZE 10240000 ETRN STARTTLS " * 3),
        ("starttls", 220, "2.0.0", "Ready to start TLS"),
        ("auth", 235, "2.7.0", "Authentication successful"),
        ("mail", 250, "2.1.0", "Ok"),
        ("end_of_data", 250, "2.0.0", "Ok: queued as 4Y8kXw2QqPz9" + "y" * 300),
    )
)
_ARRIVAL = json.dumps(
    {
        "folder": "INBOX",
        "placement": "inbox",
        "seen_at": NOW,
        "found_by": "push",
        "auth": {"spf": "pass", "dkim": "pass", "dmarc": "pass", "arc": None},
    }
)


def _pairs(count: int) -> list[tuple[str, str]]:
    side = max(1, int(count**0.5))
    return [(f"r{r:03d}", f"m{m:03d}") for r in range(side) for m in range(count // side)]


def _fill(path: Path, rows: int, pairs: list[tuple[str, str]]) -> None:
    Ledger(path).close()  # schema and every migration, as the agent creates it
    conn = sqlite3.connect(path)
    outcomes = [Outcome.INBOX, Outcome.INBOX, Outcome.INBOX, Outcome.SPAM, Outcome.MISSING]
    step = 30 * DAY / rows
    with conn:
        conn.executemany(
            "INSERT INTO probes (probe_id, route, mailbox, created_at, deadline_at, accepted,"
            " accepted_at, send_duration_seconds, transcript, outcome, finished_at, folder,"
            " latency_seconds, arrival)"
            " VALUES (?, ?, ?, ?, ?, 1, ?, 0.4, ?, ?, ?, 'INBOX', 4.0, ?)",
            (
                (
                    f"{index:026d}",
                    *pairs[index % len(pairs)],
                    NOW - 30 * DAY + index * step,
                    NOW - 30 * DAY + index * step + 600,
                    NOW - 30 * DAY + index * step + 1,
                    _TRANSCRIPT,
                    outcomes[index % len(outcomes)].value,
                    NOW - 30 * DAY + index * step + 5,
                    _ARRIVAL,
                )
                for index in range(rows)
            ),
        )
        conn.executemany(
            "INSERT INTO probes (probe_id, route, mailbox, created_at, deadline_at, accepted,"
            " accepted_at, transcript) VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
            (
                (f"open{index:022d}", route, mailbox, NOW, NOW + 600, NOW + 1, _TRANSCRIPT)
                for index, (route, mailbox) in enumerate(pairs)
            ),
        )
    conn.close()


def _median(run: Callable[[], object], times: int = 3) -> float:
    spent = []
    for _ in range(times):
        begin = time.perf_counter()
        run()
        spent.append(time.perf_counter() - begin)
    return statistics.median(spent)


def _measure(rows: int, pairs: list[tuple[str, str]], workdir: Path) -> dict[str, float]:
    path = workdir / f"ledger-{rows}.sqlite3"
    _fill(path, rows, pairs)
    size = path.stat().st_size
    with Ledger(path) as ledger:

        def start() -> None:
            ledger.last_finished_at(pairs)
            ledger.unsent_interrupted()
            ledger.in_flight()
            ledger.in_flight_counts()

        def page() -> None:
            ledger.latest_by_pair(pairs)
            ledger.recent(50)
            ledger.in_flight_counts()

        figures = {"size_mb": size / 1e6, "start": _median(start), "page": _median(page)}
        begin = time.perf_counter()
        pruned = ledger.prune(older_than=NOW - 29 * DAY)
        figures["prune"] = time.perf_counter() - begin
        figures["pruned"] = float(pruned)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000,1000000")
    parser.add_argument("--pairs", type=int, default=1000)
    args = parser.parse_args()
    pairs = _pairs(args.pairs)
    print(__doc__.split("Method:", 1)[1].split("Nothing here", 1)[0].strip())
    print(
        f"\nmachine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, SQLite "
        f"{sqlite3.sqlite_version}; {len(pairs)} pairs\n"
    )
    print("| finished rows | file | start | page | prune (rows) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as workdir:
        for rows in (int(value) for value in args.rows.split(",")):
            f = _measure(rows, pairs, Path(workdir))
            print(
                f"| {rows} | {f['size_mb']:.0f} MB | {f['start'] * 1000:.1f} ms "
                f"| {f['page'] * 1000:.1f} ms | {f['prune'] * 1000:.1f} ms ({f['pruned']:.0f}) |",
                flush=True,
            )
            (Path(workdir) / f"ledger-{rows}.sqlite3").unlink()


if __name__ == "__main__":
    main()
