"""The built-in status page served on `GET /`: server-rendered HTML read from the ledger.

A route x seed mailbox matrix of each pair's latest probe (outcome, folder, latency, age), the
most recent probes with their SMTP transcript and auth verdicts in `<details>`, and the agent's
health. No JavaScript and no build step; a meta refresh reloads it (`?refresh=0` pauses that, so
an opened transcript stays open).

Reading is split from rendering: `collect()` runs indexed ledger queries only (an index seek
for the latest probe of each configured pair, the newest N probes, the open probes), so the page
costs the same with ten probes stored or a million; `render()` is a pure function of the collected
data. Past `MATRIX_MAX_CELLS`, or with a filter, the pairs are a list, worst first, one page of
`PAGE_SIZE` at a time (`/?route=&mailbox=&outcome=&page=`, `PageQuery`): the ranking reads only
each pair's latest outcome and time, and full probes (transcripts, verdicts) are decoded for the
shown page only, so a request costs O(pairs) seeks and O(PAGE_SIZE) decoding and rendering.
Every value from the ledger or the config is HTML-escaped, and the agent's secrets are blanked
out of any text a server sent back. The ledger belongs to the event loop's thread, so `LoopPage`
builds the page there for the HTTP server's threads, with `collect_in_steps`: the ranking's
reads run `STEP_PAIRS` pairs at a time with the loop free between steps, so no step holds it
long at 10,000 pairs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import html
import math
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Self
from urllib.parse import parse_qs, urlencode

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
    "IN_FLIGHT",
    "MATRIX_MAX_CELLS",
    "NO_PROBE",
    "PAGE_SIZE",
    "RECENT_PROBES",
    "STEP_PAIRS",
    "WORST_PAIRS",
    "Health",
    "LoopPage",
    "PageData",
    "PageQuery",
    "StatusPageError",
    "collect",
    "collect_in_steps",
    "render",
]

DEFAULT_REFRESH_SECONDS: Final = 10
RECENT_PROBES: Final = 50
# Beyond this many cells (20 x 20) a matrix is unreadable and heavy for a browser: the page lists
# the worst pairs instead, at most WORST_PAIRS of them, so its size stays bounded at any scale.
MATRIX_MAX_CELLS: Final = 400
PAGE_SIZE: Final = 100
WORST_PAIRS: Final = PAGE_SIZE  # the first page of the list
# Pairs whose latest outcome one step of `collect_in_steps` reads: ~13 ms of SQLite per 1,000
# pairs (every pair probed, 100k probes stored), so a step holds the loop well under 10 ms.
STEP_PAIRS: Final = 500
# `outcome=` values besides the outcomes: a probe under way, no probe yet.
IN_FLIGHT: Final = "in_flight"
NO_PROBE: Final = "no_probe"
_OUTCOME_FILTERS: Final = (*(outcome.value for outcome in Outcome), IN_FLIGHT, NO_PROBE)
_QUERY_VALUE_MAX: Final = 200  # longer values are no configured name: refused, not echoed
_QUERY_FIELDS_MAX: Final = 20
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
    # Routes with an ESP webhook: (last verified post, posts refused, last refusal reason).
    webhooks: Mapping[str, tuple[float | None, int, str | None]] = field(default_factory=dict)
    # Each reputation feed's health (agent.reputation.feeds): no key or token in it.
    reputation: tuple[FeedState, ...] = ()


@dataclass(frozen=True, slots=True)
class PageQuery:
    """What one request asks of the page: filters, the page of the pair list, the meta refresh.

    `problems` are the parameters that were ignored, each with what was expected: bad input is
    said on the page, never an error page.
    """

    route: str | None = None
    mailbox: str | None = None
    outcome: str | None = None  # an Outcome value, IN_FLIGHT or NO_PROBE
    page: int = 1
    refresh: bool = True
    problems: tuple[str, ...] = ()

    @classmethod
    def parse(cls, query: str) -> Self:
        """From a URL's query string (`route=r1&outcome=missing&page=2`); the first value of a
        repeated parameter counts, unknown parameters are ignored with a problem."""
        problems: list[str] = []
        try:
            values = parse_qs(query, keep_blank_values=True, max_num_fields=_QUERY_FIELDS_MAX)
        except ValueError:  # more fields than that: the query is ignored as a whole
            values = {}
            problems.append(f"the query: expected at most {_QUERY_FIELDS_MAX} parameters")

        def text(name: str) -> str | None:
            value = values.get(name, [""])[0].strip()
            if len(value) > _QUERY_VALUE_MAX:
                problems.append(f"{name}: expected a configured name, got {len(value)} characters")
                return None
            return value or None

        route, mailbox, outcome = text("route"), text("mailbox"), text("outcome")
        if outcome is not None and outcome not in _OUTCOME_FILTERS:
            problems.append(f"outcome: expected one of {', '.join(_OUTCOME_FILTERS)}")
            outcome = None
        page = 1
        raw_page = values.get("page", ["1"])[0].strip() or "1"
        if raw_page.isascii() and raw_page.isdigit() and 1 <= len(raw_page) <= 9:
            page = max(1, int(raw_page))
        else:
            problems.append("page: expected a whole number from 1")
        for name in sorted(set(values) - {"route", "mailbox", "outcome", "page", "refresh"}):
            problems.append(f"{name[:40]}: unknown parameter (route, mailbox, outcome, page)")
        return cls(
            route=route,
            mailbox=mailbox,
            outcome=outcome,
            page=page,
            refresh=values.get("refresh", ["1"])[0] not in ("0", "off", "no"),
            problems=tuple(problems),
        )

    @property
    def filtered(self) -> bool:
        return self.route is not None or self.mailbox is not None or self.outcome is not None

    def link(self, **changes: str | int | None) -> str:
        """This query's URL with `changes` (None drops a parameter); page 1 goes unsaid."""
        params: dict[str, str | int | None] = {
            "route": self.route,
            "mailbox": self.mailbox,
            "outcome": self.outcome,
            "page": self.page,
            "refresh": None if self.refresh else 0,
        }
        params.update(changes)
        if params["page"] == 1:
            params["page"] = None
        kept = {name: value for name, value in params.items() if value is not None}
        return "/?" + urlencode(kept) if kept else "/"


@dataclass(frozen=True, slots=True)
class PairList:
    """One page of the configured pairs that match the query, worst first."""

    shown: tuple[tuple[str, str], ...]
    matched: int  # pairs that match the filters, on every page
    page: int  # the page shown (the last one when more was asked)
    pages: int


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
    query: PageQuery = PageQuery()
    listing: PairList | None = None  # None: the matrix (or, built by hand, the worst pairs)
    # Latest outcomes of every configured pair (None: count them from `latest`).
    counts: Mapping[str, int] | None = None


def _status_key(outcome: Outcome | None, created_at: float) -> tuple[int, float]:
    """How bad a pair's latest probe is (lower: worse), then the oldest news first."""
    if outcome is None:
        return _IN_FLIGHT_RANK, created_at
    return _SEVERITY.get(outcome, _INBOX_RANK), created_at


def _matches(query: PageQuery, status: tuple[Outcome | None, float] | None) -> bool:
    if query.outcome is None:
        return True
    if status is None:
        return query.outcome == NO_PROBE
    outcome = status[0]
    return (IN_FLIGHT if outcome is None else outcome.value) == query.outcome


def collect(
    ledger: Ledger,
    config: Config,
    health: Health,
    *,
    now: float,
    recent: int = RECENT_PROBES,
    query: PageQuery | None = None,
) -> PageData:
    """Read what the page shows, in one go; call it from the thread that owns `ledger`."""
    steps = _collect_steps(ledger, config, health, now=now, recent=recent, query=query)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            data: PageData = done.value
            return data


async def collect_in_steps(
    ledger: Ledger,
    config: Config,
    health: Health,
    *,
    now: float,
    recent: int = RECENT_PROBES,
    query: PageQuery | None = None,
) -> PageData:
    """`collect` on the event loop: the ranking's ledger reads run STEP_PAIRS pairs at a time
    with the loop free between them, so 10,000 pairs never hold it much more than 10 ms at once.
    Each pair's status is true at the moment its step read it, as any page is of its moment."""
    steps = _collect_steps(ledger, config, health, now=now, recent=recent, query=query)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            data: PageData = done.value
            return data
        await asyncio.sleep(0)


def _collect_steps(
    ledger: Ledger,
    config: Config,
    health: Health,
    *,
    now: float,
    recent: int,
    query: PageQuery | None,
) -> Generator[None, None, PageData]:
    """What `collect` reads, yielding between steps of at most STEP_PAIRS pairs."""
    query = PageQuery() if query is None else query
    routes = tuple(route.name for route in config.routes)
    mailboxes = tuple(mailbox.name for mailbox in config.mailboxes)
    pairs = [(route.name, mailbox.name) for route, mailbox in config.pairs()]
    problems = list(query.problems)
    if query.route is not None and query.route not in routes:
        problems.append("route: no such route in the configuration")
    if query.mailbox is not None and query.mailbox not in mailboxes:
        problems.append("mailbox: no such seed mailbox in the configuration")
    listing = None
    counts: dict[str, int] | None = None
    if query.filtered or query.page > 1 or len(routes) * len(mailboxes) > MATRIX_MAX_CELLS:
        statuses: dict[tuple[str, str], tuple[Outcome | None, float]] = {}
        for start in range(0, len(pairs), STEP_PAIRS):
            statuses.update(ledger.latest_outcomes(pairs[start : start + STEP_PAIRS]))
            yield
        counts = {}
        for outcome, _ in statuses.values():
            if outcome is not None:
                counts[outcome.value] = counts.get(outcome.value, 0) + 1
        # Filtered and ranked STEP_PAIRS pairs at a time too: over 10,000 pairs in one go this
        # was the longest step (30-40 ms), and the watchers' own work can land beside it.
        no_probe = (_IN_FLIGHT_RANK, 0.0)
        ranked: list[tuple[tuple[int, float], tuple[str, str]]] = []
        for start in range(0, len(pairs), STEP_PAIRS):
            for pair in pairs[start : start + STEP_PAIRS]:
                status = statuses.get(pair)
                if (
                    (query.route is None or pair[0] == query.route)
                    and (query.mailbox is None or pair[1] == query.mailbox)
                    and _matches(query, status)
                ):
                    ranked.append((no_probe if status is None else _status_key(*status), pair))
            yield
        ranked.sort()  # tuples of tuples: compared in C, ~5 ms for 10,000
        matching = [pair for _, pair in ranked]
        yield
        pages = max(1, math.ceil(len(matching) / PAGE_SIZE))
        page = min(query.page, pages)
        if page < query.page:
            problems.append(f"page: there are {pages} page(s); showing the last")
        shown = tuple(matching[(page - 1) * PAGE_SIZE : page * PAGE_SIZE])
        listing = PairList(shown=shown, matched=len(matching), page=page, pages=pages)
        latest = ledger.latest_by_pair(shown)
    else:
        latest = ledger.latest_by_pair(pairs)
    yield
    newest = tuple(ledger.recent(recent))
    yield
    in_flight = sum(ledger.in_flight_counts().values())
    return PageData(
        routes=routes,
        mailboxes=mailboxes,
        pairs=frozenset(pairs),
        interval_seconds=config.probes.interval,
        latest=latest,
        recent=newest,
        in_flight=in_flight,
        health=health,
        now=now,
        query=PageQuery(
            route=query.route,
            mailbox=query.mailbox,
            outcome=query.outcome,
            page=query.page,
            refresh=query.refresh,
            problems=tuple(problems),
        ),
        listing=listing,
        counts=counts,
    )


class LoopPage:
    """Builds the page on the event loop's thread for a caller on another thread (the HTTP
    server's), because the ledger's SQLite connection may only be used where it was opened.
    `build` returns the page, or a coroutine that builds it in steps (`collect_in_steps`)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        build: Callable[[PageQuery], str | Awaitable[str]],
        *,
        timeout: float = 10.0,
    ) -> None:
        self._loop = loop
        self._build = build
        self._timeout = timeout

    def __call__(self, *, refresh: bool = True, query: str = "") -> bytes:
        """The page as UTF-8 for the URL's `query` string (`PageQuery.parse`); `refresh` False
        leaves the meta refresh out. StatusPageError."""
        asked = PageQuery.parse(query)
        if not refresh:
            asked = PageQuery(
                route=asked.route,
                mailbox=asked.mailbox,
                outcome=asked.outcome,
                page=asked.page,
                refresh=False,
                problems=asked.problems,
            )
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        tasks: list[asyncio.Future[str]] = []

        def finish(task: asyncio.Future[str]) -> None:
            if task.cancelled():
                future.set_exception(StatusPageError("the agent is stopping"))
            elif (error := task.exception()) is not None:
                future.set_exception(error)
            else:
                future.set_result(task.result())

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return  # the caller gave up waiting
            try:
                built = self._build(asked)
                if isinstance(built, str):
                    future.set_result(built)
                    return
                # A build in steps (collect_in_steps): the loop runs other work between them.
                task = asyncio.ensure_future(built)
                tasks.append(task)
                task.add_done_callback(finish)
            except Exception as exc:
                future.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(run)
        except RuntimeError as exc:  # the loop is closed: the agent is stopping
            raise StatusPageError("the agent is stopping") from exc
        try:
            page = future.result(timeout=self._timeout)
        except TimeoutError as exc:
            if not future.cancel():  # building in steps: stop them, nobody waits for the page
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    self._loop.call_soon_threadsafe(lambda: [task.cancel() for task in tasks])
            raise StatusPageError(f"the agent did not answer within {self._timeout:g} s") from exc
        except StatusPageError:
            raise
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


def _span(seconds: float) -> str:
    """A duration as the page writes it: 42 s, 7 min, 3.5 h, 2.0 d."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _ago(seconds: float) -> str:
    return f"{_span(seconds)} ago"


def _until(now: float, at: float | None) -> str:
    """`in <span>` for a moment still ahead, else a dash."""
    return f"in {_span(at - now)}" if at is not None and at > now else "—"


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
    return _status_key(record.outcome, record.created_at)


def _rows(data: PageData, shown: Sequence[tuple[str, str]]) -> str:
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
    return "".join(rows)


def _worst_pairs(data: PageData) -> str:
    """The configured pairs whose latest probe is worst, instead of a matrix too big to read
    (a PageData built without a listing: every pair's latest probe is in `latest`)."""
    ranked = sorted(data.pairs, key=lambda pair: (_rank(data, pair), pair))
    shown = ranked[:WORST_PAIRS]
    cells = len(data.routes) * len(data.mailboxes)
    return (
        f'<p class="muted" id="worst-pairs-note">{len(data.pairs)} pairs: more than the '
        f"{MATRIX_MAX_CELLS} cells a matrix shows, so the {len(shown)} worst are listed, worst "
        f"first (no verdict, refused, bounced, missing, deferred, spam, other, in flight, inbox); "
        f"/metrics has every pair ({cells} cells).</p>"
        '<table id="worst-pairs"><thead><tr><th>route</th><th>seed mailbox</th>'
        f"<th>latest probe</th></tr></thead><tbody>{_rows(data, shown)}</tbody></table>"
    )


def _options(name: str, values: Sequence[str], chosen: str | None, every: str) -> str:
    options = [f'<option value=""{"" if chosen else " selected"}>{_e(every)}</option>']
    options += [
        f'<option value="{_e(v)}"{" selected" if v == chosen else ""}>{_e(v)}</option>'
        for v in values
    ]
    return f'<label>{_e(name)} <select name="{_e(name)}">{"".join(options)}</select></label> '


def _filter_form(data: PageData) -> str:
    """A GET form (no JavaScript): the page's CSP allows forms to its own URL. Route and mailbox
    are drop-downs up to a few hundred names, a text field beyond."""
    query = data.query

    def field(name: str, values: Sequence[str], chosen: str | None) -> str:
        if len(values) <= 300:
            return _options(name, values, chosen, f"every {name}")
        value = _e(chosen or "")
        return f'<label>{_e(name)} <input name="{_e(name)}" value="{value}" size="16"></label> '

    refresh = "" if query.refresh else '<input type="hidden" name="refresh" value="0">'
    clear = query.link(route=None, mailbox=None, outcome=None, page=1)
    return (
        '<form id="pair-filter" method="get" action="/">'
        + field("route", data.routes, query.route)
        + field("mailbox", data.mailboxes, query.mailbox)
        + _options("outcome", _OUTCOME_FILTERS, query.outcome, "every outcome")
        + f'{refresh}<button type="submit">show</button> <a href="{_e(clear)}">clear</a></form>'
    )


def _pair_list(data: PageData, listing: PairList) -> str:
    query = data.query
    first = (listing.page - 1) * PAGE_SIZE + 1 if listing.shown else 0
    last = first + len(listing.shown) - 1 if listing.shown else 0
    links = []
    if listing.page > 1:
        links.append(f'<a rel="prev" href="{_e(query.link(page=listing.page - 1))}">previous</a>')
    if listing.page < listing.pages:
        links.append(f'<a rel="next" href="{_e(query.link(page=listing.page + 1))}">next</a>')
    what = "matching pairs" if query.filtered else "pairs"
    note = (
        f'<p class="muted" id="pairs-note">{first}-{last} of {listing.matched} {what}, worst '
        "first (no verdict, refused, bounced, missing, deferred, spam, other, in flight or no "
        f"probe yet, inbox); page {listing.page} of {listing.pages}"
        + (f" · {' · '.join(links)}" if links else "")
        + "</p>"
    )
    return (
        _filter_form(data)
        + note
        + '<table id="pairs"><thead><tr><th>route</th><th>seed mailbox</th>'
        f"<th>latest probe</th></tr></thead><tbody>{_rows(data, listing.shown)}</tbody></table>"
    )


def _problems(data: PageData) -> str:
    if not data.query.problems:
        return ""
    items = "".join(f"<li>{_e(problem)}</li>" for problem in data.query.problems)
    return f'<ul class="down" id="query-problems">Ignored: {items}</ul>'


def _pairs_view(data: PageData) -> str:
    if data.listing is not None:
        return _problems(data) + _pair_list(data, data.listing)
    if len(data.routes) * len(data.mailboxes) > MATRIX_MAX_CELLS:
        return _worst_pairs(data)
    return _problems(data) + _filter_form(data) + _matrix(data)


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
    uptime = _span(data.now - health.started_at)
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
    for route, (last_post_at, refused, last_refusal) in sorted(health.webhooks.items()):
        state = (
            '<span class="muted">no verified post since start</span>'
            if last_post_at is None
            else f"last verified post {_e(_ago(data.now - last_post_at))}"
        )
        if refused:
            state += f'; <span class="down">{refused} refused</span> (last: {_e(last_refusal)})'
        items.append((f"webhook {route}", state))
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
                status += f" (next try {_e(_until(data.now, state.retry_at))})"
        elif state.last_success_at is not None:
            status = '<span class="up">ok</span>'
        else:
            status = '<span class="muted">not yet asked</span>'
        last = _ago(data.now - state.last_success_at) if state.last_success_at else "never"
        expires = _until(data.now, state.expires_at)
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
        upcoming = _until(data.now, state.next_fetch)
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
    """The whole page as HTML. `secrets` are blanked out of server-sent text (transcripts); no
    meta refresh when `refresh_seconds` is 0 or the query paused it."""
    redact = Redactor(secrets)
    if not data.query.refresh:
        refresh_seconds = 0
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
    if data.counts is not None:
        counts = dict(data.counts)
    else:
        for record in data.latest.values():
            if (record.route, record.mailbox) in data.pairs and record.outcome is not None:
                counts[record.outcome.value] = counts.get(record.outcome.value, 0) + 1
    if not counts:
        return '<span class="muted">No finished probe yet.</span>'
    order = [outcome.value for outcome in Outcome]
    parts = [f"{counts[o]} {_e(o)}" for o in order if o in counts]
    return "Latest outcomes: " + ", ".join(parts) + "."
