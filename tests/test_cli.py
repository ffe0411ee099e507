"""The `deliverability-agent` command as users run it, as a real process against the mail system."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from agent.config import load_config
from agent.model import Outcome, Stage
from agent.monitoring.catalog import new_registry
from agent.store.ledger import Ledger
from agent.web.http_server import HttpServer, Status
from agent.web.status_page import Health, LoopPage, PageQuery, collect, render
from tests.agent_process import WAIT, AgentProcess, agent_command
from tests.agent_setup import GOOD_SENDER, AgentSetup
from tests.imap_helpers import stdlib_imap
from tests.mailsystem import MailSystem
from tests.mailsystem.system import free_ports
from tests.mailsystem.topology import SEED_DOMAIN
from tests.scripted_smtp import Hang, Raw, Script, ScriptedSmtpServer

ONCE_KEYS = [
    "route",
    "mailbox",
    "probe_id",
    "outcome",
    "folder",
    "category",
    "latency_seconds",
    "smtp",
    "auth",
    "spam",
    "error",
]


def test_check_config_accepts_the_shipped_config() -> None:
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        agent_command("check-config", "--config", str(root / "config.yaml")),
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("DELIVERABILITY_")},
    )
    assert result.returncode == 0, result.stderr
    assert "OK: 6 route(s), 2 mailbox(es), 12 pair(s)" in result.stdout


def test_check_config_names_the_bad_field_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "secret: 0123456789abcdef0123\n"
        "routes: [{name: r, host: h, port: 99999, from: a@b.test}]\n"
        "mailboxes: [{name: m, host: h, auth: {username: u, password: hunter2-secret},"
        " address: s@b.test}]\n"
    )
    result = subprocess.run(
        agent_command("check-config", "--config", str(path)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert f"{path}: routes[0].port: " in result.stderr
    assert "99999" in result.stderr
    assert "hunter2-secret" not in result.stderr


@pytest.mark.mailsystem
def test_once_json_prints_one_object_per_probe_and_exits_0_when_all_in_inbox(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    setup = (
        AgentSetup(mail_system, tmp_path).route("good").mailbox("seed", mail_system.new_mailbox())
    )
    result = subprocess.run(
        agent_command("once", "--json", "--config", str(setup.write())),
        capture_output=True,
        text=True,
        check=False,
        timeout=WAIT * 2,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    probe = json.loads(lines[0])
    assert list(probe) == ONCE_KEYS
    assert probe["outcome"] == "inbox"
    assert probe["folder"] == "INBOX"
    assert probe["auth"] == {"spf": "pass", "dkim": "pass", "dmarc": "pass", "arc": None}
    # The test mail system's rspamd: not spam, its score against its reject threshold.
    (spam,) = probe["spam"]
    assert isinstance(spam.pop("score"), float)
    assert spam == {
        "source": "rspamd",
        "threshold": 50.0,
        "is_spam": False,
        "category": "ham",
        "bulk_level": None,
    }
    assert probe["error"] is None
    assert probe["smtp"][0] == {
        "stage": "banner",
        "code": 220,
        "enhanced_code": None,
        "class": "2xx",
        "text": probe["smtp"][0]["text"],
    }
    assert setup.routes[0]["auth"]["password"] not in result.stdout + result.stderr


@pytest.mark.mailsystem
def test_once_exits_1_when_a_probe_does_not_land_in_the_inbox(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    setup = (
        AgentSetup(mail_system, tmp_path)
        .route("good")
        .mailbox("ok", mail_system.new_mailbox())
        .mailbox("refused", mail_system.new_mailbox(), address=f"reject-550@{SEED_DOMAIN}")
    )
    result = subprocess.run(
        agent_command("once", "--config", str(setup.write())),
        capture_output=True,
        text=True,
        check=False,
        timeout=WAIT * 2,
    )
    assert result.returncode == 1, result.stderr
    table = result.stdout.splitlines()
    assert table[0].split()[:4] == ["ROUTE", "MAILBOX", "OUTCOME", "FOLDER"]
    rows = {line.split()[1]: line.split()[2] for line in table[1:]}
    assert rows == {"ok": "inbox", "refused": "rejected"}


@pytest.mark.mailsystem
def test_once_leaves_no_probe_behind_in_the_seed_mailbox(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    """`once` stops right after the last probe is matched, while its watcher deletes it: the stop
    lets the STORE \\Deleted and the EXPUNGE finish, so nothing stays flagged in the folder."""
    account = mail_system.new_mailbox()
    setup = AgentSetup(mail_system, tmp_path).route("good").mailbox("seed", account)
    result = subprocess.run(
        agent_command("once", "--json", "--config", str(setup.write())),
        capture_output=True,
        text=True,
        check=False,
        timeout=WAIT * 2,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outcome"] == "inbox"
    with stdlib_imap(mail_system, account) as imap:
        imap.select("INBOX", readonly=True)
        assert imap.search(None, "ALL") == ("OK", [b""])


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


@pytest.mark.mailsystem
def test_run_serves_metrics_keeps_its_config_on_a_bad_sighup_and_drains_on_sigterm(
    mail_system: MailSystem, tmp_path: Path, processes: list[AgentProcess]
) -> None:
    (port,) = free_ports(1)
    setup = (
        AgentSetup(mail_system, tmp_path).route("good").mailbox("seed", mail_system.new_mailbox())
    )
    config = setup.write()
    text = config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}")
    config.write_text(text)
    agent = AgentProcess(config)
    processes.append(agent)
    agent.wait_for("metrics on http://")
    assert _get(port, "/readyz") == "ok: probing\n"
    agent.wait_for(": inbox")
    metrics = _get(port, "/metrics")
    assert 'deliverability_probes_total{mailbox="seed",outcome="inbox",route="good"} 1.0' in metrics
    assert "deliverability_config_last_reload_successful 1.0" in metrics

    config.write_text(text.replace("routes:", "routez:"))
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for("keeping the running configuration")
    metrics = _get(port, "/metrics")
    assert "deliverability_config_last_reload_successful 0.0" in metrics
    assert _get(port, "/readyz") == "ok: probing\n"

    config.write_text(text)
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for("configuration reloaded")
    assert "deliverability_config_last_reload_successful 1.0" in _get(port, "/metrics")

    assert agent.stop() == 0
    agent.wait_for("stopped")
    assert setup.routes[0]["auth"]["password"] not in "".join(agent.seen)


@pytest.mark.mailsystem
def test_kill_9_with_a_probe_in_flight_loses_nothing(
    mail_system: MailSystem, tmp_path: Path, processes: list[AgentProcess]
) -> None:
    held = mail_system.new_held_mailbox()
    setup = AgentSetup(mail_system, tmp_path).route("good").mailbox("seed", held)
    setup.probes["interval"] = "1h"
    config = setup.write()
    first = AgentProcess(config)
    processes.append(first)
    line = first.wait_for("accepted by good")
    probe_id = line.split("probe ", 1)[1].split()[0]
    first.kill()  # SIGKILL: no drain, no cleanup

    mail_system.release_held()
    second = AgentProcess(config)
    processes.append(second)
    second.wait_for(f"probe {probe_id} good -> seed: inbox")
    assert second.stop() == 0
    with Ledger(tmp_path / "state" / "ledger.sqlite3") as ledger:
        record = ledger.get(probe_id)
        assert record is not None
        assert record.outcome is Outcome.INBOX
        # The second agent may have sent probes of its own since; this one is no longer waiting.
        assert probe_id not in {r.probe_id for r in ledger.in_flight()}


@pytest.mark.mailsystem
async def test_kill_9_after_a_probe_was_seen_before_its_250_keeps_its_real_folder(
    mail_system: MailSystem, tmp_path: Path, processes: list[AgentProcess]
) -> None:
    """The ledger is the only meeting point of sender and watcher: a sighting that came before
    the send result was stored survives a kill -9 and decides the probe's outcome, once."""
    (port,) = free_ports(1)
    seed = mail_system.new_mailbox()
    setup = AgentSetup(mail_system, tmp_path).mailbox("seed", seed)
    setup.probes["interval"] = "1h"
    # The route's server takes the message, then never answers the end of data: the sender is
    # still waiting for its 250 when the probe lands in the real mailbox.
    async with ScriptedSmtpServer(Script(replies={Stage.END_OF_DATA: Hang()})) as server:
        setup.routes.append(
            {
                "name": "hanging",
                "host": "127.0.0.1",
                "port": server.port,
                "tls": "none",
                "ehlo_name": "agent.client.test",
                "from": f"Deliverability probe <{GOOD_SENDER.address}>",
                "timeouts": {"connect": "5s", "stage": "10m", "total": "10m"},
            }
        )
        config = setup.write()
        config.write_text(config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
        first = AgentProcess(config)
        processes.append(first)
        session = await server.wait_for_session(0)
        await session.received.wait()
        await asyncio.to_thread(mail_system.append, seed, session.messages[0])
        line = await asyncio.to_thread(first.wait_for, "before its send result")
        probe_id = line.split("probe ", 1)[1].split()[0]
        first.kill()  # SIGKILL: the 250 was never stored; only the ledger remembers the sighting

    second = AgentProcess(config)
    processes.append(second)
    await asyncio.to_thread(second.wait_for, f"probe {probe_id} hanging -> seed: inbox")
    metrics = await asyncio.to_thread(_get, port, "/metrics")
    inbox = 'deliverability_probes_total{mailbox="seed",outcome="inbox",route="hanging"} 1.0'
    assert inbox in metrics.splitlines()
    assert await asyncio.to_thread(second.stop) == 0
    with Ledger(tmp_path / "state" / "ledger.sqlite3") as ledger:
        record = ledger.get(probe_id)
        assert record is not None
        assert (record.outcome, record.folder) == (Outcome.INBOX, "INBOX")
        assert record.arrival is not None and record.arrival.placement is Outcome.INBOX
        assert record.latency_seconds is None  # the 250 was never stored: no latency to tell


@pytest.mark.mailsystem
async def test_kill_9_mid_transaction_keeps_the_probe_open_until_it_arrives(
    mail_system: MailSystem, tmp_path: Path, processes: list[AgentProcess]
) -> None:
    """A probe cut after the server took its message may still be delivered: the next start
    keeps it open until its deadline, and its arrival decides its outcome."""
    seed = mail_system.new_mailbox()
    setup = AgentSetup(mail_system, tmp_path).mailbox("seed", seed)
    setup.probes["interval"] = "1h"
    async with ScriptedSmtpServer(Script(replies={Stage.END_OF_DATA: Hang()})) as server:
        setup.routes.append(
            {
                "name": "hanging",
                "host": "127.0.0.1",
                "port": server.port,
                "tls": "none",
                "ehlo_name": "agent.client.test",
                "from": f"Deliverability probe <{GOOD_SENDER.address}>",
                "timeouts": {"connect": "5s", "stage": "10m", "total": "10m"},
            }
        )
        config = setup.write()
        first = AgentProcess(config)
        processes.append(first)
        session = await server.wait_for_session(0)
        await session.received.wait()
        message = session.messages[0]
        first.kill()  # SIGKILL before the 250: nobody knows whether the server kept the message

    token = re.search(rb"(?im)^X-Deliverability-Probe:\s*id=(\w+)", message)
    assert token is not None, message[:500]
    probe_id = token[1].decode()
    second = AgentProcess(config)
    processes.append(second)
    await asyncio.to_thread(second.wait_for, f"probe {probe_id} hanging -> seed: its SMTP")
    # The server did deliver it after all: the arrival, not the restart, decides.
    await asyncio.to_thread(mail_system.append, seed, message)
    await asyncio.to_thread(second.wait_for, f"probe {probe_id} hanging -> seed: inbox")
    assert await asyncio.to_thread(second.stop) == 0
    with Ledger(tmp_path / "state" / "ledger.sqlite3") as ledger:
        record = ledger.get(probe_id)
        assert record is not None
        assert (record.outcome, record.folder) == (Outcome.INBOX, "INBOX")
        assert record.interrupted_at is not None


async def test_an_smtp_reply_that_is_not_utf8_is_stored_printed_and_served_as_valid_text(
    tmp_path: Path,
) -> None:
    """One 0xff byte in a reply once took the status page down for good and made `once --json`
    print a lone surrogate: the text is now made valid where it enters, and stays servable."""
    submission, submissions, imaps = free_ports(3)
    refusal = Raw(b"550 5.7.1 caf\xe9 \xff refused\r\n")
    async with ScriptedSmtpServer(Script(rcpt={"inbox@sandbox.localhost": refusal})) as smtp:
        config_file = tmp_path / "config.yaml"
        config_file.write_text(
            f"""
state_dir: {tmp_path / "state"}
secret: not-utf8-test-secret-0123456789
sandbox:
  submission_port: {submission}
  submissions_port: {submissions}
  imaps_port: {imaps}
  mailboxes:
    - {{address: inbox@sandbox.localhost, auth: {{username: inbox, password: seed-password}}}}
routes:
  - {{name: odd, host: 127.0.0.1, port: {smtp.port}, tls: none, from: p@sandbox.localhost}}
mailboxes:
  - name: seed
    provider: sandbox
    host: 127.0.0.1
    port: {imaps}
    tls: implicit
    tls_verify: false
    auth: {{username: inbox, password: seed-password}}
    address: inbox@sandbox.localhost
probes: {{interval: 1h, jitter: 0s, deadline: 60s}}
""",
            encoding="utf-8",
        )
        once = await asyncio.create_subprocess_exec(
            *agent_command("once", "--json", "--config", str(config_file)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(WAIT * 2):
            stdout, stderr = await once.communicate()
    assert once.returncode == 1, stderr.decode("utf-8", "replace")  # rejected, not inbox

    probe = json.loads(stdout.decode("utf-8"))  # strict: raises on bytes that are not UTF-8
    assert probe["outcome"] == "rejected"
    rcpt = [reply for reply in probe["smtp"] if reply["stage"] == "rcpt"]
    assert rcpt[0]["text"] == "5.7.1 caf\\xe9 \\xff refused"
    json.dumps(probe, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate

    config = load_config(config_file, environ={})
    with Ledger(tmp_path / "state" / "ledger.sqlite3") as ledger:
        (record,) = ledger.recent(10)
        (stored,) = [reply for reply in record.transcript if reply.stage is Stage.RCPT]
        assert stored.text.encode("utf-8") == b"5.7.1 caf\\xe9 \\xff refused"

        def build(query: PageQuery) -> str:
            health = Health("test", True, "probing", 0.0, True, None)
            return render(collect(ledger, config, health, now=time.time()))

        server = HttpServer(
            new_registry(),
            host="127.0.0.1",
            port=0,
            health=lambda: Status(True, "alive"),
            readiness=lambda: Status(True, "probing"),
            page=LoopPage(asyncio.get_running_loop(), build),
        )
        try:
            page = await asyncio.to_thread(_get, server.port, "/")
        finally:
            server.close()
    assert "caf\\xe9 \\xff refused" in page
