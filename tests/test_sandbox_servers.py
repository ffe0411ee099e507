"""The sandbox's real SMTP and IMAP servers, driven by the agent's own adapters and by the agent.

Every server here binds port 0 on 127.0.0.1 (`any_port=True`) and is verified against the CA the
sandbox writes, so TLS is checked as a real provider's would be.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from agent.app.service import Agent
from agent.config import Config, Sandbox, validate_config
from agent.imap import ImapError, detect_folders
from agent.imap.calibration import CalibrationFailure
from agent.imap.connection import Connection
from agent.model import ErrorKind, FoundBy, Outcome, Stage, TlsMode
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder
from agent.probing.targets import imap_target, smtp_target
from agent.sandbox import SandboxError, SandboxServer
from agent.sandbox.tls import ensure_certificates
from agent.smtp.sender import send_probe
from tests.imap_helpers import WAIT, running, watch_log
from tests.imap_helpers import Recorder as WatcherRecorder
from tests.mailsystem.system import free_ports

SEED = "seed@sandbox.localhost"
JUNK_SEED = "junk@sandbox.localhost"
BOUNCES = "bounces@sandbox.localhost"
PASSWORDS = {"sender": "sender-password-1", "seed": "seed-password-22", "bounces": "bounce-pw-333"}

SANDBOX: dict[str, Any] = {
    "users": [
        {"username": name, "password": PASSWORDS["sender"]}
        for name in ("sender", "throttled", "blocked", "datafull", "blackhole", "bouncing", "gate")
    ],
    "mailboxes": [
        {"address": SEED, "auth": {"username": "seed", "password": PASSWORDS["seed"]}},
        {"address": JUNK_SEED, "auth": {"username": "junk", "password": PASSWORDS["seed"]}},
        {"address": BOUNCES, "auth": {"username": "bounces", "password": PASSWORDS["bounces"]}},
    ],
    "rules": [
        {"match": {"login": "gate"}, "reply": {"stage": "auth", "code": 454, "text": "busy"}},
        {
            "match": {"login": "throttled"},
            "reply": {"stage": "mail", "code": 451, "enhanced_code": "4.7.1", "text": "later"},
        },
        {
            "match": {"login": "blocked"},
            "reply": {
                "stage": "end_of_data",
                "code": 554,
                "enhanced_code": "5.7.1",
                "text": "spam",
            },
        },
        {"match": {"login": "datafull"}, "reply": {"stage": "data", "code": 452, "text": "full"}},
        {"match": {"login": "blackhole"}, "discard": True},
        {"match": {"login": "bouncing"}, "bounce": {"delay": "100ms"}},
        {
            "match": {"recipient": SEED},
            "deliver": {
                "delay": "300ms",
                "authentication_results": {"spf": "pass", "dkim": "pass", "dmarc": "pass"},
            },
        },
        {
            "match": {"recipient": JUNK_SEED},
            "deliver": {
                "folder": "Junk",
                "authentication_results": {"spf": "fail", "dmarc": "fail"},
            },
        },
    ],
}


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[SandboxServer]:
    server = await SandboxServer.start(
        Sandbox.model_validate(SANDBOX), state_dir=tmp_path, any_port=True
    )
    yield server
    await server.close()


def _config(sandbox: SandboxServer, tmp_path: Path, routes: list[tuple[str, str, str]]) -> Config:
    """An agent config probing the sandbox: (route name, login, password) per route."""
    where = sandbox.addresses

    def mailbox(name: str, username: str, address: str, password: str) -> dict[str, Any]:
        return {
            "name": name,
            "host": "127.0.0.1",
            "port": where.imaps_port,
            "ca_file": str(where.ca_file),
            "auth": {"username": username, "password": password},
            "address": address,
        }

    data = {
        "secret": "sandbox-servers-test-secret-0123",
        "state_dir": str(tmp_path / "state"),
        "routes": [
            {
                "name": name,
                "host": "127.0.0.1",
                "port": where.submission_port,
                "ca_file": str(where.ca_file),
                "auth": {"username": login, "password": password},
                "from": "Probe <probe@sandbox.localhost>",
                "bounce_mailbox": "bounces",
                "timeouts": {"connect": "5s", "stage": "10s", "total": "20s"},
            }
            for name, login, password in routes
        ],
        "mailboxes": [
            mailbox("seed", "seed", SEED, PASSWORDS["seed"]),
            mailbox("junk-seed", "junk", JUNK_SEED, PASSWORDS["seed"]),
        ],
        "bounce_mailboxes": [mailbox("bounces", "bounces", BOUNCES, PASSWORDS["bounces"])],
        # The blackhole probe ends `missing` only at its deadline, so the test waits that long;
        # 3 s was once too short for a delivered probe on a loaded 2-core run of the whole suite.
        "probes": {"interval": "1m", "jitter": "0s", "start": "immediate", "deadline": "8s"},
    }
    return validate_config(data, base_dir=tmp_path, environ={})


async def test_sandbox_plays_every_scenario_for_the_agent(
    sandbox: SandboxServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sender = PASSWORDS["sender"]
    config = _config(
        sandbox,
        tmp_path,
        [
            ("ok", "sender", sender),
            ("throttled", "throttled", sender),
            ("blocked", "blocked", sender),
            ("datafull", "datafull", sender),
            ("blackhole", "blackhole", sender),
            ("bouncing", "bouncing", sender),
            ("gate", "gate", sender),
            ("wrong-password", "sender", "not-the-password"),
        ],
    )
    agent = Agent(config, recorder=Recorder(new_registry()))
    await agent.start()
    try:
        probe_ids = await agent.probe_all_once()
        await agent.wait_final(probe_ids)
        records = {
            (r.route, r.mailbox): r
            for r in (agent.ledger.get(pid) for pid in probe_ids)
            if r is not None
        }
    finally:
        await agent.stop()

    outcomes = {pair: record.outcome for pair, record in records.items() if pair[1] == "seed"}
    assert outcomes == {
        ("ok", "seed"): Outcome.INBOX,
        ("throttled", "seed"): Outcome.DEFERRED,
        ("blocked", "seed"): Outcome.REJECTED,
        ("datafull", "seed"): Outcome.DEFERRED,
        ("blackhole", "seed"): Outcome.MISSING,
        ("bouncing", "seed"): Outcome.BOUNCED,
        ("gate", "seed"): Outcome.DEFERRED,
        ("wrong-password", "seed"): Outcome.ERROR,
    }
    inbox, spam = records["ok", "seed"], records["ok", "junk-seed"]
    assert (inbox.folder, spam.folder, spam.outcome) == ("INBOX", "Junk", Outcome.SPAM)
    assert inbox.latency_seconds is not None
    assert inbox.auth is not None and str(inbox.auth.dmarc) == "pass"
    assert spam.auth is not None and (str(spam.auth.spf), spam.auth.dkim) == ("fail", None)

    def deciding(pair: tuple[str, str]) -> tuple[Stage, int, str | None]:
        reply = [r for r in records[pair].transcript if r.stage is not Stage.QUIT][-1]
        return reply.stage, reply.code, reply.enhanced_code

    assert deciding(("throttled", "seed")) == (Stage.MAIL, 451, "4.7.1")
    assert deciding(("blocked", "seed")) == (Stage.END_OF_DATA, 554, "5.7.1")
    assert deciding(("datafull", "seed")) == (Stage.DATA, 452, None)
    assert deciding(("gate", "seed")) == (Stage.AUTH, 454, None)
    error = records["wrong-password", "seed"].send_error
    assert error is not None and "535" in error.message
    for password in [*PASSWORDS.values(), "not-the-password"]:
        assert password not in caplog.text


async def test_sandbox_smtp_wants_starttls_before_auth_and_auth_before_mail(
    sandbox: SandboxServer,
) -> None:
    where = sandbox.addresses
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=where.submission_port, start_tls=False)
    await client.connect()
    try:
        await client.ehlo()
        assert client.supports_extension("starttls")
        refused = await client.execute_command(b"AUTH", b"PLAIN", b"AHNlbmRlcgB4")
        assert refused.code == 530
        context = ssl.create_default_context(cafile=str(where.ca_file))
        await client.starttls(tls_context=context)
        await client.ehlo()
        mail = await client.execute_command(b"MAIL", b"FROM:<a@sandbox.localhost>")
        assert (mail.code, mail.message) == (530, "5.7.0 Authentication required")
        await client.login("sender", PASSWORDS["sender"])
        assert (await client.mail("a@sandbox.localhost"))[0] == 250
        unknown = await client.execute_command(b"RCPT", b"TO:<nobody@sandbox.localhost>")
        assert (unknown.code, unknown.message.split()[0]) == (550, "5.1.1")
    finally:
        await client.quit()


async def test_sandbox_implicit_tls_route_delivers_with_the_agents_sender(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    config = _config(sandbox, tmp_path, [("tls", "sender", PASSWORDS["sender"])])
    route = config.route("tls").model_copy(
        update={"port": sandbox.addresses.submissions_port, "tls": TlsMode.IMPLICIT}
    )
    result = await send_probe(
        smtp_target(route),
        envelope_from="probe@sandbox.localhost",
        recipients=[SEED],
        message=b"Subject: hello\r\nFrom: probe@sandbox.localhost\r\n\r\nhi\r\n",
    )
    assert result.accepted, result
    assert result.tls_version in ("TLSv1.2", "TLSv1.3")


async def test_sandbox_imap_lists_a_junk_folder_and_refuses_a_wrong_password(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    config = _config(sandbox, tmp_path, [("r", "sender", PASSWORDS["sender"])])
    target = imap_target(config.mailbox("seed"))
    folders = await detect_folders(target)
    assert (folders.inbox, folders.junk) == ("INBOX", "Junk")
    wrong = imap_target(config.mailbox("seed").model_copy(update={"auth": config.routes[0].auth}))
    with pytest.raises(ImapError) as caught:
        await detect_folders(wrong)
    assert caught.value.kind is ErrorKind.AUTH


async def test_sandbox_imap_answers_the_watchers_check_out_of_idle(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    # The check (DONE, NOOP, UID SEARCH, IDLE again) every minute must not cost a reconnect.
    config = _config(sandbox, tmp_path, [("r", "sender", PASSWORDS["sender"])])
    recorder = WatcherRecorder()
    watcher = recorder.watcher(imap_target(config.mailbox("seed")), idle_check_interval=0.05)
    with watch_log("checking the folder") as checks:
        async with running(watcher):
            await checks.wait_for(3)
    assert recorder.states.get_nowait() == (True, None)
    assert recorder.states.empty()


async def test_sandbox_imap_idle_announces_mail_that_came_since_the_last_command(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    # Mail delivered between a command's answer and IDLE is announced when IDLE starts (as Cyrus
    # and Dovecot do), not held back until the folder changes again.
    config = _config(sandbox, tmp_path, [("r", "sender", PASSWORDS["sender"])])
    conn = await Connection.open(imap_target(config.mailbox("seed")))
    try:
        await conn.login()
        await conn.select("INBOX")
        assert await conn.search_after(0) == []
        await sandbox.store.deliver(SEED, "INBOX", b"Subject: between\r\n\r\nhi\r\n", when=0.0)
        conn.new_mail = False
        assert await conn.idle(WAIT)
        assert len(await conn.search_after(0)) == 1
    finally:
        await conn.close(logout=True)


@pytest.mark.parametrize("calibrate", [False, True])
async def test_sandbox_mail_delivered_as_the_watcher_goes_back_to_idle_is_pushed(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, calibrate: bool
) -> None:
    # The window that made a probe `missing` with calibration on: the pass after the marker's
    # push ends (its last UID SEARCH found nothing new) and the probe lands before the server
    # starts the next IDLE. Without calibration the same window follows every pass.
    config = _config(sandbox, tmp_path, [("r", "sender", PASSWORDS["sender"])])
    calibrations: asyncio.Queue[tuple[float | None, CalibrationFailure | None]] = asyncio.Queue()
    recorder = WatcherRecorder()
    watcher = recorder.watcher(
        imap_target(config.mailbox("seed")),
        idle_check_interval=3600.0,  # no periodic check: only a push can find the message
        on_calibration=(lambda *result: calibrations.put_nowait(result)) if calibrate else None,
    )
    # IDLE 1 follows the pass after SELECT; with calibration, IDLE 2 follows the marker's pass.
    deliver_before = 2 if calibrate else 1
    idle = Connection.idle
    calls = 0

    async def deliver_then_idle(self: Connection, *args: Any, **kwargs: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == deliver_before:
            raw = b"Subject: in the window\r\n\r\nhi\r\n"
            await sandbox.store.deliver(SEED, "INBOX", raw, when=time.time())
        return await idle(self, *args, **kwargs)

    monkeypatch.setattr(Connection, "idle", deliver_then_idle)
    async with running(watcher):
        message = await recorder.next_message()
        if calibrate:
            delay, failure = calibrations.get_nowait()
            assert delay is not None and failure is None
    assert b"in the window" in message.raw
    assert message.found_by is FoundBy.PUSH


async def test_sandbox_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # Free ports for the other two listeners, so only `busy` can be the one in use.
        submission, imaps = free_ports(2)
        settings = Sandbox.model_validate(
            {"submission_port": submission, "submissions_port": port, "imaps_port": imaps}
        )
        with pytest.raises(SandboxError) as caught:
            await SandboxServer.start(settings, state_dir=tmp_path)
    assert str(caught.value) == (
        f"sandbox: cannot listen on 127.0.0.1:{port} for SMTP submission (TLS): "
        "the address is already in use"
    )


async def test_sandbox_close_drops_deliveries_still_waiting(tmp_path: Path) -> None:
    settings = Sandbox.model_validate(
        {
            **SANDBOX,
            "rules": [{"match": {"recipient": SEED}, "deliver": {"delay": "1h"}}],
        }
    )
    server = await SandboxServer.start(settings, state_dir=tmp_path, any_port=True)
    config = _config(server, tmp_path, [("r", "sender", PASSWORDS["sender"])])
    result = await send_probe(
        smtp_target(config.routes[0]),
        envelope_from="probe@sandbox.localhost",
        recipients=[SEED],
        message=b"Subject: later\r\n\r\nbody\r\n",
    )
    assert result.accepted
    waiting = [t for t in asyncio.all_tasks() if t.get_name() == "sandbox-delivery"]
    assert len(waiting) == 1
    await server.close()
    assert waiting[0].cancelled()


def test_sandbox_certificates_are_reused_until_they_near_expiry(tmp_path: Path) -> None:
    hosts = ["127.0.0.1", "localhost"]
    first = ensure_certificates(tmp_path, hosts=hosts)
    assert first.key_file.stat().st_mode & 0o777 == 0o600
    cert = first.cert_file.read_bytes()
    assert ensure_certificates(tmp_path, hosts=hosts).cert_file.read_bytes() == cert
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=800)
    assert ensure_certificates(tmp_path, hosts=hosts, now=later).cert_file.read_bytes() != cert
    renewed = first.cert_file.read_bytes()
    more = ensure_certificates(tmp_path, hosts=[*hosts, "sandbox.localhost"])
    assert more.cert_file.read_bytes() != renewed
