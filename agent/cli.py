"""`deliverability-agent run | once | check-config`: the command-line entry points."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import Config, ConfigError, load_config
from agent.http_server import HttpServer, HttpServerError, Status
from agent.ledger import LedgerError, ProbeRecord
from agent.log_redaction import SecretRedactingFilter, config_secrets, configure_logging
from agent.metrics import Recorder, new_registry
from agent.model import Outcome
from agent.service import Agent

__all__ = ["main", "probe_json"]

log = logging.getLogger("agent")

EXIT_OK = 0
EXIT_NOT_ALL_INBOX = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deliverability-agent",
        description="Probe SMTP routes and seed mailboxes; export deliverability as metrics.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("run", "run as a service: probe on a schedule, serve /metrics"),
        ("once", "send one probe for every pair, wait for each outcome, print, exit"),
        ("check-config", "validate the configuration and exit"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--config",
            "-c",
            type=Path,
            default=Path("config.yaml"),
            help="configuration file (default: config.yaml)",
        )
        if name == "once":
            sub.add_argument("--json", action="store_true", help="one JSON object per probe")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"deliverability-agent: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check-config":
        pairs = config.pairs()
        print(
            f"{args.config}: OK: {len(config.routes)} route(s), {len(config.mailboxes)} "
            f"mailbox(es), {len(pairs)} pair(s), every {config.probes.interval:g} s"
        )
        return EXIT_OK
    redactor = configure_logging(config.log_level.level, config_secrets(config))
    try:
        if args.command == "once":
            return asyncio.run(_once(config, as_json=args.json))
        return asyncio.run(_run(config, args.config, redactor))
    except (LedgerError, HttpServerError) as exc:
        print(f"deliverability-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


# --- once -------------------------------------------------------------------------------------


def probe_json(record: ProbeRecord) -> dict[str, Any]:
    """The `once --json` object of one probe (a public format: see docs/cli.md)."""
    error = record.send_error
    auth = record.auth
    return {
        "route": record.route,
        "mailbox": record.mailbox,
        "probe_id": record.probe_id,
        "outcome": str(record.outcome) if record.outcome else None,
        "folder": record.folder,
        "latency_seconds": record.latency_seconds,
        "smtp": [
            {
                "stage": str(reply.stage),
                "code": reply.code,
                "enhanced_code": reply.enhanced_code,
                "class": str(reply.reply_class),
                "text": reply.text,
            }
            for reply in record.transcript
        ],
        "auth": {
            "spf": _str(auth.spf) if auth else None,
            "dkim": _str(auth.dkim) if auth else None,
            "dmarc": _str(auth.dmarc) if auth else None,
            "arc": _str(auth.arc) if auth else None,
        },
        "error": (
            {"stage": str(error.stage), "kind": str(error.kind), "message": error.message}
            if error
            else None
        ),
    }


def _str(value: object | None) -> str | None:
    return None if value is None else str(value)


async def _once(config: Config, *, as_json: bool) -> int:
    agent = Agent(config, recorder=Recorder(new_registry()))
    await agent.start()
    try:
        probe_ids = await agent.probe_all_once()
        if not as_json:
            print(
                f"sent {len(probe_ids)} probe(s); waiting up to "
                f"{config.probes.deadline:g} s for each to land",
                file=sys.stderr,
            )
        await agent.wait_final(probe_ids)
        records = [agent.ledger.get(pid) for pid in probe_ids]
    finally:
        await agent.stop()
    all_inbox = True
    rows = []
    for record in records:
        assert record is not None
        all_inbox &= record.outcome is Outcome.INBOX
        if as_json:
            print(json.dumps(probe_json(record), sort_keys=False))
        else:
            rows.append(_table_row(record))
    if not as_json:
        _print_table(rows)
    return EXIT_OK if all_inbox else EXIT_NOT_ALL_INBOX


def _table_row(record: ProbeRecord) -> list[str]:
    latency = f"{record.latency_seconds:.1f}s" if record.latency_seconds is not None else "-"
    auth = record.auth
    verdicts = " ".join(f"{m}={v}" for m, v in auth.items() if v is not None) if auth else ""
    final = record.transcript[-1] if record.transcript else None
    detail = (
        f"{record.send_error.stage} {record.send_error.kind}: {record.send_error.message}"
        if record.send_error
        else (f"{final.code} {final.enhanced_code or ''}".strip() if final else "")
    )
    return [
        record.route,
        record.mailbox,
        str(record.outcome),
        record.folder or "-",
        latency,
        verdicts or "-",
        detail,
    ]


def _print_table(rows: list[list[str]]) -> None:
    header = ["ROUTE", "MAILBOX", "OUTCOME", "FOLDER", "LATENCY", "AUTH", "DETAIL"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


# --- run --------------------------------------------------------------------------------------


async def _run(config: Config, path: Path, redactor: SecretRedactingFilter) -> int:
    registry = new_registry()
    recorder = Recorder(registry)
    recorder.config_reloaded(True, time.time())
    agent = Agent(config, recorder=recorder)
    loop = asyncio.get_running_loop()
    last_tick = [loop.time()]

    def health() -> Status:
        stalled = loop.time() - last_tick[0]
        return Status(stalled < 30.0, f"event loop last ran {stalled:.1f} s ago")

    def readiness() -> Status:
        if agent.draining:
            return Status(False, "draining")
        if not agent.started:
            return Status(False, "starting")
        return Status(True, "probing")

    server = HttpServer(
        registry,
        host=config.listen.host,
        port=config.listen.port,
        health=health,
        readiness=readiness,
    )
    stop = asyncio.Event()
    reloads: asyncio.Queue[None] = asyncio.Queue()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloads.put_nowait, None)
    try:
        await agent.start()
        agent.schedule()
        log.info(
            "deliverability-agent %s probing %d pair(s) every %g s; metrics on "
            "http://%s:%d/metrics, health on /healthz and /readyz",
            __version__,
            len(config.pairs()),
            config.probes.interval,
            config.listen.host,
            server.port,
        )
        while not stop.is_set():
            waiters = {asyncio.create_task(stop.wait()), asyncio.create_task(reloads.get())}
            done, pending = await asyncio.wait(
                waiters, timeout=5.0, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            last_tick[0] = loop.time()
            if stop.is_set():
                break
            if done:
                await _reload(agent, path, recorder, redactor)
        log.info("SIGTERM: draining")
    finally:
        await agent.stop()
        server.close()
    log.info("stopped")
    return EXIT_OK


async def _reload(
    agent: Agent, path: Path, recorder: Recorder, redactor: SecretRedactingFilter
) -> None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        recorder.config_reloaded(False, time.time())
        log.error("SIGHUP: keeping the running configuration; the new one is invalid:\n%s", exc)
        return
    redactor.update([*redactor.secrets, *config_secrets(config)])
    await agent.reload(config)
    recorder.config_reloaded(True, time.time())
    log.info("SIGHUP: configuration reloaded from %s", path)
