"""The running agent with a full disk under its ledger: it says so (metric, /readyz), sends nothing
it cannot record, loses nothing, and resumes by itself when space returns. The disk is filled for
real: SQLite fails with SQLITE_FULL (tests/full_disk.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.app.cli import readiness_of
from agent.app.service import Agent
from agent.config import Config
from agent.model import (
    BounceCounted,
    LedgerErrorKind,
    LedgerHealth,
    Outcome,
    ProbeFinished,
    SendResult,
    SmtpReply,
    SmtpTransaction,
    Stage,
)
from agent.monitoring.catalog import new_registry
from agent.store.ledger import Ledger, ProbeState
from agent.web.http_server import HttpServer, Status
from tests.agent_process import WAIT
from tests.agent_setup import AgentSetup
from tests.full_disk import ResultLog, fill, free
from tests.imap_helpers import folder_contents
from tests.mailsystem import MailSystem
from tests.one_pair_config import one_pair_config
from tests.scripted_smtp import Reply, Script, ScriptedSmtpServer, UntilClosed

FULL = LedgerHealth(False, LedgerErrorKind.DISK_FULL, "database or disk is full")
NOT_READY = "not ok: the ledger cannot be written (disk_full): database or disk is full\n"


def _config(tmp_path: Path, smtp_port: int, **probes: Any) -> Config:
    return one_pair_config(
        tmp_path,
        smtp_port=smtp_port,
        route={"timeouts": {"connect": "10s", "stage": "30s", "total": "60s"}},
        # No deadline passes during a test unless it asks: the reaper writes too.
        probes={"interval": "1h", "deadline": "1h", **probes},
    )


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def _readyz(server: HttpServer) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        url = f"http://127.0.0.1:{server.port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    return await asyncio.to_thread(get)


class ScheduledRuns:
    """Stands in for the agent's probe job, so the test awaits the end of each run the scheduler
    starts: its return value, or what it raised."""

    def __init__(self, agent: Agent) -> None:
        job = agent.probe_pair
        self.ended: asyncio.Queue[str | Exception | None] = asyncio.Queue()

        # A function, not this object: APScheduler runs only coroutine functions on the loop.
        async def probe_pair(route_name: str, mailbox_name: str) -> str | None:
            try:
                probe_id = await job(route_name, mailbox_name)
            except Exception as exc:
                self.ended.put_nowait(exc)
                raise
            self.ended.put_nowait(probe_id)
            return probe_id

        agent.probe_pair = probe_pair  # type: ignore[method-assign]  # read by schedule()

    async def next(self) -> str | Exception | None:
        async with asyncio.timeout(WAIT):
            return await self.ended.get()


async def test_a_full_disk_stops_probing_says_so_on_readyz_and_probing_resumes_by_itself(
    tmp_path: Path,
) -> None:
    async with ScriptedSmtpServer() as smtp:
        registry = new_registry()
        results = ResultLog(registry)
        agent = Agent(_config(tmp_path, smtp.port), recorder=results)
        runs = ScheduledRuns(agent)
        await agent.start()
        server = HttpServer(
            registry,
            host="127.0.0.1",
            port=0,
            health=lambda: Status(True, "alive"),
            readiness=lambda: readiness_of(agent),
        )
        try:
            agent.schedule()  # the first run comes within a second, the next in an hour
            first = await runs.next()
            assert isinstance(first, str)
            assert await _readyz(server) == (200, "ok: probing\n")
            assert _value(registry, "deliverability_ledger_writable") == 1

            fill(agent.ledger, route="r", mailbox="m")
            (job,) = agent.scheduled_jobs()
            job.modify(next_run_time=datetime.now(UTC))
            failed = await runs.next()

            assert failed is None  # not sent; a warning, not a job failure with a traceback
            assert len(smtp.sessions) == 1  # the probe it could not record was never sent
            assert await _readyz(server) == (503, NOT_READY)
            assert _value(registry, "deliverability_ledger_errors_total", kind="disk_full") == 1
            assert _value(registry, "deliverability_ledger_writable") == 0
            assert agent.ledger.health == FULL

            free(agent.ledger)  # space comes back; nobody restarts anything
            job.modify(next_run_time=datetime.now(UTC))
            resumed = await runs.next()

            assert isinstance(resumed, str)
            record = agent.ledger.get(resumed)
            assert record is not None and record.state is ProbeState.AWAITING
            assert len(smtp.sessions) == 2
            assert await _readyz(server) == (200, "ok: probing\n")
            assert _value(registry, "deliverability_ledger_writable") == 1
            assert _value(registry, "deliverability_ledger_errors_total", kind="disk_full") == 1
        finally:
            server.close()
            await agent.stop()


async def test_a_probe_sent_as_the_disk_fills_keeps_its_result_and_stores_it_when_space_returns(
    tmp_path: Path,
) -> None:
    # The first connection's 250 waits until the test's own connection (number 1) has closed.
    gated = Script(
        replies={Stage.END_OF_DATA: (UntilClosed(1), Reply("250 2.0.0 Ok: queued as 4XYZ"))}
    )
    async with ScriptedSmtpServer([gated, Script()]) as smtp:
        registry = new_registry()
        results = ResultLog(registry)
        agent = Agent(_config(tmp_path, smtp.port), recorder=results)
        await agent.start()
        try:
            sending = asyncio.create_task(agent.probe_pair("r", "m"))
            session = await smtp.wait_for_session(0)
            async with asyncio.timeout(WAIT):
                await session.received.wait()  # sent, and recorded before it was
            fill(agent.ledger, route="r", mailbox="m")
            _, gate = await asyncio.open_connection("127.0.0.1", smtp.port)
            gate.close()  # the server answers 250 now

            failure = await results.ledger_failed()
            assert failure == FULL
            assert not sending.done()  # it holds the result and retries
            free(agent.ledger)
            async with asyncio.timeout(WAIT):
                probe_id = await sending

            assert probe_id is not None
            record = agent.ledger.get(probe_id)
            assert record is not None and record.state is ProbeState.AWAITING
            assert (Stage.END_OF_DATA, 250) in {(r.stage, r.code) for r in record.transcript}
            transactions = [r for r in results.results if isinstance(r, SmtpTransaction)]
            assert len(transactions) == 1  # counted once, however many attempts it took
            assert len(smtp.sessions) == 2  # the probe and the gate: nothing sent twice
        finally:
            await agent.stop()


async def test_a_probe_refused_as_the_disk_fills_stores_its_verdict_once_space_returns(
    tmp_path: Path,
) -> None:
    # The 550 waits until the test's own connection (number 1) has closed.
    gated = Script(replies={Stage.RCPT: (UntilClosed(1), Reply("550 5.1.1 no such user"))})
    async with ScriptedSmtpServer([gated, Script()]) as smtp:
        registry = new_registry()
        results = ResultLog(registry)
        agent = Agent(_config(tmp_path, smtp.port), recorder=results)
        await agent.start()
        try:
            sending = asyncio.create_task(agent.probe_pair("r", "m"))
            await smtp.wait_for_session(0)  # connected: the probe is in the ledger
            fill(agent.ledger, route="r", mailbox="m")
            _, gate = await asyncio.open_connection("127.0.0.1", smtp.port)
            gate.close()  # the server answers 550 now

            failure = await results.ledger_failed()
            assert failure == FULL
            assert not sending.done()  # it holds the result and retries the whole transaction
            free(agent.ledger)
            async with asyncio.timeout(WAIT):
                probe_id = await sending

            assert probe_id is not None
            record = agent.ledger.get(probe_id)
            assert record is not None and record.outcome is Outcome.REJECTED
            assert [bounce.status for bounce in agent.ledger.bounces(probe_id)] == ["5.1.1"]
            finished = [r for r in results.results if isinstance(r, ProbeFinished)]
            bounced = [r for r in results.results if isinstance(r, BounceCounted)]
            assert len(finished) == len(bounced) == 1  # counted once, after the one commit
        finally:
            await agent.stop()


async def test_the_deadline_sweep_outlives_a_ledger_error_and_reaps_once_the_ledger_is_readable(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, 25, deadline="5s")  # a sweep every 0.5 s
    now = [time.time()]
    probe_id = "0000000000000000000000000d"
    with Ledger.in_state_dir(config.state_dir) as ledger:
        ledger.record_sending(
            probe_id=probe_id, route="r", mailbox="m", created_at=now[0], deadline_at=now[0] + 5
        )
        accepted = SendResult(
            transcript=(SmtpReply(Stage.END_OF_DATA, 250, "2.0.0", "queued"),),
            accepted=True,
            accepted_at=now[0],
            duration_seconds=0.1,
        )
        ledger.record_send_result(probe_id, accepted)
    results = ResultLog(new_registry())
    agent = Agent(config, recorder=results, clock=lambda: now[0])
    await agent.start()
    try:
        _set_transcript(agent.ledger.path, probe_id, "{broken")  # a row it cannot decode
        now[0] += 10  # past the deadline: the sweep reads the row

        failure = await results.ledger_failed()
        assert failure.error is LedgerErrorKind.CORRUPT and failure.writable
        agent.swept.clear()
        async with asyncio.timeout(WAIT):
            await agent.swept.wait()  # the sweeps go on

        _set_transcript(agent.ledger.path, probe_id, "[]")
        async with asyncio.timeout(WAIT):
            final = await agent.outcomes.wait(probe_id)
        assert final.outcome is Outcome.MISSING
    finally:
        await agent.stop()


def _set_transcript(path: Path, probe_id: str, transcript: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("UPDATE probes SET transcript = ? WHERE probe_id = ?", (transcript, probe_id))
        conn.commit()
    finally:
        conn.close()


@pytest.mark.mailsystem
async def test_an_arrival_the_full_ledger_cannot_take_stays_in_the_mailbox_and_is_read_again(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    held = mail_system.new_held_mailbox()  # the probe waits in the queue until released
    setup = AgentSetup(mail_system, tmp_path).route("good").mailbox("seed", held)
    setup.probes["deadline"] = "1h"  # the reaper writes too: no deadline during the test
    config = setup.load()
    results = ResultLog(new_registry())
    agent = Agent(config, recorder=results, poll_interval=0.5)
    await agent.start()
    try:
        probe_id = await agent.probe_pair("good", "seed")
        assert probe_id is not None
        fill(agent.ledger, route="good", mailbox="seed")
        mail_system.release_held()

        assert await results.ledger_failed() == FULL  # seen, but its outcome not recorded
        contents = await folder_contents(mail_system, held)
        assert len(contents) == 1  # kept, not deleted
        freed_at = time.time()
        free(agent.ledger)

        async with asyncio.timeout(WAIT):
            final = await agent.outcomes.wait(probe_id)  # read again, without new mail
        assert final.outcome is Outcome.INBOX
        record = agent.ledger.get(probe_id)
        assert record is not None and record.finished_at is not None
        assert record.finished_at < freed_at  # timed from when it was first seen
    finally:
        await agent.stop()
