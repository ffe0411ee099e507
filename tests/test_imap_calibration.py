"""IDLE calibration: the marker, the delay arithmetic, a calibration against the real Dovecot
(the marker gone afterwards, never handed over), and the uncalibrated state on scripted servers
without IDLE or refusing APPEND."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.app.service import Agent
from agent.imap import FetchedMessage
from agent.imap.calibration import (
    MARKER_HEADER,
    CalibrationFailure,
    arrived_at,
    build_marker,
    marker_token,
    notification_delay,
)
from agent.imap.watcher import _Attempt
from agent.model import FoundBy, ImapCalibration, Outcome
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder as MetricsRecorder
from agent.monitoring.recorder import Result
from tests.agent_setup import AgentSetup
from tests.imap_helpers import (
    WAIT,
    Recorder,
    deliver,
    dovecot_target,
    folder_contents,
    running,
    scripted_target,
    stdlib_imap,
    unique,
)
from tests.mailsystem import MailSystem
from tests.scripted_imap import (
    LOGGED_IN,
    Expect,
    Hang,
    ScriptedImapServer,
    Send,
    logged_in,
)

Calibration = tuple[float | None, CalibrationFailure | None]


class Calibrations:
    """The watcher's `on_calibration`, on a queue the test awaits."""

    def __init__(self) -> None:
        self.results: asyncio.Queue[Calibration] = asyncio.Queue()

    def __call__(self, delay: float | None, failure: CalibrationFailure | None) -> None:
        self.results.put_nowait((delay, failure))

    async def next(self) -> Calibration:
        async with asyncio.timeout(WAIT):
            return await self.results.get()


# --- pure -----------------------------------------------------------------------------------------


def test_a_marker_carries_its_token_and_an_ordinary_message_none() -> None:
    marker = build_marker("0123abcd", address="agent@calibration.invalid", now=0.0)
    assert marker_token(marker) == "0123abcd"
    assert b"\r\n" in marker and len(marker) < 1000
    assert marker_token(b"Subject: hello\r\nFrom: a@b.test\r\n\r\nbody\r\n") is None


def test_the_marker_header_counts_only_in_the_header_block() -> None:
    raw = f"Subject: quoting\r\n\r\n{MARKER_HEADER}: 0123abcd\r\n".encode()
    assert marker_token(raw) is None
    assert marker_token(f"{MARKER_HEADER.upper()}:  tok \r\n\r\n".encode()) == "tok"
    assert marker_token(f"{MARKER_HEADER}: \r\n\r\n".encode()) is None  # empty: not a marker


def test_the_delay_is_append_ok_to_push_and_never_below_zero() -> None:
    assert notification_delay(100.0, 100.5) == pytest.approx(0.5)
    assert notification_delay(100.0, 99.9) == 0.0  # the push overtook the APPEND's OK


def test_a_calibrated_delay_is_taken_off_seen_at_and_an_uncalibrated_one_is_not() -> None:
    assert arrived_at(1000.0, 0.5) == pytest.approx(999.5)
    assert arrived_at(1000.0, None) == 1000.0
    assert arrived_at(1000.0, -3.0) == 1000.0  # a negative delay is no delay
    message = FetchedMessage(
        mailbox="m",
        folder="INBOX",
        uid=1,
        raw=b"",
        seen_at=1000.0,
        size=0,
        found_by=FoundBy.PUSH,
        notification_delay=0.5,
    )
    assert message.arrived_at == pytest.approx(999.5)


def test_the_recorder_exports_the_delay_only_while_calibrated() -> None:
    registry = new_registry()
    recorder = MetricsRecorder(registry)
    labels = {"mailbox": "seed", "folder": "INBOX"}
    recorder.record(ImapCalibration("seed", "INBOX", 0.5))
    assert registry.get_sample_value("deliverability_imap_calibrated", labels) == 1
    assert registry.get_sample_value(
        "deliverability_imap_notification_delay_seconds", labels
    ) == pytest.approx(0.5)
    recorder.record(ImapCalibration("seed", "INBOX", None))
    assert registry.get_sample_value("deliverability_imap_calibrated", labels) == 0
    assert (
        registry.get_sample_value("deliverability_imap_notification_delay_seconds", labels) is None
    )


# --- the real Dovecot -----------------------------------------------------------------------------


@pytest.mark.mailsystem
async def test_dovecot_is_calibrated_the_marker_deleted_and_a_pushed_message_carries_the_delay(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    recorder, calibrations = Recorder(), Calibrations()
    watcher = recorder.watcher(dovecot_target(mail_system, account), on_calibration=calibrations)
    async with running(watcher):
        delay, failure = await calibrations.next()
        assert failure is None and delay is not None and delay > 0
        assert recorder.messages.empty()  # the marker is never handed over
        subject = unique("after calibration")
        await deliver(mail_system, account, subject)
        message = await recorder.next_message()
    assert message.found_by is FoundBy.PUSH
    assert message.notification_delay == delay
    assert message.arrived_at == pytest.approx(message.seen_at - delay)
    contents = await folder_contents(mail_system, account)
    assert list(contents) == [subject]  # the marker is gone: expunged, not only flagged


@pytest.mark.mailsystem
async def test_someone_elses_marker_is_neither_handed_over_nor_deleted(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    foreign = build_marker("not-this-agents", address=account.address)

    def append() -> None:
        with stdlib_imap(mail_system, account) as imap:
            imap.append("INBOX", None, None, foreign)

    await asyncio.to_thread(append)
    subject = unique("ordinary")
    await deliver(mail_system, account, subject)
    recorder = Recorder()
    async with asyncio.timeout(WAIT):
        await recorder.watcher(dovecot_target(mail_system, account)).check_once()
    assert (await recorder.next_message()).uid == 2
    assert recorder.messages.empty()
    assert len(await folder_contents(mail_system, account)) == 2


# --- servers that cannot be calibrated ------------------------------------------------------------

_SELECTED = (
    Expect("SELECT"),
    Send("* 0 EXISTS\n* OK [UIDVALIDITY 42] UIDs valid\n{tag} OK [READ-WRITE] Selected"),
    Expect("UID SEARCH"),
    Send("* SEARCH\n{tag} OK Searched"),
)


async def _first_calibration(server: ScriptedImapServer, **options: Any) -> Calibration:
    recorder, calibrations = Recorder(), Calibrations()
    watcher = recorder.watcher(scripted_target(server.port), on_calibration=calibrations, **options)
    async with running(watcher):
        return await calibrations.next()


async def test_a_server_without_idle_leaves_the_folder_uncalibrated() -> None:
    script = (*logged_in("IMAP4rev1 UIDPLUS"), *_SELECTED, Hang())
    async with ScriptedImapServer(*script) as server:
        result = await _first_calibration(server, poll_interval=60.0)
    assert result == (None, CalibrationFailure.NO_IDLE)
    assert not any(b"APPEND" in line for line in server.received)


async def test_a_refused_append_leaves_the_folder_uncalibrated() -> None:
    watcher_session = (
        *LOGGED_IN,
        *_SELECTED,
        Expect("IDLE"),
        Send("+ idling"),
        Expect("DONE"),
        Send("{tag} OK Idle completed"),
        Hang(),
    )
    marker_session = (
        *LOGGED_IN,
        Expect("APPEND"),
        Send("{tag} NO [NOPERM] Permission denied"),
        Expect("LOGOUT"),
        Send("* BYE\n{tag} OK Logged out"),
    )
    async with ScriptedImapServer(*watcher_session, then=marker_session) as server:
        # The IDLE ends after its interval (no push comes); the refusal is reported then.
        result = await _first_calibration(server, idle_check_interval=0.2)
    assert result == (None, CalibrationFailure.APPEND_REFUSED)
    assert server.connections == 2


async def test_a_calibration_counts_only_when_the_push_announced_the_marker_alone() -> None:
    # The watcher's own decision, with injected loop times (no server, nothing timed).
    calibrations = Calibrations()
    watcher = Recorder().watcher(scripted_target(1), on_calibration=calibrations)

    def attempt(token: str = "tok") -> _Attempt:
        return _Attempt(token, idle_at=100.0, appended_at=100.25)

    watcher._evaluate(attempt(), 100.75, others=1, found=["tok"])  # other mail in the push
    watcher._evaluate(attempt(), 100.75, others=0, found=[])  # the marker not there yet
    watcher._evaluate(attempt(), 99.0, others=0, found=["tok"])  # a push from before IDLE
    watcher._evaluate(attempt(), None, others=0, found=["tok"])  # no push at all
    watcher._evaluate(attempt(), 100.75, others=0, found=["someone-else"])
    assert calibrations.results.empty()
    watcher._evaluate(attempt(), 100.75, others=0, found=["tok"])
    assert calibrations.results.get_nowait() == (0.5, None)
    watcher._evaluate(attempt(), 100.1, others=0, found=["tok"])  # the push overtook the OK
    assert calibrations.results.get_nowait() == (0.0, None)


# --- inside the agent -----------------------------------------------------------------------------


class _CalibrationRecorder(MetricsRecorder):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.calibrated = asyncio.Event()

    def record(self, result: Result) -> None:
        super().record(result)
        if isinstance(result, ImapCalibration) and result.delay_seconds is not None:
            self.calibrated.set()


@pytest.mark.mailsystem
async def test_the_agent_takes_the_calibrated_delay_off_a_pushed_probe_and_counts_no_marker(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    account = mail_system.new_mailbox()
    config = AgentSetup(mail_system, tmp_path).route("good").mailbox("seed", account).load()
    registry = new_registry()
    recorder = _CalibrationRecorder(registry)
    agent = Agent(config, recorder=recorder)
    handed: list[tuple[float, float]] = []  # (seen_at the matcher got, time.time() then)
    handle = agent.matcher.handle

    def spy(*args: Any, **kwargs: Any) -> bool:
        handed.append((kwargs["seen_at"], time.time()))
        return handle(*args, **kwargs)

    agent.matcher.handle = spy  # type: ignore[method-assign]
    await agent.start()
    try:
        async with asyncio.timeout(WAIT):
            await recorder.calibrated.wait()
        inbox = {"mailbox": "seed", "folder": "INBOX"}
        delay = registry.get_sample_value("deliverability_imap_notification_delay_seconds", inbox)
        assert delay is not None and delay > 0
        assert registry.get_sample_value("deliverability_imap_calibrated", inbox) == 1
        probe_id = await agent.probe_pair("good", "seed")
        assert probe_id is not None
        async with asyncio.timeout(WAIT):
            final = await agent.outcomes.wait(probe_id)
    finally:
        await agent.stop()
    assert final.outcome is Outcome.INBOX
    # One message handed to the matcher: the probe; the marker never was.
    [(seen_at, handled_at)] = handed
    # The watcher saw the probe before the matcher got it; the matcher got it `delay` earlier.
    assert seen_at <= handled_at - delay
    for name in ("deliverability_malformed_messages_total", "deliverability_forged_messages_total"):
        assert registry.get_sample_value(name, {"mailbox": "seed"}) == 0
    found = registry.get_sample_value(
        "deliverability_probes_found_total", {"mailbox": "seed", "found_by": "push"}
    )
    assert found == 1
