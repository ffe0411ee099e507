"""Benchmark: how long an OAuth sign-in takes to end when the server refuses the token.

    .venv/bin/python -m tests.benchmarks.oauth_refusal [--rounds N] [--timeout S]

Method: starts the real test mail system and signs in to Dovecot's IMAPS port N times each with a
valid and with an expired access token (`MailSystem.mint_token`), two ways: aioimaplib's own
`xoauth2()` (with its command timeout S) and the agent's `Connection.login()` (AUTHENTICATE
XOAUTH2, command timeout S). Each sign-in is timed from sending AUTHENTICATE to its end (the
connection and TLS handshake excluded). Dovecot answers a refused token with an error challenge;
aioimaplib never answers it, so its command waits for the timeout; the agent answers it and the
server's NO ends the command. Then the same for SMTP AUTH on the submission port (the agent's
sender; the whole transaction, connect and STARTTLS included, with a valid and an expired token).
Prints the median and the maximum per case and what each sign-in ended with.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import time

import aioimaplib

from agent.imap.connection import Connection
from agent.imap.errors import ImapError
from agent.imap.target import ImapTarget
from agent.model import TlsMode
from agent.oauth import OAuthSignIn, SaslMechanism, StaticTokenSource
from agent.smtp.sender import SmtpTarget, send_probe
from tests.agent_setup import GOOD_SENDER
from tests.mailsystem import MailSystem


async def _library(system: MailSystem, user: str, token: str, limit: float) -> tuple[float, str]:
    context = ssl.create_default_context(cafile=str(system.ca_file))
    client = aioimaplib.IMAP4_SSL(
        "127.0.0.1", system.ports.imaps, ssl_context=context, timeout=limit
    )
    await client.wait_hello_from_server()
    started = time.monotonic()
    try:
        ended = (await client.xoauth2(user, token)).result
    except Exception as exc:  # the library's timeout, as the benchmark expects
        ended = type(exc).__name__
    elapsed = time.monotonic() - started
    try:
        async with asyncio.timeout(1.0):
            await client.logout()
    except Exception:
        pass  # a hung connection may not say goodbye
    return elapsed, ended


async def _agent(system: MailSystem, user: str, token: str, limit: float) -> tuple[float, str]:
    target = ImapTarget(
        mailbox="bench",
        host="127.0.0.1",
        port=system.ports.imaps,
        tls=TlsMode.IMPLICIT,
        username=user,
        oauth=OAuthSignIn(user, StaticTokenSource(token), SaslMechanism.XOAUTH2),
        ca_file=system.ca_file,
        command_timeout=limit,
    )
    connection = await Connection.open(target)
    started = time.monotonic()
    try:
        await connection.login()
        ended = "OK"
    except ImapError as exc:
        ended = f"ImapError {exc.kind.value}"
    elapsed = time.monotonic() - started
    await connection.close(logout=True)
    return elapsed, ended


async def _smtp(system: MailSystem, token: str, limit: float) -> tuple[float, str]:
    seed = system.new_mailbox()
    target = SmtpTarget(
        route="bench",
        host="127.0.0.1",
        port=system.ports.submission,
        tls=TlsMode.STARTTLS,
        tls_verify=True,
        ca_file=system.ca_file,
        oauth=OAuthSignIn(GOOD_SENDER.address, StaticTokenSource(token), SaslMechanism.XOAUTH2),
        ehlo_name="bench.client.test",
        connect_timeout=limit,
        stage_timeout=limit,
        total_timeout=limit * 3,
    )
    message = f"From: {GOOD_SENDER.address}\r\nTo: {seed.address}\r\nSubject: b\r\n\r\nb\r\n"
    started = time.monotonic()
    result = await send_probe(
        target,
        envelope_from=GOOD_SENDER.address,
        recipients=[seed.address],
        message=message.encode(),
    )
    elapsed = time.monotonic() - started
    ended = (
        "accepted"
        if result.accepted
        else f"error {result.error.kind.value if result.error else '?'}"
    )
    return elapsed, ended


async def _run(system: MailSystem, rounds: int, limit: float) -> None:
    account = system.new_mailbox()
    lifetimes = {"valid": 3600.0, "expired": -1.0}
    print(f"{rounds} sign-ins per case, command timeout {limit:g} s")
    for name, run in (("aioimaplib xoauth2()", _library), ("agent AUTHENTICATE", _agent)):
        for label, lifetime in lifetimes.items():
            user = account.address
            results = [
                await run(system, user, system.mint_token(user, lifetime=lifetime), limit)
                for _ in range(rounds)
            ]
            _report(f"IMAP {name}", label, results)
    for label, lifetime in lifetimes.items():
        user = GOOD_SENDER.address
        results = [
            await _smtp(system, system.mint_token(user, lifetime=lifetime), limit)
            for _ in range(rounds)
        ]
        _report("SMTP agent transaction", label, results)


def _report(name: str, label: str, results: list[tuple[float, str]]) -> None:
    times = [elapsed for elapsed, _ in results]
    endings = sorted({ended for _, ended in results})
    print(
        f"{name:28} {label:8} median {statistics.median(times) * 1000:8.1f} ms"
        f"  max {max(times) * 1000:8.1f} ms  ended: {', '.join(endings)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    system = MailSystem.create()
    with system.running():
        asyncio.run(_run(system, args.rounds, args.timeout))


if __name__ == "__main__":
    main()
