"""Mailbox watchers inside the agent, against scripted IMAP servers: a server that goes silent, a
server that never pushes, and stopping while a watcher deletes a probe."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.app.cli import probe_json
from agent.app.service import Agent
from agent.config import Config
from agent.model import (
    ErrorKind,
    ImapHealth,
    InboxCategory,
    Outcome,
    SendResult,
    SmtpReply,
    Stage,
)
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder, Result
from agent.probing.outcomes import FinalOutcome
from agent.store.ledger import Ledger
from tests.one_pair_config import one_pair_config, signed_probe
from tests.refused_config import refused_config
from tests.scripted_imap import (
    CAPABILITIES,
    LOGGED_IN,
    Expect,
    Hang,
    Pause,
    ScriptedImapServer,
    Send,
    Step,
    fetch_response,
    gmail_category_search,
    logged_in,
)

WAIT = 30.0  # generous bound on anything awaited; tests pass far sooner
SEED = "seed@seed.test"

# The agent's first connection lists the folders: only INBOX, so one watcher, one connection.
LISTING: tuple[Step, ...] = (
    *LOGGED_IN,
    Expect("LIST"),
    Send('* LIST (\\HasNoChildren) "/" INBOX\n{tag} OK List completed'),
    Expect("LOGOUT"),
    Send("* BYE\n{tag} OK Logged out"),
)


def _config(tmp_path: Path, imap_port: int, *, command_timeout: str) -> Config:
    return one_pair_config(  # the route is never used: these tests send nothing
        tmp_path,
        imap_port=imap_port,
        mailbox={
            "address": SEED,
            "folders": {},
            "idle_check_interval": "1s",  # the smallest allowed
            "timeouts": {"connect": "5s", "command": command_timeout},
        },
        probes={"deadline": "10m"},
    )


def _probe() -> tuple[str, bytes]:
    """A new probe id, and the probe message as it reaches the seed mailbox."""
    return signed_probe(to=SEED)


def _in_flight(config: Config, probe_id: str) -> None:
    """Put the probe in the ledger as sent and accepted by the server, awaiting its arrival."""
    now = time.time()
    with Ledger.in_state_dir(config.state_dir) as ledger:
        ledger.record_sending(
            probe_id=probe_id, route="r", mailbox="m", created_at=now, deadline_at=now + 600
        )
        reply = SmtpReply(Stage.END_OF_DATA, 250, "2.0.0", "queued")
        accepted = SendResult((reply,), accepted=True, accepted_at=now, duration_seconds=0.1)
        ledger.record_send_result(probe_id, accepted)


async def _seen_by_agent(
    tmp_path: Path, then: tuple[Step, ...], registry: CollectorRegistry, probe_id: str
) -> tuple[Config, FinalOutcome, ScriptedImapServer]:
    """Run the agent against a scripted server that plays `then` after the folder listing, with
    `probe_id` in flight, until the probe's final outcome; the server keeps what it received."""
    async with ScriptedImapServer(*LISTING, then=then) as server:
        config = _config(tmp_path, server.port, command_timeout="30s")
        _in_flight(config, probe_id)
        agent = Agent(config, recorder=Recorder(registry))
        await agent.start()
        try:
            async with asyncio.timeout(WAIT):
                final = await agent.outcomes.wait(probe_id)
        finally:
            await agent.stop(drain_timeout=WAIT)
    return config, final, server


class HealthQueue(Recorder):
    """A Recorder that also queues every mailbox health change, for tests to await in order."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.health: asyncio.Queue[tuple[bool, ErrorKind | None]] = asyncio.Queue()

    def record(self, result: Result) -> None:
        super().record(result)
        if isinstance(result, ImapHealth):
            self.health.put_nowait((result.up, result.error))

    async def next_health(self) -> tuple[bool, ErrorKind | None]:
        async with asyncio.timeout(WAIT):
            return await self.health.get()


def _metric(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_a_server_silent_in_idle_sets_imap_up_to_0_and_the_watcher_reconnects(
    tmp_path: Path,
) -> None:
    # The server takes IDLE, then never answers again: not the DONE of the check out of IDLE.
    silent = (
        *LOGGED_IN,
        Expect("SELECT"),
        Send("* 0 EXISTS\n* OK [UIDVALIDITY 7] UIDs valid\n{tag} OK [READ-WRITE] Selected"),
        Expect("UID SEARCH"),
        Send("* SEARCH\n{tag} OK Searched"),
        Expect("IDLE"),
        Send("+ idling"),
        Hang(),
    )
    registry = new_registry()
    recorder = HealthQueue(registry)
    async with ScriptedImapServer(*LISTING, then=silent) as server:
        agent = Agent(_config(tmp_path, server.port, command_timeout="200ms"), recorder=recorder)
        await agent.start()
        try:
            assert await recorder.next_health() == (False, None)  # declared at start
            assert agent.mailboxes_up() == {"m": False}
            assert await recorder.next_health() == (True, None)  # selected, then in IDLE
            assert _metric(registry, "deliverability_imap_up", mailbox="m") == 1
            # The status page reads the agent's own state, which says what the metric says.
            assert agent.mailboxes_up() == {"m": True}
            assert await recorder.next_health() == (False, ErrorKind.TIMEOUT)
            assert _metric(registry, "deliverability_imap_up", mailbox="m") == 0
            assert agent.mailboxes_up() == {"m": False}
            errors = "deliverability_imap_errors_total"
            assert _metric(registry, errors, mailbox="m", kind="timeout") == 1
            assert await recorder.next_health() == (True, None)  # a new connection, with backoff
            assert server.connections == 3  # the listing, the silent session, the new one
        finally:
            await agent.stop(drain_timeout=WAIT)
    assert b"DONE\r\n" in server.received


async def test_a_probe_on_a_server_that_never_pushes_is_found_by_the_check_and_counted(
    tmp_path: Path,
) -> None:
    probe_id, raw = _probe()
    # The probe arrives while the watcher is in IDLE, and the server tells only when asked.
    no_push = (
        *LOGGED_IN,
        Expect("SELECT"),
        Send("* 0 EXISTS\n* OK [UIDVALIDITY 7] UIDs valid\n{tag} OK [READ-WRITE] Selected"),
        Expect("UID SEARCH"),
        Send("* SEARCH\n{tag} OK Searched"),
        Expect("IDLE"),
        Send("+ idling"),
        Expect("DONE"),
        Send("{tag} OK Idle completed"),
        Expect("NOOP"),
        Send("* 1 EXISTS\n{tag} OK NOOP completed"),
        Expect("UID SEARCH"),
        Send("* SEARCH 1\n{tag} OK Searched"),
        Expect("UID FETCH"),
        fetch_response(1, raw),
        Send("{tag} OK Fetched"),
        Expect("UID STORE"),
        Send("{tag} OK Stored"),
        Expect("UID EXPUNGE"),
        Send("* 1 EXPUNGE\n{tag} OK Expunged"),
        Expect("LOGOUT"),
        Send("* BYE\n{tag} OK Logged out"),
    )
    registry = new_registry()
    _, final, server = await _seen_by_agent(tmp_path, no_push, registry, probe_id)
    assert (final.outcome, final.folder) == (Outcome.INBOX, "INBOX")
    found = "deliverability_probes_found_total"
    assert _metric(registry, found, mailbox="m", found_by="check") == 1
    assert _metric(registry, found, mailbox="m", found_by="push") == 0
    # Stopping right after the match still let the watcher delete the probe.
    assert any(b"UID EXPUNGE 1" in line for line in server.received)


async def test_a_stop_during_a_hung_clean_up_returns_at_the_drain_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe_id, raw = _probe()
    store_received, go_on = asyncio.Event(), asyncio.Event()
    hung = (
        *LOGGED_IN,
        Expect("SELECT"),
        Send("* 1 EXISTS\n* OK [UIDVALIDITY 7] UIDs valid\n{tag} OK [READ-WRITE] Selected"),
        Expect("UID SEARCH"),
        Send("* SEARCH 1\n{tag} OK Searched"),
        Expect("UID FETCH"),
        fetch_response(1, raw),
        Send("{tag} OK Fetched"),
        Expect("UID STORE"),
        Pause(store_received, go_on),  # never answered: the server goes on only when closed
    )
    async with ScriptedImapServer(*LISTING, then=hung) as server:
        # Only the drain timeout can end the wait: the STORE's own bound is an hour.
        config = _config(tmp_path, server.port, command_timeout="1h")
        _in_flight(config, probe_id)
        agent = Agent(config, recorder=Recorder(new_registry()))
        await agent.start()
        try:
            async with asyncio.timeout(WAIT):
                await store_received.wait()
        finally:
            with caplog.at_level(logging.WARNING, logger="agent.app.service"):
                async with asyncio.timeout(WAIT):  # an hour without the drain timeout
                    await agent.stop(drain_timeout=0.1)
    assert "mailbox m: abandoning a clean-up under way at the drain timeout" in caplog.text
    with Ledger.in_state_dir(config.state_dir) as ledger:
        record = ledger.get(probe_id)
    assert record is not None and record.outcome is Outcome.INBOX  # counted before the clean-up
    # No LOGOUT after the unanswered STORE: a server that does not answer will not say goodbye.
    store = next(i for i, line in enumerate(server.received) if b"UID STORE" in line)
    assert not any(b"LOGOUT" in line for line in server.received[store:])


async def test_a_probe_in_a_gmail_tab_is_stored_reported_and_counted_with_its_category(
    tmp_path: Path,
) -> None:
    probe_id, raw = _probe()
    gmail = (
        *logged_in(f"{CAPABILITIES} X-GM-EXT-1"),
        Expect("SELECT"),
        Send("* 1 EXISTS\n* OK [UIDVALIDITY 7] UIDs valid\n{tag} OK [READ-WRITE] Selected"),
        Expect("UID SEARCH"),
        Send("* SEARCH 1\n{tag} OK Searched"),
        Expect("UID FETCH"),
        fetch_response(1, raw),
        Send("{tag} OK Fetched"),
        *gmail_category_search(1, "primary", found=False),
        *gmail_category_search(1, "promotions", found=True),
        Expect("UID STORE"),
        Send("{tag} OK Stored"),
        Expect("UID EXPUNGE"),
        Send("* 1 EXPUNGE\n{tag} OK Expunged"),
        Expect("LOGOUT"),
        Send("* BYE\n{tag} OK Logged out"),
    )
    registry = new_registry()
    config, final, _ = await _seen_by_agent(tmp_path, gmail, registry, probe_id)
    assert final.outcome is Outcome.INBOX
    with Ledger.in_state_dir(config.state_dir) as ledger:
        record = ledger.get(probe_id)
    assert record is not None and record.arrival is not None
    assert record.arrival.category is InboxCategory.PROMOTIONS
    assert probe_json(record)["category"] == "promotions"
    tabs = "deliverability_inbox_category_total"
    assert _metric(registry, tabs, mailbox="m", category="promotions") == 1
    assert _metric(registry, tabs, mailbox="m", category="primary") == 0


async def test_a_reload_that_moves_a_mailbox_lets_its_clean_up_under_way_finish(
    tmp_path: Path,
) -> None:
    probe_id, raw = _probe()
    store_received, go_on = asyncio.Event(), asyncio.Event()
    slow_store = (
        *LOGGED_IN,
        Expect("SELECT"),
        Send("* 1 EXISTS\n* OK [UIDVALIDITY 7] UIDs valid\n{tag} OK [READ-WRITE] Selected"),
        Expect("UID SEARCH"),
        Send("* SEARCH 1\n{tag} OK Searched"),
        Expect("UID FETCH"),
        fetch_response(1, raw),
        Send("{tag} OK Fetched"),
        Expect("UID STORE"),
        Pause(store_received, go_on),  # the reload comes while the STORE is unanswered
        Send("{tag} OK Stored"),
        Expect("UID EXPUNGE"),
        Send("* 1 EXPUNGE\n{tag} OK Expunged"),
        Expect("LOGOUT"),
        Send("* BYE\n{tag} OK Logged out"),
    )
    async with ScriptedImapServer(*LISTING, then=slow_store) as server:
        config = _config(tmp_path, server.port, command_timeout="30s")
        _in_flight(config, probe_id)
        agent = Agent(config, recorder=Recorder(new_registry()))
        await agent.start()
        try:
            async with asyncio.timeout(WAIT):
                await store_received.wait()
            # The mailbox moves to another server: its watcher must stop, as at shutdown.
            reloading = asyncio.create_task(
                agent.reload(_config(tmp_path, 1, command_timeout="30s"))
            )
            await asyncio.sleep(0)  # the reload runs up to its wait for the watcher to stop
            go_on.set()
            async with asyncio.timeout(WAIT):
                await reloading
        finally:
            await agent.stop(drain_timeout=WAIT)
    assert any(b"UID EXPUNGE 1" in line for line in server.received)
    with Ledger.in_state_dir(config.state_dir) as ledger:
        record = ledger.get(probe_id)
    assert record is not None and record.outcome is Outcome.INBOX


class _RetryLines(logging.Handler):
    """Collects the agent's "cannot list folders" lines; `full` is set at `wanted` of them."""

    def __init__(self, wanted: int) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.wanted = wanted
        self.full = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "cannot list folders" in message:
            self.lines.append(message)
            if len(self.lines) >= self.wanted:
                self.full.set()


async def test_mailboxes_of_a_down_server_retry_listing_folders_at_jittered_times(
    tmp_path: Path,
) -> None:
    # Eight mailboxes on a server that refuses: started together, they must not all retry in
    # the same loop iteration (a burst that held the loop, and a herd at the server).
    lines = _RetryLines(wanted=8)
    logger = logging.getLogger("agent.app.service")
    logger.addHandler(lines)
    agent = Agent(
        refused_config(tmp_path, routes=1, mailboxes=8), recorder=Recorder(new_registry())
    )
    try:
        await agent.start()
        async with asyncio.timeout(WAIT):
            await lines.full.wait()
    finally:
        await agent.stop()
        logger.removeHandler(lines)

    delays = [float(line.rsplit("retrying in ", 1)[1].split()[0]) for line in lines.lines[:8]]
    assert all(0.5 <= delay <= 1.0 for delay in delays), delays  # the first retry: [0.5, 1] s
    assert len(set(delays)) > 1, delays
