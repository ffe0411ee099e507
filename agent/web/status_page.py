"""The built-in status page served on `GET /`: server-rendered HTML read from the ledger.

A route x seed mailbox matrix of each pair's latest probe (outcome, folder, latency, age), the
most recent probes with their SMTP transcript and auth verdicts in `<details>`, and the agent's
health. No JavaScript and no build step; a meta refresh reloads it (`?refresh=0` pauses that, so
an opened transcript stays open).

Reading is split from rendering: `collect()` runs indexed ledger queries only (an index seek
for the latest probe of each configured pair, the newest N probes, the open probes), so the page
costs the same with ten probes stored or a million; `render()` is a pure function of the collected
data. Every value from the ledger or the config is HTML-escaped, and the agent's secrets are
blanked out of any text a server sent back. The ledger belongs to the event loop's thread, so
`LoopPage` runs `collect()` there for the HTTP server's threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from agent.config import Config
from agent.errors import AgentError, ErrorCategory
from agent.model import Outcome
from agent.oauth.lifecycle import CredentialState
from agent.reputation.feeds import FeedState
from agent.secrets import Redactor
from agent.smtp.replies import deciding_reply
from agent.store.ledger import Ledger, ProbeRecord, ProbeState

__all__ = [
    "DEFAULT_REFRESH_SECONDS",
    "MATRIX_MAX_CELLS",
    "RECENT_PROBES",
    "WORST_PAIRS",
    "Health",
    "LoopPage",
    "PageData",
    "StatusPageError",
    "collect",
    "render",
]

DEFAULT_REFRESH_SECONDS: Final = 10
RECENT_PROBES: Final = 50
# Beyond this many cells (20 x 20) a matrix is unreadable and heavy for a browser: the page lists
# the worst pairs instead, at most WORST_PAIRS of them, so its size stays bounded at any scale.
MATRIX_MAX_CELLS: Final = 400
WORST_PAIRS: Final = 100
# Worst first: no verdict from the server, refused, bounced, lost, delayed, misfiled; then what
# is still in flight or not probed yet; the inbox last.
_SEVERITY: Final = {
    outcome: rank
    for rank, outcome in enumerate(
        (
            Outcome.ERROR,
            Outcome.REJECTED,
            Outcome.BOUNCED,
            Outcome.MISSING,
            Outcome.DEFERRED,
            Outcome.SPAM,
            Outcome.OTHER,
        )
    )
}
_IN_FLIGHT_RANK: Final = len(_SEVERITY)
_INBOX_RANK: Final = _IN_FLIGHT_RANK + 1


class StatusPageError(AgentError):
    """The page could not be built (ledger unreadable, agent stopping, loop too busy)."""

    category = ErrorCategory.SERVER


@dataclass(frozen=True, slots=True)
class Health:
    """What the page says about the agent itself."""

    version: str
    ready: bool
    ready_detail: str
    started_at: float
    config_ok: bool  # the last configuration load or reload succeeded
    config_loaded_at: float | None
    mailboxes_up: Mapping[str, bool | None] = field(default_factory=dict)  # None: unknown
    sandbox: str | None = None  # where the sandbox listens, when there is one
    # Each OAuth credential's token state (agent.oauth.lifecycle): no token or secret in it.
    credentials: tuple[CredentialState, ...] = ()
    # Each reputation feed's health (agent.reputation.feeds): no key or token in it.
    reputation: tuple[FeedState, ...] = ()


@dataclass(frozen=True, slots=True)
class PageData:
    """Everything one rendering of the page shows."""

    routes: tuple[str, ...]
    mailboxes: tuple[str, ...]
    pairs: frozenset[tuple[str, str]]  # the configured (route, mailbox) pairs
    interval_seconds: float
    latest: Mapping[tuple[str, str], ProbeRecord]
    recent: tuple[ProbeRecord, ...]
    in_flight: int
    health: Health
    now: float


def collect(
    ledger: Ledger, config: Config, health: Health, *, now: float, recent: int = RECENT_PROBES
) -> PageData:
    """Read what the page shows; call it from the thread that owns `ledger`."""
    pairs = [(route.name, mailbox.name) for route, mailbox in config.pairs()]
    return PageData(
        routes=tuple(route.name for route in config.routes),
        mailboxes=tuple(mailbox.name for mailbox in config.mailboxes),
        pairs=frozenset(pairs),
        interval_seconds=config.probes.interval,
        latest=ledger.latest_by_pair(pairs),
        recent=tuple(ledger.recent(recent)),
        in_flight=sum(ledger.in_flight_counts().values()),
        health=health,
        now=now,
    )


class LoopPage:
    """Builds the page on the event loop's thread for a caller on another thread (the HTTP
    server's), because the ledger's SQLite connection may only be used where it was opened."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        build: Callable[[bool], str],
        *,
        timeout: float = 10.0,
    ) -> None:
        self._loop = loop
        self._build = build
        self._timeout = timeout

    def __call__(self, *, refresh: bool = True) -> bytes:
        """The page as UTF-8; `refresh` False leaves the meta refresh out. StatusPageError."""

        future: concurrent.futures.Future[str] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return  # the caller gave up waiting
            try:
                future.set_result(self._build(refresh))
            except Exception as exc:
                future.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(run)
        except RuntimeError as exc:  # the loop is closed: the agent is stopping
            raise StatusPageError("the agent is stopping") from exc
        try:
            page = future.result(timeout=self._timeout)
        except TimeoutError as exc:
            future.cancel()
            raise StatusPageError(f"the agent did not answer within {self._timeout:g} s") from exc
        except Exception as exc:  # the ledger's own errors, say; the page shows none of it
            raise StatusPageError(f"cannot read the ledger: {type(exc).__name__}") from exc
        # Server text is made valid where it enters (agent.server_text); should a lone surrogate
        # still get here, it shows as an escape rather than failing every request from now on.
        return page.encode("utf-8", "backslashreplace")


# --- rendering ---------------------------------------------------------------------------------

_STYLE: Final = """
:root { color-scheme: light; --ok: #1a7f37; --warn: #b35900; --bad: #c62828; --muted: #6e7781; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem;
  color: #1f2328; background: #fff; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem; } h2 { font-size: 1.1rem; margin: 1.6rem 0 .5rem; }
table { border-collapse: collapse; } th, td { border: 1px solid #d0d7de; padding: .35rem .6rem;
  text-align: left; vertical-align: top; } th { background: #f6f8fa; }
.matrix td { min-width: 9rem; } .muted { color: var(--muted); }
.badge { display: inline-block; padding: .05rem .45rem; border-radius: 1rem; font-weight: 600;
  color: #fff; background: var(--muted); }
.o-inbox { background: var(--ok); } .o-spam, .o-other, .o-deferred { background: var(--warn); }
.o-rejected, .o-bounced, .o-missing, .o-error { background: var(--bad); }
.o-pending { background: #0969da; }
.up { color: var(--ok); font-weight: 600; } .down { color: var(--bad); font-weight: 600; }
details summary { cursor: pointer; color: #0969da; } pre { margin: .4rem 0; white-space: pre-wrap;
  overflow-wrap: anywhere; background: #f6f8fa; padding: .4rem; max-width: 60rem; }
#recent td:nth-child(-n+3) { white-space: nowrap; } #recent td:last-child { min-width: 18rem; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; margin: 0; }
dt { color: var(--muted); } dd { margin: 0; } footer { margin-top: 2rem; color: var(--muted); }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} d ago"


def _latency(record: ProbeRecord) -> str:
    return "-" if record.latency_seconds is None else f"{record.latency_seconds:.1f} s"


def _status(record: ProbeRecord) -> tuple[str, str]:
    """The badge text and CSS class of a probe: its outcome, or where it is while in flight."""
    if record.outcome is not None:
        return record.outcome.value, f"o-{record.outcome.value}"
    if record.state is ProbeState.SENDING:
        return "sending", "o-pending"
    if record.state is ProbeState.INTERRUPTED:
        return "interrupted, awaiting", "o-pending"
    return "awaiting", "o-pending"


def _why(record: ProbeRecord) -> str:
    """What ended a probe that was not accepted: the deciding reply, or the error's kind."""
    error = record.send_error
    if error is not None:
        return f"{error.kind.value} error at {error.stage.value}"
    if record.interrupted_at is not None:
        return "interrupted by a restart mid-transaction"
    result = record.send_result
    reply = deciding_reply(result) if result is not None and not result.accepted else None
    if reply is None:
        return ""
    return f"{reply.code} {reply.enhanced_code or ''} at {reply.stage.value}".replace("  ", " ")


def _badge(record: ProbeRecord) -> str:
    text, css = _status(record)
    category = record.arrival.category if record.arrival is not None else None
    if record.outcome is Outcome.INBOX and category is not None:
        text = f"{text} ({category.value})"  # the Gmail tab: "inbox (promotions)"
    return f'<span class="badge {css}">{_e(text)}</span>'


def _auth(record: ProbeRecord) -> str:
    if record.auth is None:
        return '<span class="muted">-</span>'
    parts = [f"{method.value}={result.value}" for method, result in record.auth.items() if result]
    return _e(" ".join(parts)) if parts else '<span class="muted">none</span>'


def _number(value: float) -> str:
    return f"{value:g}"


def _spam(record: ProbeRecord) -> str:
    """`rspamd spam 25.4/50`: each receiving filter's category and score against its threshold."""
    if not record.spam:
        return '<span class="muted">-</span>'
    parts = []
    for verdict in record.spam:
        text = f"{verdict.source.value} {verdict.category.value}"
        if verdict.score is not None:
            text += f" {_number(verdict.score)}"
            if verdict.threshold is not None:
                text += f"/{_number(verdict.threshold)}"
        if verdict.bulk_level is not None:
            text += f" BCL {verdict.bulk_level}"
        parts.append(text)
    return _e("; ".join(parts))


def _cell(data: PageData, route: str, mailbox: str) -> str:
    attributes = f'data-route="{_e(route)}" data-mailbox="{_e(mailbox)}"'
    if (route, mailbox) not in data.pairs:
        return f'<td {attributes} class="muted">not probed</td>'
    record = data.latest.get((route, mailbox))
    if record is None:
        return f'<td {attributes} data-outcome="" class="muted">no probe yet</td>'
    text, _ = _status(record)
    return f'<td {attributes} data-outcome="{_e(text)}">' + _cell_lines(data, record) + "</td>"


def _cell_lines(data: PageData, record: ProbeRecord) -> str:
    lines = [_badge(record)]
    if record.folder:
        lines.append(f"in {_e(record.folder)}")
    if record.latency_seconds is not None:
        lines.append(_latency(record))
    why = _why(record)
    if why:
        lines.append(_e(why))
    if record.late_seen_at is not None:
        lines.append(f"seen late in {_e(record.late_folder or '?')}")
    lines.append(f'<span class="muted">{_e(_ago(data.now - record.created_at))}</span>')
    return "<br>".join(lines)


def _rank(data: PageData, pair: tuple[str, str]) -> tuple[int, float]:
    """How bad a pair's latest probe is (lower: worse), then the oldest news first."""
    record = data.latest.get(pair)
    if record is None:
        return _IN_FLIGHT_RANK, 0.0
    if record.outcome is None:
        return _IN_FLIGHT_RANK, record.created_at
    return _SEVERITY.get(record.outcome, _INBOX_RANK), record.created_at


def _worst_pairs(data: PageData) -> str:
    """The configured pairs whose latest probe is worst, instead of a matrix too big to read."""
    ranked = sorted(data.pairs, key=lambda pair: (_rank(data, pair), pair))
    shown = ranked[:WORST_PAIRS]
    rows = []
    for route, mailbox in shown:
        record = data.latest.get((route, mailbox))
        if record is None:
            outcome, detail = "", '<span class="muted">no probe yet</span>'
        else:
            outcome, detail = _status(record)[0], _cell_lines(data, record)
        rows.append(
            f'<tr data-route="{_e(route)}" data-mailbox="{_e(mailbox)}" '
            f'data-outcome="{_e(outcome)}"><td>{_e(route)}</td><td>{_e(mailbox)}</td>'
            f"<td>{detail}</td></tr>"
        )
    cells = len(data.routes) * len(data.mailboxes)
    return (
        f'<p class="muted" id="worst-pairs-note">{len(data.pairs)} pairs: more than the '
        f"{MATRIX_MAX_CELLS} cells a matrix shows, so the {len(shown)} worst are listed, worst "
        f"first (no verdict, refused, bounced, missing, deferred, spam, other, in flight, inbox); "
        f"/metrics has every pair ({cells} cells).</p>"
        '<table id="worst-pairs"><thead><tr><th>route</th><th>seed mailbox</th>'
        f"<th>latest probe</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _pairs_view(data: PageData) -> str:
    if len(data.routes) * len(data.mailboxes) > MATRIX_MAX_CELLS:
        return _worst_pairs(data)
    return _matrix(data)


def _matrix(data: PageData) -> str:
    head = "".join(f"<th scope=col>{_e(mailbox)}</th>" for mailbox in data.mailboxes)
    rows = []
    for route in data.routes:
        cells = "".join(_cell(data, route, mailbox) for mailbox in data.mailboxes)
        rows.append(f"<tr><th scope=row>{_e(route)}</th>{cells}</tr>")
    return (
        '<table class="matrix" id="matrix"><thead><tr><th>route \\ seed mailbox</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _transcript(record: ProbeRecord, redact: Redactor) -> str:
    lines = [
        f"{reply.stage.value:<12} {reply.code} {redact(reply.text)}" for reply in record.transcript
    ]
    error = record.send_error
    if error is not None:
        lines.append(f"error at {error.stage.value} ({error.kind.value}): {redact(error.message)}")
    if record.tls_version:
        lines.append(f"TLS: {record.tls_version}")
    return _e("\n".join(lines) or "no SMTP reply recorded")


def _recent(data: PageData, redact: Redactor) -> str:
    if not data.recent:
        return '<p class="muted" id="recent">No probes yet.</p>'
    rows = []
    for record in data.recent:
        auth_lines = (
            "".join(
                f"<dt>{_e(method.value)}</dt><dd>{_e(result.value if result else '-')}</dd>"
                for method, result in record.auth.items()
            )
            if record.auth is not None
            else "<dt>auth</dt><dd>not delivered, or no trusted Authentication-Results</dd>"
        )
        rows.append(
            f'<tr data-probe="{_e(record.probe_id)}">'
            f"<td>{_e(_clock(record.created_at))}</td><td>{_e(record.route)}</td>"
            f"<td>{_e(record.mailbox)}</td><td>{_badge(record)}</td>"
            f"<td>{_e(record.folder or '-')}</td><td>{_latency(record)}</td>"
            f"<td>{_auth(record)}</td><td>{_spam(record)}</td>"
            f"<td><details><summary>SMTP transcript</summary>"
            f"<pre>{_transcript(record, redact)}</pre>"
            f"<dl>{auth_lines}<dt>probe</dt><dd>{_e(record.probe_id)}</dd></dl>"
            "</details></td></tr>"
        )
    return (
        '<table id="recent"><thead><tr><th>sent</th><th>route</th><th>seed mailbox</th>'
        "<th>outcome</th><th>folder</th><th>latency</th><th>auth</th><th>spam</th>"
        "<th>details</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _health(data: PageData) -> str:
    health = data.health
    ready = (
        f'<span class="up">ready</span> ({_e(health.ready_detail)})'
        if health.ready
        else f'<span class="down">not ready</span> ({_e(health.ready_detail)})'
    )
    config = (
        '<span class="up">loaded</span>'
        if health.config_ok
        else '<span class="down">last reload failed</span>'
    )
    if health.config_loaded_at is not None:
        config += f" {_e(_ago(data.now - health.config_loaded_at))}"
    uptime = _ago(data.now - health.started_at).removesuffix(" ago")
    probing = f"{len(data.pairs)} pair(s) every {data.interval_seconds:g} s"
    items = [
        ("agent", f"deliverability-agent {_e(health.version)}, up {_e(uptime)}"),
        ("state", ready),
        ("probing", f"{_e(probing)}; {data.in_flight} in flight"),
        ("configuration", config),
    ]
    for mailbox in data.mailboxes:
        up = health.mailboxes_up.get(mailbox)
        state = (
            '<span class="muted">unknown</span>'
            if up is None
            else ('<span class="up">connected</span>' if up else '<span class="down">down</span>')
        )
        items.append((f"IMAP {mailbox}", state))
    if health.sandbox is not None:
        items.append(("sandbox", _e(health.sandbox)))
    return '<dl id="health">' + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _credentials(data: PageData, redact: Redactor) -> str:
    """The OAuth credentials' token states; messages are the agent's own (never a token) and
    masked once more with the configuration's secrets, as an endpoint may echo one."""
    if not data.health.credentials:
        return ""
    rows = []
    for state in data.health.credentials:
        if state.error_kind is not None:
            status = f'<span class="down">{_e(state.error_kind)}</span>'
            if state.retry_at is not None and state.retry_at > data.now:
                status += (
                    f" (next try in {_e(_ago(state.retry_at - data.now).removesuffix(' ago'))})"
                )
        elif state.last_success_at is not None:
            status = '<span class="up">ok</span>'
        else:
            status = '<span class="muted">not yet asked</span>'
        last = _ago(data.now - state.last_success_at) if state.last_success_at else "never"
        expires = (
            f"in {_ago(state.expires_at - data.now).removesuffix(' ago')}"
            if state.expires_at is not None and state.expires_at > data.now
            else "—"
        )
        rows.append(
            f"<tr><td>{_e(state.credential)}</td><td>{_e(state.method)}</td><td>{status}</td>"
            f"<td>{_e(last)}</td><td>{_e(expires)}</td>"
            f"<td>{_e(redact(state.error or ''))}</td></tr>"
        )
    return (
        '<h2>OAuth credentials</h2><table id="credentials"><thead><tr><th>credential</th>'
        "<th>how</th><th>state</th><th>last token</th><th>token expires</th><th>last error</th>"
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _reputation(data: PageData, redact: Redactor) -> str:
    """The reputation feeds (Postmaster Tools, SNDS): last read, last error kind and message
    (the agent's own, naming URLs without their query: never the SNDS key), next fetch."""
    if not data.health.reputation:
        return ""
    rows = []
    for state in data.health.reputation:
        if state.failures:
            status = f'<span class="down">{_e(state.last_error or "")}</span>'
        elif state.last_success is not None:
            status = '<span class="up">ok</span>'
        else:
            status = '<span class="muted">not yet read</span>'
        last = _ago(data.now - state.last_success) if state.last_success else "never"
        upcoming = (
            f"in {_ago(state.next_fetch - data.now).removesuffix(' ago')}"
            if state.next_fetch is not None and state.next_fetch > data.now
            else "—"
        )
        rows.append(
            f"<tr><td>{_e(state.feed)}</td><td>{status}</td><td>{_e(last)}</td>"
            f"<td>{_e(upcoming)}</td><td>{_e(redact(state.last_error_message))}</td></tr>"
        )
    return (
        '<h2>Reputation feeds</h2><table id="reputation"><thead><tr><th>feed</th>'
        "<th>state</th><th>last read</th><th>next fetch</th><th>last error</th>"
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def render(
    data: PageData,
    *,
    secrets: Sequence[str] = (),
    refresh_seconds: int = DEFAULT_REFRESH_SECONDS,
) -> str:
    """The whole page as HTML. `secrets` are blanked out of server-sent text (transcripts)."""
    redact = Redactor(secrets)
    refresh = (
        f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">'
        if refresh_seconds > 0
        else ""
    )
    summary = _summary(data)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{refresh}<title>Deliverability status</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>Deliverability status</h1><p>{summary}</p></header>"
        "<h2>Latest probe per route and seed mailbox</h2>"
        f"{_pairs_view(data)}"
        f"<h2>Recent probes</h2>{_recent(data, redact)}"
        f"<h2>Agent</h2>{_health(data)}"
        f"{_credentials(data, redact)}"
        f"{_reputation(data, redact)}"
        f"<footer>Rendered {_e(_clock(data.now))}; refreshes every {int(refresh_seconds)} s "
        '(<a href="/?refresh=0">pause</a>, <a href="/">resume</a>) · '
        '<a href="/metrics">/metrics</a> · <a href="/healthz">/healthz</a> · '
        '<a href="/readyz">/readyz</a></footer>'
        "</body></html>\n"
    )


def _summary(data: PageData) -> str:
    counts: dict[str, int] = {}
    for record in data.latest.values():
        if (record.route, record.mailbox) in data.pairs and record.outcome is not None:
            counts[record.outcome.value] = counts.get(record.outcome.value, 0) + 1
    if not counts:
        return '<span class="muted">No finished probe yet.</span>'
    order = [outcome.value for outcome in Outcome]
    parts = [f"{counts[o]} {_e(o)}" for o in order if o in counts]
    return "Latest outcomes: " + ", ".join(parts) + "."
