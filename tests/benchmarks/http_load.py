"""Benchmark: the agent's HTTP endpoint under a scrape storm and under idle connections.

    .venv/bin/python -m tests.benchmarks.http_load [--pairs 100] [--clients 200] [--requests 2000]
        [--idle 400] [--idle-wait 30] [--gzip]

Method: this process plays the agent: an asyncio loop on the main thread (the thread that owns the
ledger and builds the status page, as in `agent run`), a registry with every series of `--pairs`
(route, seed mailbox) pairs declared by the real Recorder, a ledger holding three finished probes
per pair, and the real HttpServer serving /metrics and the real status page on `/`. The clients
run in a second process (so their CPU does not share this one's GIL; they share the machine's
cores). Storm: `--clients` concurrent clients send `--requests` requests in all, alternating
/metrics and /, each on a new connection (`Connection: close`, what every server version
supports), reading the whole response; a request that fails, answers other than 200 or takes
over 30 s is an error. Idle: `--idle` clients connect and send nothing; the server process
counts its threads while they are held, one more client then fetches /metrics, and the idle
clients wait up to `--idle-wait` s for the server to close their connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.config import Config, validate_config
from agent.model import Outcome, SendResult, SmtpReply, Stage
from agent.monitoring.catalog import exposition, new_registry
from agent.monitoring.recorder import Recorder
from agent.store.ledger import Ledger
from agent.web.http_server import HttpServer, Status
from agent.web.status_page import Health, LoopPage, PageQuery, collect, render

_REQUEST_TIMEOUT = 30.0
_ROUTES = 10


# --- the server side (this process) -----------------------------------------------------------


def _config(pairs: int, tmp: Path) -> Config:
    mailboxes = max(1, pairs // _ROUTES)
    return validate_config(
        {
            "secret": "http-load-benchmark-secret-0123456789",
            "routes": [
                {"name": f"route-{r}", "host": "smtp.example.com", "from": "probe@example.com"}
                for r in range(_ROUTES)
            ],
            "mailboxes": [
                {
                    "name": f"seed-{m}",
                    "host": "imap.example.com",
                    "auth": {"username": f"seed-{m}", "password": "seed-password"},
                    "address": f"seed-{m}@example.com",
                }
                for m in range(mailboxes)
            ],
        },
        base_dir=tmp,
        environ={},
    )


def _fill(ledger: Ledger, config: Config, now: float) -> None:
    transcript = (
        SmtpReply(Stage.BANNER, 220, None, "smtp.example.com ESMTP ready"),
        SmtpReply(Stage.EHLO, 250, None, "smtp.example.com\nPIPELINING\nSTARTTLS\n8BITMIME"),
        SmtpReply(Stage.MAIL, 250, "2.1.0", "2.1.0 Ok"),
        SmtpReply(Stage.RCPT, 250, "2.1.5", "2.1.5 Ok"),
        SmtpReply(Stage.DATA, 354, None, "End data with <CR><LF>.<CR><LF>"),
        SmtpReply(Stage.END_OF_DATA, 250, "2.0.0", "2.0.0 Ok: queued as 4XYZ"),
    )
    index = 0
    for age in (900, 600, 300):
        for route, mailbox in config.pairs():
            probe_id = f"p{index:06d}"
            index += 1
            at = now - age
            ledger.record_sending(
                probe_id=probe_id,
                route=route.name,
                mailbox=mailbox.name,
                created_at=at,
                deadline_at=at + 600,
            )
            ledger.record_send_result(
                probe_id,
                SendResult(transcript, True, at + 1, 1.0, tls_version="TLSv1.3"),
            )
            ledger.finalize(probe_id, outcome=Outcome.INBOX, finished_at=at + 5, latency_seconds=4)


async def _serve(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    config = _config(args.pairs, tmp)
    pairs = [(route.name, mailbox.name) for route, mailbox in config.pairs()]
    registry = new_registry()
    Recorder(registry).declare(pairs)
    started = time.time()
    with Ledger(tmp / "ledger.sqlite3") as ledger:
        _fill(ledger, config, started)

        def build(query: PageQuery) -> str:
            health = Health("bench", True, "probing", started, True, started)
            return render(collect(ledger, config, health, now=time.time()))

        server = HttpServer(
            registry,
            host="127.0.0.1",
            port=0,
            health=lambda: Status(True, "alive"),
            readiness=lambda: Status(True, "probing"),
            page=LoopPage(loop, build),
        )
        try:
            sizes = {
                "metrics_bytes": len(exposition(registry)),
                "page_bytes": len(build(PageQuery()).encode()),
            }
            threads_before = threading.active_count()
            storm = await _client(args, server.port, "storm", _Peak())
            peak = _Peak()
            idle = await _client(args, server.port, "idle", peak)
        finally:
            await asyncio.to_thread(server.close)
    return {
        **sizes,
        "pairs": len(pairs),
        "threads_before": threads_before,
        "storm": storm,
        "idle": {**idle, "threads_while_idle_held": peak.value},
    }


class _Peak:
    """The highest thread count of this process seen while the client said it holds connections."""

    def __init__(self) -> None:
        self.value = 0

    def sample(self) -> None:
        self.value = max(self.value, threading.active_count())


async def _client(args: argparse.Namespace, port: int, mode: str, peak: _Peak) -> dict[str, Any]:
    command = [sys.executable, "-m", "tests.benchmarks.http_load", "--client", mode]
    command += ["--port", str(port), "--clients", str(args.clients)]
    command += ["--requests", str(args.requests), "--idle", str(args.idle)]
    command += ["--idle-wait", str(args.idle_wait)] + (["--gzip"] if args.gzip else [])
    proc = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    result: dict[str, Any] = {}
    while line := await proc.stdout.readline():
        message = json.loads(line)
        if "held" in message:
            # The clients hold their idle connections: count threads for a moment, then go on.
            for _ in range(20):
                peak.sample()
                await asyncio.sleep(0.05)
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        else:
            result = message
    await proc.wait()
    return result


# --- the client side (a second process) -------------------------------------------------------


async def _request(port: int, path: str, gzip: bool) -> tuple[str | None, float]:
    """(None, seconds) for a 200 read to the end, else (what went wrong, seconds)."""
    started = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(_REQUEST_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            extra = "Accept-Encoding: gzip\r\n" if gzip else ""
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"
            writer.write(request.encode())
            response = await reader.read()
    except TimeoutError:
        return "timeout", time.perf_counter() - started
    except OSError as exc:
        return type(exc).__name__, time.perf_counter() - started
    finally:
        if writer is not None:
            writer.close()
    elapsed = time.perf_counter() - started
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        return f"status {status[0].decode() if status else 'none'}", elapsed
    return (None if body else "empty body"), elapsed


async def _storm(args: argparse.Namespace) -> dict[str, Any]:
    paths = ["/metrics", "/"]
    counter = iter(range(args.requests))
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def client() -> None:
        for index in counter:
            error, seconds = await _request(args.port, paths[index % 2], args.gzip)
            latencies.append(seconds)
            if error is not None:
                errors[error] = errors.get(error, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.clients)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {
        "requests": len(latencies),
        "clients": args.clients,
        "errors": errors,
        "p50_ms": pct(0.50) * 1000,
        "p95_ms": pct(0.95) * 1000,
        "p99_ms": pct(0.99) * 1000,
        "max_ms": ordered[-1] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
        "wall_s": wall,
    }


async def _idle(args: argparse.Namespace) -> dict[str, Any]:
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    failed = 0
    for _ in range(args.idle):
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        except (OSError, TimeoutError):
            failed += 1
            continue
        opened.append((reader, writer, time.perf_counter()))
    print(json.dumps({"held": len(opened)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    error, seconds = await _request(args.port, "/metrics", args.gzip)

    async def closed_after(reader: asyncio.StreamReader, since: float) -> float | None:
        try:
            remaining = args.idle_wait - (time.perf_counter() - since)
            async with asyncio.timeout(max(0.0, remaining)):
                await reader.read()
        except TimeoutError:
            return None
        except OSError:
            pass
        return time.perf_counter() - since

    closed = await asyncio.gather(*(closed_after(r, since) for r, _, since in opened))
    for _, writer, _ in opened:
        writer.close()
    cut = sorted(c for c in closed if c is not None)
    return {
        "idle_opened": len(opened),
        "idle_refused": failed,
        "new_client_error": error,
        "new_client_ms": seconds * 1000,
        "idle_closed_by_server": len(cut),
        "idle_closed_after_s": (cut[0], cut[-1]) if cut else None,
    }


# --- report -----------------------------------------------------------------------------------


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"Python {platform.python_version()}, {platform.system()}"
    return f"{os.cpu_count()} CPU(s), {cpu}; {system}"


def _report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    print(__doc__.split("Method: ")[1].strip())
    print(f"\nmachine: {_machine()}")
    print(
        f"{result['pairs']} pairs: /metrics {result['metrics_bytes']} bytes, "
        f"status page {result['page_bytes']} bytes{'; gzip asked for' if args.gzip else ''}"
    )
    storm = result["storm"]
    errors = sum(storm["errors"].values())
    print(
        f"\nstorm: {storm['requests']} requests from {storm['clients']} concurrent clients in "
        f"{storm['wall_s']:.1f} s"
    )
    print(f"  errors: {errors} {storm['errors'] or ''}".rstrip())
    print(
        f"  latency: p50 {storm['p50_ms']:.1f} ms, p95 {storm['p95_ms']:.1f} ms, "
        f"p99 {storm['p99_ms']:.1f} ms, max {storm['max_ms']:.1f} ms"
    )
    idle = result["idle"]
    print(
        f"\nidle: {idle['idle_opened']} connections held ({idle['idle_refused']} failed to "
        f"connect); server threads {result['threads_before']} before, "
        f"{idle['threads_while_idle_held']} while held"
    )
    outcome = idle["new_client_error"] or "200"
    print(f"  one more client meanwhile: {outcome} in {idle['new_client_ms']:.1f} ms")
    if idle["idle_closed_after_s"]:
        first, last = idle["idle_closed_after_s"]
        print(
            f"  closed by the server: {idle['idle_closed_by_server']} of {idle['idle_opened']}, "
            f"after {first:.1f} to {last:.1f} s"
        )
    else:
        print(f"  closed by the server: none within {args.idle_wait:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--idle", type=int, default=400)
    parser.add_argument("--idle-wait", type=float, default=30.0)
    parser.add_argument("--gzip", action="store_true", help="send Accept-Encoding: gzip")
    parser.add_argument("--client", choices=["storm", "idle"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        run = _storm if args.client == "storm" else _idle
        print(json.dumps(asyncio.run(run(args))), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(_serve(args, Path(tmp)))
    _report(args, result)


if __name__ == "__main__":
    main()
