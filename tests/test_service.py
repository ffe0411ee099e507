"""Service behaviour that needs no real mail system: overlap guard, scheduling, recovery."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.app.service import Agent, pair_phase
from agent.config import Config
from agent.model import Arrival, ErrorKind, Outcome, ProbeStarted, SendResult, SmtpReply, Stage
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder, Result
from agent.probing.reaper import reap
from agent.store.ledger import Ledger, ProbeState
from tests.agent_process import WAIT
from tests.one_pair_config import one_pair_config
from tests.scripted_smtp import Hang, Script, ScriptedSmtpServer


def _config(tmp_path: Path, smtp_port: int, **probes: Any) -> Config:
    return one_pair_config(
        tmp_path,
        smtp_port=smtp_port,
        route={"timeouts": {"connect": "1s", "stage": "1s", "total": "1s"}},
        probes=probes,
    )


async def test_a_pair_never_has_two_probes_sending_at_once(tmp_path: Path) -> None:
    async with ScriptedSmtpServer(Script(replies={Stage.DATA: Hang()})) as server:
        agent = Agent(_config(tmp_path, server.port), recorder=Recorder(new_registry()))
        await agent.start()
        try:
            first = asyncio.create_task(agent.probe_pair("r", "m"))
            await server.wait_for_session(0)
            assert await agent.probe_pair("r", "m") is None  # skipped, not queued
            probe_id = await first
            assert probe_id is not None
            record = agent.ledger.get(probe_id)
            assert record is not None
            assert record.outcome is Outcome.ERROR
            assert record.send_error is not None and record.send_error.kind is ErrorKind.TIMEOUT
            assert len(server.sessions) == 1
        finally:
            await agent.stop()


async def test_schedule_creates_one_non_overlapping_job_per_pair(tmp_path: Path) -> None:
    agent = Agent(
        _config(tmp_path, 25, interval="10m", jitter="30s"), recorder=Recorder(new_registry())
    )
    await agent.start()
    try:
        agent.schedule()
        jobs = agent.scheduled_jobs()
        assert [job.id for job in jobs] == ["probe:r:m"]
        assert jobs[0].max_instances == 1
        assert jobs[0].coalesce is True
        assert jobs[0].trigger.interval.total_seconds() == 600
        assert jobs[0].trigger.jitter == 30
    finally:
        await agent.stop()


async def test_spread_start_gives_each_pair_a_fixed_phase_spread_over_the_interval(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, 25, interval="10m", jitter="0s", start="spread")
    agent = Agent(config, recorder=Recorder(new_registry()))
    await agent.start()
    try:
        before = time.time()
        agent.schedule()
        (job,) = agent.scheduled_jobs()
        first = job.next_run_time.timestamp()
        # The pair's phase of the interval, from now on: within one interval, at its phase.
        assert before <= first < before + 600
        assert (first - pair_phase("r", "m") * 600) % 600 == pytest.approx(0, abs=1e-3)
        agent.schedule()  # a reload schedules again: the same instant, no herd
        (again,) = agent.scheduled_jobs()
        assert again.next_run_time.timestamp() == pytest.approx(first, abs=1e-3)
    finally:
        await agent.stop()


class StartedRecorder(Recorder):
    """Sets `started` when a scheduled probe job reports its lag."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.started = asyncio.Event()

    def record(self, result: Result) -> None:
        super().record(result)
        if isinstance(result, ProbeStarted):
            self.started.set()


async def test_scheduled_probe_jobs_report_how_late_they_started(tmp_path: Path) -> None:
    registry = new_registry()
    recorder = StartedRecorder(registry)
    agent = Agent(_config(tmp_path, 1), recorder=recorder)  # port 1: the send fails at once
    await agent.start()
    try:
        agent.schedule()  # start: immediate (the test config), so the job runs within a second
        async with asyncio.timeout(WAIT):
            await recorder.started.wait()
        name = "deliverability_scheduler_lag_seconds"
        assert registry.get_sample_value(f"{name}_count") == 1
        lag = registry.get_sample_value(f"{name}_sum")
        assert lag is not None and lag >= 0
    finally:
        await agent.stop()


def test_pair_phases_are_stable_and_spread_evenly() -> None:
    assert pair_phase("r", "m") == pair_phase("r", "m")
    assert pair_phase("r", "m") != pair_phase("m", "r")
    # 10,000 pairs over ten slices of the interval: each slice holds close to a tenth. (The
    # hash is fixed, so this is a property of the function, not a chance outcome.)
    slices = [0] * 10
    for route in range(100):
        for mailbox in range(100):
            slices[int(pair_phase(f"r{route:03d}", f"m{mailbox:03d}") * 10)] += 1
    assert min(slices) > 900 and max(slices) < 1100, slices


async def test_start_gives_probes_interrupted_mid_send_their_one_outcome(tmp_path: Path) -> None:
    config = _config(tmp_path, 25)
    now = time.time()
    with Ledger.in_state_dir(config.state_dir) as ledger:
        # Killed mid-transaction: no send result was ever stored.
        ledger.record_sending(
            probe_id="00000000000000000000000001",
            route="r",
            mailbox="m",
            created_at=now,
            deadline_at=now + 60,
        )
        # Killed after a 5xx was stored but before the outcome was.
        ledger.record_sending(
            probe_id="00000000000000000000000002",
            route="r",
            mailbox="m",
            created_at=now,
            deadline_at=now + 60,
        )
        ledger.record_send_result(
            "00000000000000000000000002",
            SendResult(
                transcript=(SmtpReply(Stage.RCPT, 550, "5.1.1", "no such user"),),
                accepted=False,
                accepted_at=None,
                duration_seconds=0.1,
            ),
        )
    registry = new_registry()
    agent = Agent(config, recorder=Recorder(registry))
    await agent.start()
    try:
        interrupted = agent.ledger.get("00000000000000000000000001")
        rejected = agent.ledger.get("00000000000000000000000002")
        # The server may have taken the interrupted one: it waits for its arrival.
        assert interrupted is not None and interrupted.state is ProbeState.INTERRUPTED
        assert rejected is not None and rejected.outcome is Outcome.REJECTED
        labels = {"route": "r", "mailbox": "m"}
        assert (
            registry.get_sample_value(
                "deliverability_probes_total", {**labels, "outcome": "rejected"}
            )
            == 1
        )
        assert registry.get_sample_value("deliverability_probes_in_flight", labels) == 1
        # Unseen by its deadline, it is an error (nobody knows it was accepted), not missing.
        assert reap(agent.ledger, agent.outcomes, now=now + 61) == 1
        interrupted = agent.ledger.get("00000000000000000000000001")
        assert interrupted is not None and interrupted.outcome is Outcome.ERROR
        for outcome, count in (("error", 1), ("missing", 0)):
            assert (
                registry.get_sample_value(
                    "deliverability_probes_total", {**labels, "outcome": outcome}
                )
                == count
            )
        assert registry.get_sample_value("deliverability_probes_in_flight", labels) == 0
    finally:
        await agent.stop()


async def test_a_second_restart_keeps_an_interrupted_probe_waiting(tmp_path: Path) -> None:
    config = _config(tmp_path, 25)
    now = time.time()
    with Ledger.in_state_dir(config.state_dir) as ledger:
        ledger.record_sending(
            probe_id="00000000000000000000000001",
            route="r",
            mailbox="m",
            created_at=now,
            deadline_at=now + 60,
        )
    for _ in range(2):
        agent = Agent(config, recorder=Recorder(new_registry()))
        await agent.start()
        try:
            record = agent.ledger.get("00000000000000000000000001")
            assert record is not None and record.state is ProbeState.INTERRUPTED
        finally:
            await agent.stop()


async def test_finished_probes_past_retention_are_pruned_and_probes_in_flight_kept(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, 25, retention="1h", deadline="3h")
    now = time.time()
    with Ledger.in_state_dir(config.state_dir) as ledger:
        for probe_id, age in (
            ("0000000000000000000000000a", 7200),
            ("0000000000000000000000000b", 60),
        ):
            ledger.record_sending(
                probe_id=probe_id,
                route="r",
                mailbox="m",
                created_at=now - age,
                deadline_at=now + 3600,
            )
        ledger.finalize("0000000000000000000000000a", outcome=Outcome.ERROR, finished_at=now - 7000)
        ledger.finalize("0000000000000000000000000b", outcome=Outcome.ERROR, finished_at=now - 50)
        ledger.record_sending(
            probe_id="0000000000000000000000000c",
            route="r",
            mailbox="m",
            created_at=now - 9000,
            deadline_at=now + 3600,
        )
    agent = Agent(config, recorder=Recorder(new_registry()))
    await agent.start()
    try:
        await asyncio.wait_for(agent.swept.wait(), WAIT)  # the reaper's first sweep, at start
        remaining = {r.probe_id for r in agent.ledger.recent(10)}
    finally:
        await agent.stop()
    assert remaining == {"0000000000000000000000000b", "0000000000000000000000000c"}


async def test_stop_cancels_sends_still_running_after_the_drain_timeout(tmp_path: Path) -> None:
    async with ScriptedSmtpServer(Script(replies={Stage.DATA: Hang()})) as server:
        config = _config(tmp_path, server.port)
        agent = Agent(config, recorder=Recorder(new_registry()))
        await agent.start()
        sending = asyncio.create_task(agent.probe_pair("r", "m"))
        await server.wait_for_session(0)
        await agent.stop(drain_timeout=0.01)
        assert await sending is None  # cut by the shutdown: no id, and no exception
    with Ledger.in_state_dir(config.state_dir) as ledger:
        (record,) = ledger.in_flight()
        assert record.state is ProbeState.SENDING  # its one outcome comes at the next start


async def test_a_scheduled_send_cut_by_shutdown_logs_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with ScriptedSmtpServer(Script(replies={Stage.DATA: Hang()})) as server:
        config = _config(tmp_path, server.port)
        agent = Agent(config, recorder=Recorder(new_registry()))
        await agent.start()
        agent.schedule()  # the first run comes within a second (no jitter)
        await server.wait_for_session(0)
        with caplog.at_level(logging.INFO):
            await agent.stop(drain_timeout=0.01)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    with Ledger.in_state_dir(config.state_dir) as ledger:
        (record,) = ledger.in_flight()
        assert record.state is ProbeState.SENDING  # its one outcome comes at the next start


async def test_start_finalizes_probes_seen_before_the_restart_from_their_stored_arrival(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, 25)
    now = time.time()
    sending, awaiting = "00000000000000000000000003", "00000000000000000000000004"
    with Ledger.in_state_dir(config.state_dir) as ledger:
        for probe_id in (sending, awaiting):
            ledger.record_sending(
                probe_id=probe_id, route="r", mailbox="m", created_at=now, deadline_at=now + 60
            )
        # Seen in Junk, then killed before the 250 was stored.
        ledger.record_arrival(Arrival(sending, "m", "Junk", Outcome.SPAM, now + 2))
        # Accepted and seen, then killed before the outcome was stored.
        ledger.record_send_result(
            awaiting,
            SendResult(
                transcript=(SmtpReply(Stage.END_OF_DATA, 250, "2.0.0", "queued"),),
                accepted=True,
                accepted_at=now + 1,
                duration_seconds=0.1,
            ),
        )
        ledger.record_arrival(Arrival(awaiting, "m", "INBOX", Outcome.INBOX, now + 3))
    registry = new_registry()
    agent = Agent(config, recorder=Recorder(registry))
    await agent.start()
    try:
        first, second = agent.ledger.get(sending), agent.ledger.get(awaiting)
        assert first is not None and second is not None
        assert (first.outcome, first.folder, first.latency_seconds) == (Outcome.SPAM, "Junk", None)
        assert (second.outcome, second.folder, second.latency_seconds) == (
            Outcome.INBOX,
            "INBOX",
            2.0,
        )
        labels = {"route": "r", "mailbox": "m"}
        for outcome in ("spam", "inbox"):
            sample = {**labels, "outcome": outcome}
            assert registry.get_sample_value("deliverability_probes_total", sample) == 1
        assert registry.get_sample_value("deliverability_probes_in_flight", labels) == 0
    finally:
        await agent.stop()
