"""The README's first run: `deliverability-agent` on the shipped config.yaml and its sandbox.

The shipped file is used as it is, except for what a test must change: the sandbox and listen
ports (free ones, so tests never collide), the state directory (the test's own), and the deadline
(8 s instead of 20 s, so a `missing` probe does not hold the suite up).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from agent.config import load_config
from tests.agent_process import WAIT, AgentProcess, agent_command
from tests.mailsystem.system import free_ports

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config.yaml"
# (route, mailbox) -> outcome, for every pair of the shipped config.
EXPECTED = {
    **{
        (route, mailbox): outcome
        for mailbox in ("sandbox-inbox", "sandbox-junk")
        for route, outcome in (
            ("sandbox-throttled", "deferred"),
            ("sandbox-blocked", "rejected"),
            ("sandbox-blackhole", "missing"),
            ("sandbox-bouncing", "bounced"),
            ("sandbox-wrong-password", "error"),
        )
    },
    ("sandbox", "sandbox-inbox"): "inbox",
    ("sandbox", "sandbox-junk"): "spam",
}


def write_shipped_config(directory: Path, *, listen_port: int = 0) -> Path:
    """The shipped config.yaml with free sandbox ports, a state dir in `directory`, deadline 8s."""
    text = SHIPPED.read_text(encoding="utf-8")
    for shipped_port, port in zip(("2587", "2465", "2993"), free_ports(3), strict=True):
        text = re.sub(rf"\b{shipped_port}\b", str(port), text)
    replacements = {
        "listen: 127.0.0.1:9465": f"listen: 127.0.0.1:{listen_port}",
        "state_dir: ./state": f"state_dir: {directory / 'state'}",
        "deadline: 20s": "deadline: 8s",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = directory / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def shipped_passwords(path: Path) -> set[str]:
    config = load_config(path, environ={})
    assert config.sandbox is not None
    passwords = {user.password.get_secret_value() for user in config.sandbox.users}
    passwords |= {m.auth.password.get_secret_value() for m in config.sandbox.mailboxes}
    passwords |= {
        r.auth.password.get_secret_value() for r in config.routes if r.auth and r.auth.password
    }
    return passwords


_OUTCOME_LINE = re.compile(r" probe \S+ (\S+) -> (\S+): (\w+)(?: in [\d.]+ s)?$")


def wait_for_every_outcome(agent: AgentProcess) -> None:
    """Read the agent's log until each pair of the shipped config has logged its outcome."""
    pending = dict(EXPECTED)
    for _ in range(10 * len(EXPECTED)):  # a first round logs ~3 lines per pair
        if not pending:
            return
        match = _OUTCOME_LINE.search(agent.wait_for(" -> ").rstrip())
        if match is not None and pending.get((match[1], match[2])) == match[3]:
            del pending[match[1], match[2]]
    pytest.fail(f"outcomes never logged: {pending}")


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("DELIVERABILITY_", "LOG_"))}


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def test_shipped_config_run_shows_every_outcome_on_metrics_and_the_status_page(
    tmp_path: Path, processes: list[AgentProcess]
) -> None:
    config = write_shipped_config(tmp_path)
    agent = AgentProcess(config)
    processes.append(agent)
    sandbox_line = agent.wait_for("sandbox mail provider: ")
    assert "(STARTTLS)" in sandbox_line and f"CA {tmp_path / 'state'}" in sandbox_line
    page_line = agent.wait_for("status page on http://127.0.0.1:")
    port = int(page_line.rsplit(":", 1)[1].strip().rstrip("/"))
    agent.wait_for(f"metrics on http://127.0.0.1:{port}/metrics")
    wait_for_every_outcome(agent)

    metrics = _get(f"http://127.0.0.1:{port}/metrics")
    for (route, mailbox), outcome in EXPECTED.items():
        series = (
            f'deliverability_probes_total{{mailbox="{mailbox}",outcome="{outcome}",'
            f'route="{route}"}} '
        )
        assert series in metrics
        assert float(metrics.split(series, 1)[1].split()[0]) >= 1
    page = _get(f"http://127.0.0.1:{port}/")
    for (route, mailbox), outcome in EXPECTED.items():
        assert f'data-route="{route}" data-mailbox="{mailbox}" data-outcome="{outcome}"' in page

    assert agent.stop() == 0
    agent.wait_for("stopped")
    log = "".join(agent.seen)
    for password in shipped_passwords(config):
        assert password not in log and password not in page and password not in metrics


def test_shipped_config_once_json_reports_every_outcome(tmp_path: Path) -> None:
    config = write_shipped_config(tmp_path)
    result = subprocess.run(
        agent_command("once", "--json", "--config", str(config)),
        capture_output=True,
        text=True,
        check=False,
        timeout=WAIT,
        env=_environment(),
    )
    assert result.returncode == 1, result.stderr  # not every probe landed in the inbox
    probes = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(p["route"], p["mailbox"]): p["outcome"] for p in probes} == EXPECTED
    inbox = next(p for p in probes if p["outcome"] == "inbox")
    assert inbox["auth"] == {"spf": "pass", "dkim": "pass", "dmarc": "pass", "arc": None}
    throttled = next(p for p in probes if p["route"] == "sandbox-throttled")
    assert [s["code"] for s in throttled["smtp"] if s["stage"] == "mail"] == [451]


def test_once_on_a_terminal_shows_progress_then_a_table(tmp_path: Path) -> None:
    config = write_shipped_config(tmp_path)
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            agent_command("once", "--config", str(config)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=terminal,
            env={**_environment(), "COLUMNS": "200"},  # the line is cut to the terminal's width
        )
    finally:
        os.close(terminal)
    chunks = []
    deadline = time.monotonic() + 2 * WAIT
    try:
        while True:
            # Bounded: a child that hangs with the terminal open fails the test, not the suite.
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([controller], [], [], max(0.0, remaining))
            if not readable:
                proc.kill()
                pytest.fail(f"`once` still running after {2 * WAIT:.0f} s")
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
    assert proc.stdout is not None
    table = proc.stdout.read().decode()
    assert proc.wait(timeout=WAIT) == 1
    progress = b"".join(chunks).decode(errors="replace")
    assert "\r\x1b[K12/12 probe(s) done" not in progress  # the line is cleared, not left behind
    assert re.search(
        r"\r\x1b\[K\d+/12 probe\(s\) done \(.*\); waiting \d+ s, at most 8 s", progress
    )
    rows = [line.split() for line in table.splitlines()]
    assert rows[0][:4] == ["ROUTE", "MAILBOX", "OUTCOME", "FOLDER"]
    assert Counter(row[2] for row in rows[1:]) == Counter(EXPECTED.values())
    throttled = next(line for line in table.splitlines() if line.startswith("sandbox-throttled"))
    assert throttled.endswith("mail 451 4.7.1 Rate limit exceeded, try later")


def _run_expecting_exit_2(config: Path) -> str:
    result = subprocess.run(
        agent_command("run", "--config", str(config)),
        capture_output=True,
        text=True,
        check=False,
        timeout=WAIT,
        env=_environment(),
    )
    assert result.returncode == 2, result.stderr
    return result.stderr


def test_run_says_which_sandbox_port_is_in_use(tmp_path: Path) -> None:
    config = write_shipped_config(tmp_path)
    port = load_config(config, environ={}).sandbox.imaps_port  # type: ignore[union-attr]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        stderr = _run_expecting_exit_2(config)
    assert (
        f"deliverability-agent: sandbox: cannot listen on 127.0.0.1:{port} for IMAP (TLS): "
        "the address is already in use"
    ) in stderr


def test_run_says_the_listen_address_is_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stderr = _run_expecting_exit_2(write_shipped_config(tmp_path, listen_port=port))
    assert (
        f"deliverability-agent: cannot listen on 127.0.0.1:{port}: the address is already in use"
    ) in stderr


def test_run_says_the_state_dir_is_unusable(tmp_path: Path) -> None:
    config = write_shipped_config(tmp_path)
    (tmp_path / "state").write_text("a file where the state directory should be\n")
    stderr = _run_expecting_exit_2(config)
    assert (
        f"deliverability-agent: state_dir {tmp_path / 'state'} exists but is not a directory"
        in stderr
    )
