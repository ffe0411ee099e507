"""No handler of the agent holds its event loop: a heartbeat measures the loop's CPU between beats.

The bound is on CPU time of the loop's thread, not wall time, so a busy machine (other processes
on the cores) cannot fail the test; only a callback that computes that long can. SMTP routes and
IMAP servers are 127.0.0.1 port 1: connections are refused at once, so every probe runs its whole
path (ledger, sender, outcome, recorder) without a mail system.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from agent import __version__
from agent.app.loop_watch import LoopWatch
from agent.app.service import Agent
from agent.model import Outcome, SmtpReply, Stage
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder
from agent.secrets import secret_values
from agent.store.ledger import LEDGER_FILENAME, Ledger, transcript_json
from agent.web.status_page import Health, PageQuery, collect_in_steps, render
from tests.refused_config import refused_config

# CPU seconds the loop may be held between two heartbeats. A beat comes at most HEARTBEAT after
# the previous one, so what falls between two is up to HEARTBEAT of ordinary work plus the one
# callback that held the loop: the bound proves no callback took more than ~0.13 s of CPU (goal
# 0.1 s). Measured worst between beats on the 2-core machine at 10,000 pairs: 0.08-0.11 s, at
# start (1.6 s with the declaration in one callback; 0.10-0.18 s with steps twice as large, and
# the test's own config validation counted); the margin is for a loaded machine. The series
# declaration, ~1.5 s of CPU at 10,000 pairs, runs in steps of ~6-10 ms (Recorder.declare_steps).
BLOCK_BOUND_CPU_SECONDS = 0.15
HEARTBEAT = 0.02
# The status page views at 10,000 pairs, against the goal (loop never held > 0.1 s):
# built in steps, measured worst 0.042-0.069 s of CPU between beats (0.119 s once in CI before the
# ranking too ran in steps and the folder-listing retries were jittered); in one callback (the
# build before) 0.103-0.196 s, so this bound fails that build in most runs, not in every one.
PAGE_BOUND_CPU_SECONDS = 0.1
ROUTES = MAILBOXES = 16
LARGE = 100  # routes and mailboxes: 10,000 pairs


async def _page(agent: Agent, query: str = "") -> str:
    """The status page as `run` builds it on the loop: `collect_in_steps`, then `render`."""
    health = Health(
        version=__version__,
        ready=True,
        ready_detail="ready",
        started_at=time.time(),
        config_ok=True,
        config_loaded_at=time.time(),
        mailboxes_up=dict(agent.mailboxes_up()),
    )
    data = await collect_in_steps(
        agent.ledger, agent.config, health, now=time.time(), query=PageQuery.parse(query)
    )
    return render(data, secrets=secret_values(agent.config))


def _history(state_dir: Path, *, routes: int, mailboxes: int, per_pair: int) -> None:
    """`per_pair` finished probes of every pair in the ledger before the agent starts, so the
    status page ranks 10,000 pairs that all have a latest probe (refused probes would take
    10,000 sends to get there)."""
    Ledger(state_dir / LEDGER_FILENAME).close()  # the schema, as the agent creates it
    transcript = transcript_json([SmtpReply(Stage.BANNER, 220, None, "refused.test ESMTP")])
    outcomes = (Outcome.INBOX, Outcome.SPAM, Outcome.MISSING)
    now = time.time()
    conn = sqlite3.connect(state_dir / LEDGER_FILENAME)
    with conn:
        conn.executemany(
            "INSERT INTO probes (probe_id, route, mailbox, created_at, deadline_at, accepted,"
            " accepted_at, send_duration_seconds, transcript, outcome, finished_at)"
            " VALUES (?, ?, ?, ?, ?, 1, ?, 0.4, ?, ?, ?)",
            (
                (
                    f"history{r:03d}{m:03d}{k:02d}",
                    f"r{r:03d}",
                    f"m{m:03d}",
                    created,
                    created + 600,
                    created + 1,
                    transcript,
                    outcomes[(r + m + k) % len(outcomes)].value,
                    created + 5,
                )
                for r in range(routes)
                for m in range(mailboxes)
                for k in range(per_pair)
                for created in (now - 3600.0 * (per_pair - k),)
            ),
        )
    conn.close()


async def test_no_handler_holds_the_event_loop_at_256_pairs(tmp_path: Path) -> None:
    watch = LoopWatch(interval=HEARTBEAT)
    watching = asyncio.create_task(watch.run())
    await watch.beat()  # measuring before the agent exists: its start is measured too
    try:
        agent = Agent(
            refused_config(tmp_path, routes=ROUTES, mailboxes=MAILBOXES),
            recorder=Recorder(new_registry()),
        )
        await agent.start()
        try:
            finals = await agent.wait_final(await agent.probe_all_once())
            assert len(finals) == ROUTES * MAILBOXES
            await watch.beat()
            assert "r015" in await _page(agent)  # the status page is built on the loop
            await agent.reload(refused_config(tmp_path, routes=ROUTES, mailboxes=MAILBOXES - 1))
            await agent.wait_final(await agent.probe_all_once())
        finally:
            await agent.stop()
        await watch.beat()
    finally:
        watching.cancel()

    assert watch.beats > 2
    assert watch.worst.cpu_seconds < BLOCK_BOUND_CPU_SECONDS, watch.worst


async def test_no_handler_holds_the_event_loop_at_10000_pairs(tmp_path: Path) -> None:
    """Start, probes, status page views, a reload that drops a mailbox and adds a route, and
    stop, at 100 routes x 100 mailboxes: declaring 130k series runs in steps, the page ranks the
    pairs in steps, a reload declares only what changed."""
    # Not measured, the test's own work: the history, and the configs (~20 ms each to validate).
    _history(tmp_path, routes=LARGE, mailboxes=LARGE, per_pair=3)
    config = refused_config(tmp_path, routes=LARGE, mailboxes=LARGE)
    bigger = refused_config(tmp_path, routes=LARGE + 1, mailboxes=LARGE - 1)
    watch = LoopWatch(interval=HEARTBEAT)
    watching = asyncio.create_task(watch.run())
    await watch.beat()
    try:
        agent = Agent(config, recorder=Recorder(new_registry()))
        await agent.start()
        try:
            # One route to every mailbox: the probe path with 10,000 pairs' series in place.
            sending = []
            for j in range(LARGE):  # one probe's start per loop iteration, as probe_all_once
                sending.append(asyncio.ensure_future(agent.probe_pair("r000", f"m{j:03d}")))
                await asyncio.sleep(0)
            sent = await asyncio.gather(*sending)
            finals = await agent.wait_final([probe for probe in sent if probe is not None])
            assert len(finals) == LARGE
            await watch.beat()
            # The status page ranks all 10,000 pairs' latest outcomes (30,000 probes stored)
            # in steps: the list's first page, a later page and a filter, on the loop as `run`.
            paging = LoopWatch(interval=HEARTBEAT)  # the views alone, against a tighter bound
            watching_pages = asyncio.create_task(paging.run())
            await paging.beat()
            first = await _page(agent)
            assert "1-100 of 10000 pairs" in first and "r000" in first
            assert "page 100 of 100" in await _page(agent, "page=100")
            assert "1-100 of 100 matching pairs" in await _page(agent, "mailbox=m007")
            await paging.beat()
            watching_pages.cancel()
            await watch.beat()
            await agent.reload(bigger)
            await watch.beat()
        finally:
            await agent.stop()
        await watch.beat()
    finally:
        watching.cancel()

    assert watch.beats > 10
    assert watch.worst.cpu_seconds < BLOCK_BOUND_CPU_SECONDS, watch.worst
    assert paging.beats > 3
    assert paging.worst.cpu_seconds < PAGE_BOUND_CPU_SECONDS, paging.worst


def _compute(cpu_seconds: float) -> None:
    """A handler that holds the loop: it computes for `cpu_seconds` of its thread's CPU."""
    until = time.thread_time() + cpu_seconds
    while time.thread_time() < until:
        pass


async def test_the_watch_reports_a_handler_that_holds_the_loop() -> None:
    watch = LoopWatch(interval=HEARTBEAT)
    watching = asyncio.create_task(watch.run())
    await watch.beat()
    asyncio.get_running_loop().call_soon(_compute, BLOCK_BOUND_CPU_SECONDS + 0.2)
    await watch.beat()
    watching.cancel()

    assert watch.worst.cpu_seconds > BLOCK_BOUND_CPU_SECONDS
    assert watch.worst.lag_seconds > BLOCK_BOUND_CPU_SECONDS  # it also held the wall clock


async def test_the_watch_records_every_beat_as_event_loop_lag() -> None:
    registry = new_registry()
    watch = LoopWatch(Recorder(registry))
    watching = asyncio.create_task(watch.run())
    await watch.beat()
    await watch.beat()
    watching.cancel()

    count = registry.get_sample_value("deliverability_event_loop_lag_seconds_count")
    assert count == watch.beats
