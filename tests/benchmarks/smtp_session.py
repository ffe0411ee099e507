"""Benchmark: the CPU of one SMTP submission session, the agent's and the least Python can do.

    .venv/bin/python -m tests.benchmarks.smtp_session [--sessions 200]

Method: starts the real test mail system and, in this process, submits a small message through
its submission port (STARTTLS, AUTH PLAIN, one recipient), one session after another, `--sessions`
times after 5 untimed ones; the figure is this process's CPU time (user + system) per session,
the median of three runs. Three ways, on each event loop (asyncio's own and uvloop):

- the agent's sender (`agent.smtp.sender.send_probe`: aiosmtplib, every reply recorded);
- a bare session: asyncio streams writing the same commands and reading each reply line, no
  library, no checks: the floor for an SMTP session in Python on that loop;
- the TLS handshake alone (blocking socket, `SSLContext.wrap_socket` after STARTTLS), with and
  without resuming the previous TLS session.

It is the reference for the agent's CPU per probe (`tests.benchmarks.probe_loop`): a probe is one
such session plus the IMAP watcher's push, search and fetch, the triage and three ledger commits.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import socket
import ssl
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.app import event_loop
from agent.app.event_loop import EventLoopKind
from agent.config import Config, Route
from agent.probing.targets import smtp_target
from agent.smtp.sender import send_probe
from agent.tls_contexts import load_client_context
from tests.agent_setup import AgentSetup
from tests.mailsystem import MailSystem

_MESSAGE = b"From: <sender@good.test>\r\nSubject: benchmark\r\n\r\nhello\r\n"


async def _cpu_per_session(session: Callable[[], Awaitable[None]], sessions: int) -> float:
    for _ in range(5):
        await session()
    runs = []
    for _ in range(3):
        started = time.process_time()
        for _ in range(sessions):
            await session()
        runs.append((time.process_time() - started) / sessions)
    return statistics.median(runs)


def _agent_session(config: Config, route: Route, recipient: str) -> Callable[[], Awaitable[None]]:
    target = smtp_target(route)
    envelope_from = config.envelope_from(route, "benchmark")

    async def session() -> None:
        result = await send_probe(
            target, envelope_from=envelope_from, recipients=[recipient], message=_MESSAGE
        )
        assert result.accepted, result

    return session


def _bare_session(route: Route, recipient: str) -> Callable[[], Awaitable[None]]:
    context = load_client_context(route.ca_file, verify=route.tls_verify)
    assert route.auth is not None and route.auth.password is not None
    plain = b"\0%s\0%s" % (
        route.auth.username.encode(),
        route.auth.password.get_secret_value().encode(),
    )
    commands = (
        b"MAIL FROM:<sender@good.test>\r\n",
        b"RCPT TO:<%s>\r\n" % recipient.encode(),
        b"DATA\r\n",
        _MESSAGE + b".\r\n",
    )

    async def session() -> None:
        reader, writer = await asyncio.open_connection(route.host, route.port)

        async def reply() -> bytes:
            while (line := await reader.readline())[3:4] == b"-":
                pass
            return line

        await reply()
        for command in (b"EHLO bench.test\r\n", b"STARTTLS\r\n"):
            writer.write(command)
            await reply()
        await writer.start_tls(context, server_hostname=route.host)
        for command in (b"EHLO bench.test\r\n", b"AUTH PLAIN %s\r\n" % base64.b64encode(plain)):
            writer.write(command)
            await reply()
        for command in commands:
            writer.write(command)
            line = await reply()
        assert line.startswith(b"250"), line
        writer.write(b"QUIT\r\n")
        await reply()
        writer.close()

    return session


def _handshake_cpu(route: Route, sessions: int, *, resume: bool) -> float:
    context = load_client_context(route.ca_file, verify=route.tls_verify)
    previous: ssl.SSLSession | None = None
    cpu = 0.0
    for _ in range(sessions):
        with socket.create_connection((route.host, route.port)) as sock:
            lines = sock.makefile("rb")
            lines.readline()
            sock.sendall(b"EHLO bench.test\r\n")
            while lines.readline()[3:4] == b"-":
                pass
            sock.sendall(b"STARTTLS\r\n")
            lines.readline()
            started = time.process_time()
            tls = context.wrap_socket(
                sock, server_hostname=route.host, session=previous if resume else None
            )
            cpu += time.process_time() - started
            tls.sendall(b"QUIT\r\n")
            tls.recv(512)  # the 221, and with TLS 1.3 the session ticket before it
            previous = tls.session
            tls.close()
    return cpu / sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    args = parser.parse_args()
    system = MailSystem.create()
    system.start()
    rows: list[tuple[str, float]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            account = system.new_mailbox()
            config = AgentSetup(system, Path(tmp)).route("good").mailbox("seed", account).load()
            route = config.routes[0]
            for kind in EventLoopKind:
                agent = _agent_session(config, route, account.address)
                bare = _bare_session(route, account.address)
                rows.append(
                    (
                        f"agent's sender, {kind}",
                        event_loop.run(_cpu_per_session(agent, args.sessions), kind),
                    )
                )
                rows.append(
                    (
                        f"bare session, {kind}",
                        event_loop.run(_cpu_per_session(bare, args.sessions), kind),
                    )
                )
            for resume in (False, True):
                name = "TLS handshake alone" + (", session resumed" if resume else "")
                rows.append((name, _handshake_cpu(route, args.sessions, resume=resume)))
    finally:
        system.stop()
    print(__doc__.split("Method: ")[1].strip())
    print(f"\n{args.sessions} sessions per figure\n")
    for name, cpu in rows:
        print(f"{name:40s} {cpu * 1000:6.2f} ms CPU per session")


if __name__ == "__main__":
    main()
