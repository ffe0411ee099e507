"""`deliverability-agent run | once | check-config | inspect | oauth`: the command-line entry
points."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from agent import __version__
from agent.app.event_loop import (
    EventLoopKind,
    add_event_loop_option,
    loop_kind_of,
    unavailable,
)
from agent.app.event_loop import run as run_loop
from agent.app.inspection import (
    InspectOptions,
    inspect_message,
    read_inputs,
    render_json,
    render_text,
)
from agent.app.logs import LogFormat, SecretRedactingFilter, configure_logging
from agent.app.oauth_check import oauth_test
from agent.app.service import Agent
from agent.config import Config, ConfigError, load_config
from agent.errors import AgentError
from agent.model import ConfigLoaded, Outcome, WebhookRefused
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder
from agent.oauth.lifecycle import CredentialState
from agent.oauth.login import LoginError, login, plan_login
from agent.oauth.sources import OwnerKind
from agent.oauth.token_source import TokenError
from agent.providers import parse_trust_rule, trust_rules_for
from agent.reading.probe_token import KeyRing
from agent.sandbox import SandboxServer
from agent.secrets import secret_values
from agent.sharding import ENV_COUNT, ENV_INDEX, Shard, ShardError, shard_from
from agent.smtp.replies import deciding_reply
from agent.store.ledger import STATE_DIR_MODE, ProbeRecord, spam_verdict_json
from agent.web.http_server import BasicAuth, HttpServer, Status
from agent.web.status_page import (
    DEFAULT_REFRESH_SECONDS,
    Health,
    LoopPage,
    PageQuery,
    collect_in_steps,
    render,
)
from agent.webhooks.receiver import EspPost, WebhookReceiver

if TYPE_CHECKING:
    pass

__all__ = ["main", "probe_json", "readiness_of"]

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
        if name != "check-config":
            sub.add_argument(
                "--log-format",
                choices=[fmt.value for fmt in LogFormat],
                default=LogFormat.TEXT.value,
                help="log lines as readable text (default), logfmt or JSON; logfmt and JSON carry "
                "route, mailbox and probe_id as fields",
            )
            add_event_loop_option(sub)
        if name == "run":
            _shard_flags(sub)
        if name == "once":
            sub.add_argument("--json", action="store_true", help="one JSON object per probe")
            sub.add_argument(
                "--no-progress",
                action="store_true",
                help="no progress line while waiting (it is shown only on a terminal anyway)",
            )
    text = "read saved messages or header blocks and print what the agent concludes from them"
    sub = commands.add_parser("inspect", help=text, description=text)
    sub.add_argument("files", nargs="+", type=Path, metavar="FILE", help="raw message (LF or CRLF)")
    sub.add_argument(
        "--config",
        "-c",
        type=Path,
        help="verify probe tokens with this configuration's secret (and, with --mailbox, apply "
        "that mailbox's trust rules)",
    )
    sub.add_argument("--mailbox", help="the configured mailbox the messages were found in")
    sub.add_argument(
        "--provider",
        help="read Authentication-Results with this provider's trust rules (a profile of "
        "docs/providers.md: gmail, microsoft365, yahoo, icloud, fastmail, ...; others: the "
        "topmost field)",
    )
    sub.add_argument(
        "--trusted-authserv-id",
        action="append",
        default=[],
        metavar="RULE",
        help="trust Authentication-Results fields with this authserv-id (repeatable; overrides "
        "the mailbox's)",
    )
    sub.add_argument("--json", action="store_true", help="one JSON object per file and line")
    text = "OAuth 2.0 sign-in of a route or mailbox: get its first refresh token, or try it"
    oauth = commands.add_parser("oauth", help=text, description=text)
    actions = oauth.add_subparsers(dest="oauth_command", required=True, metavar="ACTION")
    for action, text in (
        (
            "login",
            "obtain the first refresh token (device code, or a browser redirect to this machine) "
            "and store it where the agent reads it",
        ),
        (
            "test",
            "get an access token once and sign in with it (IMAP for a mailbox, SMTP AUTH without "
            "sending for a route); print what that proved; exit 0 on success, 1 otherwise",
        ),
    ):
        sub = actions.add_parser(action, help=text, description=text)
        sub.add_argument(
            "--config",
            "-c",
            type=Path,
            default=Path("config.yaml"),
            help="configuration file (default: config.yaml)",
        )
        which = sub.add_mutually_exclusive_group(required=True)
        which.add_argument("--mailbox", metavar="NAME", help="a configured (bounce) mailbox")
        which.add_argument("--route", metavar="NAME", help="a configured route")
        if action == "login":
            sub.add_argument(
                "--wait",
                type=float,
                default=600.0,
                metavar="SECONDS",
                help="how long the sign-in in the browser may take (default: 600)",
            )
    return parser


def _shard_flags(sub: argparse.ArgumentParser) -> None:
    """Sharded replicas (agent.sharding): each owns a share of the seed mailboxes."""
    sub.add_argument(
        "--shard-index",
        metavar="I",
        help=f"this replica's shard, 0 .. N-1 (default: ${ENV_INDEX}, else not sharded)",
    )
    sub.add_argument(
        "--shard-count",
        metavar="N",
        help=f"how many replicas share the seed mailboxes (default: ${ENV_COUNT}, else 1)",
    )
    sub.add_argument(
        "--shard-index-from-hostname",
        action="store_true",
        help="the shard index is the ordinal at the end of the hostname, as in a StatefulSet "
        "(deliverability-agent-2 -> 2)",
    )


def _shard_of(args: argparse.Namespace) -> Shard:
    return shard_from(
        index=args.shard_index,
        count=args.shard_count,
        from_hostname=args.shard_index_from_hostname,
        environ=os.environ,
        hostname=os.environ.get("HOSTNAME") or socket.gethostname(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "inspect":
        return _inspect(args)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"deliverability-agent: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    shard = Shard()
    if args.command == "run":
        try:
            shard = _shard_of(args)
        except ShardError as exc:
            print(f"deliverability-agent: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "check-config":
        pairs = config.pairs()
        print(
            f"{args.config}: OK: {len(config.routes)} route(s), {len(config.mailboxes)} "
            f"mailbox(es), {len(pairs)} pair(s), every {config.probes.interval:g} s"
        )
        return EXIT_OK
    problem = _state_dir_problem(config.state_dir)
    if problem is not None:
        print(f"deliverability-agent: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "oauth":
        configure_logging(logging.WARNING, secret_values(config))
        owner: tuple[OwnerKind, str] = (
            ("route", args.route) if args.route is not None else ("mailbox", args.mailbox)
        )
        if args.oauth_command == "login":
            return _oauth_login(config, *owner, wait=args.wait)
        return asyncio.run(oauth_test(config, *owner, out=sys.stdout))
    level = config.log_level.level
    progress = None
    if args.command == "once" and not args.json and not args.no_progress and sys.stderr.isatty():
        progress = sys.stderr
        # The progress line and the table say what INFO lines would; they would only break it.
        level = max(level, logging.WARNING)
    redactor = configure_logging(
        level, secret_values(config), log_format=LogFormat(args.log_format)
    )
    loop_kind = EventLoopKind(args.event_loop)
    if (reason := unavailable(loop_kind)) is not None:
        print(f"deliverability-agent: {reason}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "once":
            return run_loop(_once(config, as_json=args.json, progress=progress), loop_kind)
        return run_loop(_run(config, args.config, redactor, shard=shard), loop_kind)
    except AgentError as exc:
        print(f"deliverability-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _oauth_login(config: Config, kind: OwnerKind, name: str, *, wait: float) -> int:
    """`oauth login`: 0 with the refresh token stored (or none needed), 1 when the sign-in
    failed, 2 for a route or mailbox that cannot log in."""
    try:
        plan = plan_login(config, kind, name)
    except LoginError as exc:
        print(f"deliverability-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if plan.flow is None:
        print(f"{kind} {name!r} (credential {plan.credential!r}): {plan.reason}")
        return EXIT_OK
    try:
        path = asyncio.run(login(plan, show=lambda line: print(line, flush=True), wait=wait))
    except (LoginError, TokenError) as exc:
        print(f"deliverability-agent: oauth login failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(
        f"signed in: the refresh token of credential {plan.credential!r} is stored in {path} "
        "(mode 0600); the agent uses it from its next start"
    )
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    """The `inspect` command: exit 0 when every file was read, 2 otherwise (or on bad options)."""
    keys: KeyRing | None = None
    trusted: tuple[str, ...] = tuple(args.trusted_authserv_id)
    for rule in trusted:
        try:
            parse_trust_rule(rule)
        except ValueError as exc:
            print(f"deliverability-agent: inspect: --trusted-authserv-id {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.provider is not None and not trusted:
        trusted = tuple(str(rule) for rule in trust_rules_for(args.provider))
    recipient: str | None = None
    if args.mailbox is not None and args.config is None:
        print("deliverability-agent: inspect: --mailbox needs --config", file=sys.stderr)
        return EXIT_USAGE
    if args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"deliverability-agent: invalid configuration:\n{exc}", file=sys.stderr)
            return EXIT_USAGE
        keys = KeyRing(config.secret.get_secret_value().encode())
        if args.mailbox is not None:
            try:
                mailbox = config.mailbox(args.mailbox)
            except KeyError:
                try:
                    mailbox = config.bounce_mailbox(args.mailbox)
                except KeyError:
                    known = [m.name for m in (*config.mailboxes, *config.bounce_mailboxes)]
                    print(
                        f"deliverability-agent: inspect: no mailbox {args.mailbox!r} in "
                        f"{args.config} (known: {', '.join(known) or 'none'})",
                        file=sys.stderr,
                    )
                    return EXIT_USAGE
            recipient = mailbox.address
            if not args.trusted_authserv_id and args.provider is None:
                trusted = mailbox.trust_rules
    options = InspectOptions(keys=keys, trusted_authserv_ids=trusted, recipient=recipient)
    status = EXIT_OK
    for path, content in read_inputs(args.files):
        if isinstance(content, OSError):
            print(f"deliverability-agent: {path}: {content.strerror or content}", file=sys.stderr)
            status = EXIT_USAGE
            continue
        report = inspect_message(content, options)
        print(render_json(str(path), report) if args.json else render_text(str(path), report))
    return status


def _state_dir_problem(state_dir: Path) -> str | None:
    """Why the state directory cannot hold the ledger, or None; creates it when missing."""
    try:
        state_dir.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    except FileExistsError:
        return f"state_dir {state_dir} exists but is not a directory"
    except OSError as exc:
        return f"cannot create state_dir {state_dir}: {exc.strerror}"
    if not state_dir.is_dir():
        return f"state_dir {state_dir} exists but is not a directory"
    if not os.access(state_dir, os.R_OK | os.W_OK | os.X_OK):
        return (
            f"state_dir {state_dir} is not readable and writable by this user "
            f"(uid {os.getuid()}); fix its owner or mode, or set state_dir elsewhere"
        )
    return None


@contextlib.asynccontextmanager
async def _sandbox(config: Config) -> AsyncIterator[SandboxServer | None]:
    """The embedded sandbox mail provider while the block runs, when the config has one."""
    if config.sandbox is None:
        yield None
        return
    sandbox = await SandboxServer.start(config.sandbox, state_dir=config.state_dir)
    log.info("sandbox mail provider: %s", sandbox.addresses.describe())
    try:
        yield sandbox
    finally:
        await sandbox.close()


# --- once -------------------------------------------------------------------------------------


def probe_json(record: ProbeRecord) -> dict[str, Any]:
    """The `once --json` object of one probe (a public format: see the README's "Commands")."""
    error = record.send_error
    auth = record.auth
    return {
        "route": record.route,
        "mailbox": record.mailbox,
        "probe_id": record.probe_id,
        "outcome": str(record.outcome) if record.outcome else None,
        "folder": record.folder,
        # The Gmail inbox tab, for an inbox placement on a server with X-GM-EXT-1; else null.
        "category": _str(record.arrival.category) if record.arrival else None,
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
        "spam": [spam_verdict_json(verdict) for verdict in record.spam],
        "error": (
            {"stage": str(error.stage), "kind": str(error.kind), "message": error.message}
            if error
            else None
        ),
    }


def _str(value: object | None) -> str | None:
    return None if value is None else str(value)


async def _once(config: Config, *, as_json: bool, progress: TextIO | None = None) -> int:
    # The filter clears the progress line before each log line is written over it.
    handlers = logging.getLogger().handlers if progress is not None else []
    clear = _ClearProgressLine(progress or sys.stderr)
    async with _sandbox(config):
        agent = Agent(config, recorder=Recorder(new_registry()))
        await agent.start()
        try:
            for handler in handlers:
                handler.addFilter(clear)
            if progress is not None:
                _show(progress, f"sending {len(config.pairs())} probe(s)...")
            probe_ids = await agent.probe_all_once()
            if progress is not None:
                await _wait_showing_progress(agent, probe_ids, config.probes.deadline, progress)
            else:
                if not as_json:
                    print(
                        f"sent {len(probe_ids)} probe(s); waiting up to "
                        f"{config.probes.deadline:g} s for each to land",
                        file=sys.stderr,
                    )
                await agent.wait_final(probe_ids)
            records = [agent.ledger.get(pid) for pid in probe_ids]
            credentials = agent.credentials()
        finally:
            for handler in handlers:
                handler.removeFilter(clear)
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
    if as_json:
        for credential in credentials:
            print(json.dumps(credential_json(credential), sort_keys=False))
    else:
        _print_table(rows)
        if credentials:
            print()
            _print_table([_credential_row(c) for c in credentials], _CREDENTIAL_HEADER)
    return EXIT_OK if all_inbox else EXIT_NOT_ALL_INBOX


def credential_json(state: CredentialState) -> dict[str, Any]:
    """The `once --json` object of one OAuth credential, after the probes' (a public format:
    see the README's "Commands"); never a token or secret."""
    return {
        "credential": state.credential,
        "method": state.method,
        "ok": state.error_kind is None and state.last_success_at is not None,
        "last_success_at": _iso(state.last_success_at),
        "expires_at": _iso(state.expires_at),
        "error": (
            {"kind": str(state.error_kind), "message": state.error}
            if state.error_kind is not None
            else None
        ),
    }


_CREDENTIAL_HEADER = ["CREDENTIAL", "HOW", "STATE", "LAST TOKEN", "ERROR"]


def _credential_row(state: CredentialState) -> list[str]:
    return [
        state.credential,
        state.method,
        (
            str(state.error_kind)
            if state.error_kind is not None
            else ("ok" if state.last_success_at is not None else "not asked yet")
        ),
        _iso(state.last_success_at) or "never",
        state.error or "",
    ]


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _show(stream: TextIO, text: str) -> None:
    """Rewrite the terminal's current line with `text` (empty: clear it), cut to its width."""
    width = shutil.get_terminal_size().columns - 1
    stream.write(_CLEAR_LINE + (text if len(text) <= width else text[: width - 3] + "..."))
    stream.flush()


_CLEAR_LINE = "\r\033[K"


class _ClearProgressLine(logging.Filter):
    """Clears the progress line before a log line is written over it."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    def filter(self, record: logging.LogRecord) -> bool:
        self._stream.write(_CLEAR_LINE)
        return True


async def _wait_showing_progress(
    agent: Agent, probe_ids: list[str], deadline: float, stream: TextIO
) -> None:
    """Wait for every probe's outcome, keeping one line up to date: how many are done, with
    which outcome, and for how long the rest have been awaited."""
    loop = asyncio.get_running_loop()
    waits = [agent.outcomes.wait(pid) for pid in probe_ids]
    started = loop.time()
    while True:
        done = [wait.result() for wait in waits if wait.done()]
        counts = Counter(final.outcome.value for final in done)
        text = f"{len(done)}/{len(waits)} probe(s) done"
        if counts:
            text += " (" + ", ".join(f"{n} {o}" for o, n in sorted(counts.items())) + ")"
        pending = [wait for wait in waits if not wait.done()]
        if not pending:
            break
        elapsed = loop.time() - started
        _show(stream, f"{text}; waiting {elapsed:.0f} s, at most {deadline:g} s")
        # Wakes at each outcome, and every second to move the clock.
        await asyncio.wait(pending, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
    _show(stream, "")


def _table_row(record: ProbeRecord) -> list[str]:
    latency = f"{record.latency_seconds:.1f}s" if record.latency_seconds is not None else "-"
    auth = record.auth
    verdicts = " ".join(f"{m}={v}" for m, v in auth.items() if v is not None) if auth else ""
    result = record.send_result
    final = deciding_reply(result) if result is not None else None
    detail = (
        f"{record.send_error.stage} {record.send_error.kind}: {record.send_error.message}"
        if record.send_error
        else (f"{final.stage} {final.code} {final.text}".strip() if final else "")
    )
    if len(detail) > 80:
        detail = detail[:77] + "..."
    return [
        record.route,
        record.mailbox,
        str(record.outcome),
        record.folder or "-",
        latency,
        verdicts or "-",
        detail,
    ]


def _print_table(rows: list[list[str]], header: list[str] | None = None) -> None:
    header = header or ["ROUTE", "MAILBOX", "OUTCOME", "FOLDER", "LATENCY", "AUTH", "DETAIL"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


# --- run --------------------------------------------------------------------------------------


@dataclass
class _RunState:
    """What the status page says about the running agent beyond its ledger."""

    started_at: float
    config_ok: bool
    config_loaded_at: float | None
    sandbox: str | None = None


def _url(scheme: str, host: str, port: int, path: str) -> str:
    shown = f"[{host}]" if ":" in host else (host or "0.0.0.0")
    return f"{scheme}://{shown}:{port}{path}"


def readiness_of(agent: Agent) -> Status:
    """What /readyz says: probing, or why not (starting, draining, a ledger it cannot write).
    Called from the HTTP server's threads: it only reads attributes the loop replaces."""
    if agent.draining:
        return Status(False, "draining")
    if not agent.started:
        return Status(False, "starting")
    ledger = agent.ledger.health
    if not ledger.writable:
        # Ready again by itself with the next write that succeeds.
        return Status(False, f"the ledger cannot be written ({ledger.error}): {ledger.detail}")
    return Status(True, "probing")


def _webhooks(agent: Agent, loop: asyncio.AbstractEventLoop) -> WebhookReceiver:
    """The ESP webhooks of the routes the agent's current config gives an `esp` section; posts
    are verified on the HTTP server's workers and handed to the agent's loop."""

    def hand_over(item: WebhookRefused | EspPost) -> concurrent.futures.Future[None]:
        return asyncio.run_coroutine_threadsafe(agent.esp.take(item), loop)

    return WebhookReceiver(
        routes=lambda: {r.name: r.esp for r in agent.config.routes if r.esp is not None},
        hand_over=hand_over,
    )


async def _run(config: Config, path: Path, redactor: SecretRedactingFilter, *, shard: Shard) -> int:
    registry = new_registry()
    recorder = Recorder(registry)
    now = time.time()
    recorder.record(ConfigLoaded(True, now))
    state = _RunState(started_at=now, config_ok=True, config_loaded_at=now)
    agent = Agent(config, recorder=recorder, shard=shard)
    loop = asyncio.get_running_loop()
    last_tick = [loop.time()]

    def health() -> Status:
        stalled = loop.time() - last_tick[0]
        return Status(stalled < 30.0, f"event loop last ran {stalled:.1f} s ago")

    def readiness() -> Status:
        return readiness_of(agent)

    async def page(query: PageQuery) -> str:
        ready = readiness()
        health_now = Health(
            version=__version__,
            ready=ready.ok,
            ready_detail=ready.detail,
            started_at=state.started_at,
            config_ok=state.config_ok,
            config_loaded_at=state.config_loaded_at,
            mailboxes_up=dict(agent.mailboxes_up()),
            sandbox=state.sandbox,
            credentials=tuple(agent.credentials()),
            webhooks={
                route: (h.last_post_at, h.refused, h.last_refusal)
                for route, h in agent.esp.health().items()
            },
            reputation=tuple(agent.reputation_feeds()),
        )
        data = await collect_in_steps(
            agent.ledger, agent.config, health_now, now=time.time(), query=query
        )
        refresh_seconds = DEFAULT_REFRESH_SECONDS if query.refresh else 0
        return render(data, secrets=secret_values(agent.config), refresh_seconds=refresh_seconds)

    http = config.http
    server = HttpServer(
        registry,
        host=config.listen.host,
        port=config.listen.port,
        health=health,
        readiness=readiness,
        page=LoopPage(loop, page) if http.status_page else None,
        basic_auth=(
            BasicAuth(http.basic_auth.username, http.basic_auth.password.get_secret_value())
            if http.basic_auth is not None
            else None
        ),
        cert_file=http.tls.cert_file if http.tls is not None else None,
        key_file=http.tls.key_file if http.tls is not None else None,
        webhooks=_webhooks(agent, loop),
    )
    stop = asyncio.Event()
    reloads: asyncio.Queue[None] = asyncio.Queue()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloads.put_nowait, None)
    try:
        async with _sandbox(config) as sandbox:
            if sandbox is not None:
                state.sandbox = sandbox.addresses.describe()
            try:
                await agent.start()
                agent.schedule()
                log.info(
                    "deliverability-agent %s probing %d pair(s) every %g s; ledger in %s; %s loop",
                    __version__,
                    len(agent.config.pairs()),
                    config.probes.interval,
                    config.state_dir,
                    loop_kind_of(loop),
                )
                if shard.sharded:
                    log.info(
                        "%s: %d of %d seed mailbox(es)",
                        shard,
                        len(agent.config.mailboxes),
                        len(config.mailboxes),
                    )
                host, port = config.listen.host, server.port
                if http.status_page:
                    log.info("status page on %s", _url(server.scheme, host, port, "/"))
                log.info(
                    "metrics on %s, health on /healthz and /readyz%s",
                    _url(server.scheme, host, port, "/metrics"),
                    " (basic auth on / and /metrics)" if http.basic_auth is not None else "",
                )
                while not stop.is_set():
                    waiters = {
                        asyncio.create_task(stop.wait()),
                        asyncio.create_task(reloads.get()),
                    }
                    done, pending = await asyncio.wait(
                        waiters, timeout=5.0, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in pending:
                        task.cancel()
                    last_tick[0] = loop.time()
                    if stop.is_set():
                        break
                    if done:
                        await _reload(agent, path, recorder, redactor, state)
                log.info("SIGTERM: draining")
            finally:
                await agent.stop()
    finally:
        server.close()
    log.info("stopped")
    return EXIT_OK


async def _reload(
    agent: Agent,
    path: Path,
    recorder: Recorder,
    redactor: SecretRedactingFilter,
    state: _RunState,
) -> None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        recorder.record(ConfigLoaded(False, time.time()))
        state.config_ok = False
        log.error("SIGHUP: keeping the running configuration; the new one is invalid:\n%s", exc)
        return
    redactor.update([*redactor.secrets, *secret_values(config)])
    for key in ("sandbox", "http"):
        if getattr(config, key) != getattr(agent.config, key):
            log.warning("%s changes need a restart; the running %s is kept", key, key)
    await agent.reload(config)
    now = time.time()
    recorder.record(ConfigLoaded(True, now))
    state.config_ok, state.config_loaded_at = True, now
    log.info("SIGHUP: configuration reloaded from %s", path)
