"""No handler of the agent holds its event loop: a heartbeat measures the loop's CPU between beats.

The bound is on CPU time of the loop's thread, not wall time, so a busy machine (other processes
on the cores) cannot fail the test; only a callback that computes that long can. SMTP routes and
IMAP servers are 127.0.0.1 port 1: connections are refused at once, so every probe runs its whole
path (ledger, sender, outcome, recorder) without a mail system.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from agent import __version__
from agent.app.loop_watch import LoopWatch
from agent.app.service import Agent
from agent.config import Config, validate_config
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder
from agent.secrets import secret_values
from agent.web.status_page import Health, collect, render

# CPU seconds one loop iteration may take; the test's heartbeat interval (0.1 s, so that at most
# 0.1 s of ordinary work falls between two beats) is far below it.
# At 256 pairs the largest today is the series declaration at start (~0.35 s on the 2-core
# machine; 0.55 s at 400 pairs, 1.1 s at 1,024: Recorder.declare pre-creates ~68 series a pair
# in one call, which the series budget of issue 15 shrinks; then raise the pairs here).
BLOCK_BOUND_CPU_SECONDS = 1.0
HEARTBEAT = 0.1
ROUTES = MAILBOXES = 16


def _config(state_dir: Path, *, routes: int, mailboxes: int) -> Config:
    refused: dict[str, Any] = {"host": "127.0.0.1", "port": 1, "tls": "none"}
    data = {
        "state_dir": str(state_dir),
        "secret": "loop-blocking-test-secret-0123456789",
        "routes": [
            {"name": f"r{i:02d}", "from": "probe@bench.test", "ehlo_name": "bench.test", **refused}
            for i in range(routes)
        ],
        "mailboxes": [
            {
                "name": f"m{i:02d}",
                "address": f"seed{i:02d}@seed.test",
                "allow_plaintext_auth": True,
                "auth": {"username": f"seed{i:02d}", "password": "test-password-1"},
                **refused,
            }
            for i in range(mailboxes)
        ],
    }
    return validate_config(data, base_dir=state_dir, environ={})


def _page(agent: Agent) -> str:
    health = Health(
        version=__version__,
        ready=True,
        ready_detail="ready",
        started_at=time.time(),
        config_ok=True,
        config_loaded_at=time.time(),
        mailboxes_up=dict(agent.mailboxes_up()),
    )
    data = collect(agent.ledger, agent.config, health, now=time.time())
    return render(data, secrets=secret_values(agent.config))


async def test_no_handler_holds_the_event_loop_at_256_pairs(tmp_path: Path) -> None:
    watch = LoopWatch(interval=HEARTBEAT)
    watching = asyncio.create_task(watch.run())
    await watch.beat()  # measuring before the agent exists: its start is measured too
    try:
        agent = Agent(
            _config(tmp_path, routes=ROUTES, mailboxes=MAILBOXES), recorder=Recorder(new_registry())
        )
        await agent.start()
        try:
            finals = await agent.wait_final(await agent.probe_all_once())
            assert len(finals) == ROUTES * MAILBOXES
            await watch.beat()
            assert "r15" in _page(agent)  # the status page is built on the loop, as `run` does
            await agent.reload(_config(tmp_path, routes=ROUTES, mailboxes=MAILBOXES - 1))
            await agent.wait_final(await agent.probe_all_once())
        finally:
            await agent.stop()
        await watch.beat()
    finally:
        watching.cancel()

    assert watch.beats > 2
    assert watch.worst.cpu_seconds < BLOCK_BOUND_CPU_SECONDS, watch.worst


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
