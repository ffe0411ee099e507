"""The recorder: turns the agent's frozen results into Prometheus series of the catalog.

Only this module, `agent.monitoring.catalog` and `agent.monitoring.exposition` import
prometheus_client. Bounded labels only: stage, outcome, class, kind, method and result come from
the `agent.model` enums. Nothing is ever labelled by probe id, message id, recipient or subject.

The series budget (docs/monitoring.md, "Series budget"): `Recorder.declare` pre-creates at zero
what alerts take rate() ratios or staleness of, so those series never blink in and out: per pair
only the eight outcomes, the in-flight gauge, the last-outcome time and the latency count and
sum (12 series); the rest is per route or per mailbox. Series that only some pairs ever see
(auth verdicts, spam verdicts, late probes) and SMTP reply codes appear when first seen; the
first increment of such a series is not in a rate() (Prometheus has no sample before it).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

from agent import __version__
from agent.dns.records import DnsCheck, DnsReport
from agent.model import (
    AUTH_ABSENT,
    AuthVerdicts,
    BounceCounted,
    BounceReason,
    BounceSource,
    BounceType,
    ConfigLoaded,
    DmarcCounted,
    ErrorKind,
    EspComplaint,
    EspDelivered,
    EspEventReceived,
    EspEventType,
    EspReceiverStage,
    EspSuppressed,
    EspUnmatched,
    FoundBy,
    ImapCalibration,
    ImapHealth,
    InboxCategory,
    InFlight,
    LedgerErrorKind,
    LedgerHealth,
    LoopLag,
    MessageSkipped,
    NewestReport,
    Outcome,
    PairInFlight,
    ProbeFinished,
    ProbeLate,
    ProbeSent,
    ProbeStarted,
    ReportKind,
    ReportProblem,
    ReportRead,
    ReportResult,
    SendResult,
    ShardOwnership,
    SkipReason,
    SmtpTransaction,
    SpamVerdict,
    Stage,
    TlsSessionsCounted,
    TokenRefreshed,
    WebhookRefusal,
    WebhookRefused,
)
from agent.monitoring.catalog import (
    AUTH_RESULTS,
    BOUNCES,
    BUILD_INFO,
    CATALOG,
    CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP,
    CONFIG_LAST_RELOAD_SUCCESSFUL,
    DELIVERY_SECONDS,
    DKIM_KEY_BITS,
    DMARC_MESSAGES,
    DMARC_POLICY_INFO,
    DMARC_SOURCE_MESSAGES,
    DNS_CHECK_DURATION,
    DNS_CHECK_ERRORS,
    DNS_CHECK_OK,
    DNSBL_LISTED,
    ESP_COMPLAINTS,
    ESP_DELIVERY_SECONDS,
    ESP_EVENTS,
    ESP_RECEIVER_SECONDS,
    ESP_SPECS,
    ESP_SUPPRESSED,
    ESP_UNMATCHED,
    EVENT_LOOP_LAG_SECONDS,
    FOREIGN_PROBES,
    FORGED_MESSAGES,
    IMAP_CALIBRATED,
    IMAP_ERRORS,
    IMAP_NOTIFICATION_DELAY,
    IMAP_UP,
    INBOX_CATEGORIES,
    LAST_OUTCOME_TIMESTAMP,
    LATE_PROBES,
    LEDGER_ERRORS,
    LEDGER_WRITABLE,
    MAILBOX_INFO,
    MALFORMED_MESSAGES,
    OAUTH_TOKEN_EXPIRY,
    OAUTH_TOKEN_LAST_SUCCESS,
    OAUTH_TOKEN_REFRESHES,
    PAIR_DELIVERY_SECONDS,
    POSTMASTER_AUTH_SUCCESS_RATIO,
    POSTMASTER_COMPLIANT,
    POSTMASTER_DATA_AVAILABLE,
    POSTMASTER_DATA_DATE,
    POSTMASTER_DELIVERY_ERROR_RATIO,
    POSTMASTER_SPAM_RATIO,
    POSTMASTER_TLS_INBOUND_RATIO,
    PROBES,
    PROBES_FOUND,
    PROBES_IN_FLIGHT,
    PROBES_SENT,
    REPORT_NEWEST_END,
    REPORTS,
    REPUTATION_FEED_ERRORS,
    REPUTATION_FEED_LAST_SUCCESS,
    ROUTE_INFO,
    SCHEDULER_LAG_SECONDS,
    SHARD_INFO,
    SHARD_MAILBOX_OWNED,
    SHARD_OWNED_MAILBOXES,
    SMTP_ERRORS,
    SMTP_REPLIES,
    SMTP_TRANSACTION_SECONDS,
    SNDS_BLOCKED,
    SNDS_COMPLAINT_RATIO,
    SNDS_FILTER_RESULT,
    SNDS_MESSAGES,
    SNDS_PERIOD_END,
    SNDS_TRAP_HITS,
    SPAM_SCORE,
    SPAM_VERDICTS,
    SPF_DNS_LOOKUPS,
    TLS_CERT_EXPIRY,
    TLS_VERSION_INFO,
    TLSRPT_SESSIONS,
    WEBHOOK_LAST_EVENT,
    WEBHOOK_REFUSALS,
    MetricKind,
    MetricSpec,
)
from agent.oauth.token_source import TokenErrorKind
from agent.reputation.model import (
    DomainReport,
    FeedErrorKind,
    FeedFailed,
    FilterResult,
    PostmasterFetched,
    SndsFetched,
)

__all__ = ["DECLARE_STEP", "Recorder", "Result"]

Result = (
    ProbeSent
    | SmtpTransaction
    | ProbeFinished
    | ProbeLate
    | BounceCounted
    | MessageSkipped
    | ImapHealth
    | ImapCalibration
    | InFlight
    | PairInFlight
    | LedgerHealth
    | ConfigLoaded
    | ProbeStarted
    | LoopLag
    | DnsReport
    | ReportRead
    | NewestReport
    | DmarcCounted
    | TlsSessionsCounted
    | TokenRefreshed
    | WebhookRefused
    | EspEventReceived
    | EspUnmatched
    | EspDelivered
    | EspReceiverStage
    | EspSuppressed
    | EspComplaint
    | ShardOwnership
    | PostmasterFetched
    | SndsFetched
    | FeedFailed
)

# Bounce sources every route has; `esp` (and its `suppressed` reason) only routes with an ESP.
_OWN_BOUNCE_SOURCES = (BounceSource.SMTP, BounceSource.DSN)
_OWN_BOUNCE_REASONS = tuple(r for r in BounceReason if r is not BounceReason.SUPPRESSED)

# The DNS series that follow the configured checks (declare_dns drops the stale ones).
_DNS_SPECS = (
    DNS_CHECK_OK,
    DNS_CHECK_ERRORS,
    DNSBL_LISTED,
    SPF_DNS_LOOKUPS,
    DKIM_KEY_BITS,
    DMARC_POLICY_INFO,
)

# The OAuth credential series (declare_credentials drops those of removed credentials).
_CREDENTIAL_SPECS = (OAUTH_TOKEN_REFRESHES, OAUTH_TOKEN_LAST_SUCCESS, OAUTH_TOKEN_EXPIRY)
_TOKEN_OK = "ok"
_TOKEN_RESULTS = (_TOKEN_OK, *(kind.value for kind in TokenErrorKind))

# The reputation feeds' series: per domain, per SNDS IP, per feed (declare_reputation).
_POSTMASTER_DAY_SPECS = (
    POSTMASTER_DATA_DATE,
    POSTMASTER_SPAM_RATIO,
    POSTMASTER_AUTH_SUCCESS_RATIO,
    POSTMASTER_TLS_INBOUND_RATIO,
    POSTMASTER_DELIVERY_ERROR_RATIO,
)
_POSTMASTER_SPECS = (*_POSTMASTER_DAY_SPECS, POSTMASTER_DATA_AVAILABLE, POSTMASTER_COMPLIANT)
_SNDS_PERIOD_SPECS = (
    SNDS_FILTER_RESULT,
    SNDS_COMPLAINT_RATIO,
    SNDS_TRAP_HITS,
    SNDS_MESSAGES,
    SNDS_PERIOD_END,
)
_SNDS_SPECS = (*_SNDS_PERIOD_SPECS, SNDS_BLOCKED)
_FEED_SPECS = (REPUTATION_FEED_ERRORS, REPUTATION_FEED_LAST_SUCCESS)

# RFC 3463 status codes; anything else a server sends is labelled "invalid" so a hostile server
# cannot mint series.
_ENHANCED_CODE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_INVALID_ENHANCED_CODE = "invalid"


# Children `Recorder.declare_steps` creates between two yields: 500 prometheus_client children
# are ~6-10 ms of CPU on the 2-core machine; a timer due during one step waits for the next too,
# so the loop is held up to two steps, well under the 100 ms it may be held.
DECLARE_STEP = 500
# The children declare() creates per route and per pair (the unit of its steps).
_ROUTE_CHILDREN = (
    2
    + len(Stage) * len(ErrorKind)
    + len(BounceType) * len(_OWN_BOUNCE_SOURCES) * len(_OWN_BOUNCE_REASONS)
)
_PAIR_CHILDREN = len(Outcome) + 3

_T = TypeVar("_T")
# Who owns a child: ("pair", route, mailbox), ("route", route) or ("mailbox", mailbox).
_Owner = tuple[str, ...]


def _owner_positions(spec: MetricSpec) -> tuple[int | None, int | None]:
    """Where a metric's route and mailbox labels are (None: it has none)."""
    labels = spec.labels
    return (
        labels.index("route") if "route" in labels else None,
        labels.index("mailbox") if "mailbox" in labels else None,
    )


class Recorder:
    """Turns probe results into series on `registry`. Call from one thread (the event loop)."""

    def __init__(self, registry: CollectorRegistry, *, version: str = __version__) -> None:
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._histograms: dict[str, Histogram] = {}
        self._summaries: dict[str, Summary] = {}
        for spec in CATALOG:
            labels = list(spec.labels)
            match spec.kind:
                case MetricKind.COUNTER:
                    self._counters[spec.name] = Counter(
                        spec.name, spec.help, labels, registry=registry
                    )
                case MetricKind.GAUGE:
                    self._gauges[spec.name] = Gauge(spec.name, spec.help, labels, registry=registry)
                case MetricKind.HISTOGRAM:
                    assert spec.buckets is not None  # checked by MetricSpec
                    self._histograms[spec.name] = Histogram(
                        spec.name, spec.help, labels, registry=registry, buckets=spec.buckets
                    )
                case MetricKind.SUMMARY:
                    self._summaries[spec.name] = Summary(
                        spec.name, spec.help, labels, registry=registry
                    )
        # Every labelled child we created, per metric; and per owner (a pair, route or mailbox,
        # `_owner`) the children it owns, so declare() removes what a reload dropped without
        # walking every child (O(changes), issue 15).
        self._children: dict[str, dict[tuple[str, ...], Any]] = {spec.name: {} for spec in CATALOG}
        self._owned: dict[_Owner, list[tuple[MetricSpec, tuple[str, ...]]]] = {}
        self._owner_at = {spec.name: _owner_positions(spec) for spec in CATALOG}
        # Owners with children that declare() did not declare (a late probe of a removed pair):
        # the next declare() removes them, as it removes the owners a reload dropped.
        self._lingering: set[_Owner] = set()
        self._pairs: tuple[tuple[str, str], ...] = ()
        self._declared_pairs: frozenset[tuple[str, str]] = frozenset()
        self._declared_routes: frozenset[str] = frozenset()
        self._declared_mailboxes: frozenset[str] = frozenset()
        # What declare() created last time, per role, so a reload creates only what is new.
        self._declared_roles: dict[str, frozenset[Any]] = {}
        self._info: dict[MetricSpec, set[tuple[str, str]]] = {
            ROUTE_INFO: set(),
            MAILBOX_INFO: set(),
        }
        self._tls_versions: dict[str, str] = {}
        self._in_flight_pairs: set[tuple[str, str]] = set()  # pairs whose gauge is above 0
        self._g(BUILD_INFO, version).set(1)
        for ledger_kind in LedgerErrorKind:
            self._c(LEDGER_ERRORS, ledger_kind.value)

    # -- children, tracked ------------------------------------------------------------------------

    def _c(self, spec: MetricSpec, *values: str) -> Counter:
        child: Counter = self._child(spec, values)
        return child

    def _g(self, spec: MetricSpec, *values: str) -> Gauge:
        if values:
            child: Gauge = self._child(spec, values)
            return child
        return self._gauges[spec.name]

    def _h(self, spec: MetricSpec, *values: str) -> Histogram:
        child: Histogram = self._child(spec, values)
        return child

    def _s(self, spec: MetricSpec, *values: str) -> Summary:
        child: Summary = self._child(spec, values)
        return child

    def _child(self, spec: MetricSpec, values: tuple[str, ...]) -> Any:
        # The child itself is kept: `labels()` validates and locks on every call, and a probe
        # updates a dozen children (issue 15).
        child = self._children[spec.name].get(values)
        if child is None:
            child = self._metric(spec).labels(*values)
            self._track(spec, values, child)
        return child

    def _track(self, spec: MetricSpec, values: tuple[str, ...], child: Any) -> None:
        """A new child: remember it, and under its owner (once per child, not per event)."""
        self._children[spec.name][values] = child
        owner = self._owner(spec, values)
        if owner is not None:
            self._owned.setdefault(owner, []).append((spec, values))
            if not self._declared(owner):
                self._lingering.add(owner)

    def _owner(self, spec: MetricSpec, values: tuple[str, ...]) -> _Owner | None:
        """The pair, route or mailbox whose removal from the config removes this child."""
        route_at, mailbox_at = self._owner_at[spec.name]
        if route_at is not None and mailbox_at is not None:
            return ("pair", values[route_at], values[mailbox_at])
        if route_at is not None:
            return ("route", values[route_at])
        if mailbox_at is not None:
            return ("mailbox", values[mailbox_at])
        return None

    def _declared(self, owner: _Owner) -> bool:
        match owner:
            case ("pair", route, mailbox):
                return (route, mailbox) in self._declared_pairs
            case ("route", route):
                return route in self._declared_routes
            case _:
                return owner[1] in self._declared_mailboxes

    def _remove(self, spec: MetricSpec, values: tuple[str, ...]) -> None:
        self._metric(spec).remove(*values)
        self._children[spec.name].pop(values, None)
        owner = self._owner(spec, values)
        if owner is not None and owner in self._owned:
            owned = self._owned[owner]
            owned.remove((spec, values))
            if not owned:
                del self._owned[owner]

    def _remove_owner(self, owner: _Owner) -> None:
        """Remove every child of a pair, route or mailbox no longer configured."""
        for spec, values in self._owned.pop(owner, ()):
            self._metric(spec).remove(*values)
            self._children[spec.name].pop(values, None)

    def _metric(self, spec: MetricSpec) -> Counter | Gauge | Histogram | Summary:
        match spec.kind:
            case MetricKind.COUNTER:
                return self._counters[spec.name]
            case MetricKind.GAUGE:
                return self._gauges[spec.name]
            case MetricKind.HISTOGRAM:
                return self._histograms[spec.name]
            case MetricKind.SUMMARY:
                return self._summaries[spec.name]

    # -- configuration ----------------------------------------------------------------------------

    def declare(
        self,
        pairs: Iterable[tuple[str, str]],
        *,
        bounce_mailboxes: Iterable[str] = (),
        route_providers: Mapping[str, str] | None = None,
        mailbox_providers: Mapping[str, str] | None = None,
        report_mailboxes: Iterable[str] = (),
    ) -> None:
        """Pre-create the budgeted series of the configured routes, mailboxes and (route, mailbox)
        pairs at zero, and remove the series of routes, mailboxes and pairs no longer configured.
        Call at start and on every successful reload. Existing values of pairs still configured
        are kept. Bounce mailboxes get the per-mailbox series (IMAP health, malformed and forged
        messages); report mailboxes their IMAP health and report counts (the rest of their series
        when seen). Each route and mailbox gets one info series with its provider (absent from the
        maps: other). All at once: the agent uses `declare_steps`."""
        for _ in self.declare_steps(
            pairs,
            bounce_mailboxes=bounce_mailboxes,
            route_providers=route_providers,
            mailbox_providers=mailbox_providers,
            report_mailboxes=report_mailboxes,
        ):
            pass

    def declare_steps(
        self,
        pairs: Iterable[tuple[str, str]],
        *,
        bounce_mailboxes: Iterable[str] = (),
        route_providers: Mapping[str, str] | None = None,
        mailbox_providers: Mapping[str, str] | None = None,
        report_mailboxes: Iterable[str] = (),
    ) -> Iterator[None]:
        """`declare` in steps, for the event loop: the caller lets the loop run at each yield
        The cost follows what changed, not the config:
        the series of what a reload dropped go at once, in the first step (each owner's children
        are indexed, none is walked); then only what is new is created, DECLARE_STEP series a
        step. Until the last step a scrape may show some new pairs without their series yet
        (never an old pair without its own)."""
        report_mailboxes = tuple(dict.fromkeys(report_mailboxes))
        ordered = tuple(dict.fromkeys(pairs))
        routes = tuple(dict.fromkeys(route for route, _ in ordered))
        pair_mailboxes = tuple(dict.fromkeys(mailbox for _, mailbox in ordered))
        mailboxes = tuple(dict.fromkeys([*pair_mailboxes, *bounce_mailboxes]))
        # One info series per route and per mailbox, never per pair (the series budget).
        info: dict[MetricSpec, set[tuple[str, str]]] = {
            ROUTE_INFO: {(r, (route_providers or {}).get(r, "other")) for r in routes},
            MAILBOX_INFO: {
                (m, (mailbox_providers or {}).get(m, "other"))
                for m in (*mailboxes, *report_mailboxes)
            },
        }
        roles: dict[str, frozenset[Any]] = {
            "routes": frozenset(routes),
            "pairs": frozenset(ordered),
            "pair_mailboxes": frozenset(pair_mailboxes),
            "mailboxes": frozenset(mailboxes),
            "report_mailboxes": frozenset(report_mailboxes),
        }

        # Gone: every child of a route, mailbox or pair no longer configured, and of those that
        # only late results brought back since the last declare.
        previous = self._declared_roles
        self._declared_pairs = roles["pairs"]
        self._declared_routes = roles["routes"]
        self._declared_mailboxes = roles["mailboxes"] | roles["report_mailboxes"]
        gone: set[_Owner] = {o for o in self._lingering if not self._declared(o)}
        gone.update(("pair", *pair) for pair in previous.get("pairs", set()) - roles["pairs"])
        gone.update(("route", r) for r in previous.get("routes", set()) - roles["routes"])
        gone.update(
            ("mailbox", m)
            for m in (previous.get("mailboxes", set()) | previous.get("report_mailboxes", set()))
            - self._declared_mailboxes
        )
        for owner in gone:
            self._remove_owner(owner)
        self._lingering = set()
        for route in set(self._tls_versions) - roles["routes"]:
            del self._tls_versions[route]
        for info_spec, wanted in info.items():  # a provider changed by a reload replaces its series
            for values in self._info[info_spec] - wanted:
                if values in self._children[info_spec.name]:
                    self._remove(info_spec, values)
        self._pairs = ordered
        self._declared_roles = roles

        # New: only what was not declared last time, in config order (the exposition's order).
        def new(role: str, items: tuple[_T, ...]) -> tuple[_T, ...]:
            known = previous.get(role, frozenset())
            return tuple(item for item in items if item not in known)

        step = 0  # children created since the last yield
        for info_spec, wanted in info.items():
            for values in sorted(wanted - self._info[info_spec]):
                self._g(info_spec, *values).set(1)
            self._info[info_spec] = wanted
        for route in new("routes", routes):
            for stage in Stage:
                for kind in ErrorKind:
                    self._c(SMTP_ERRORS, route, stage.value, kind.value)
            self._h(SMTP_TRANSACTION_SECONDS, route)
            self._c(PROBES_SENT, route)
            for bounce_type in BounceType:
                for source in _OWN_BOUNCE_SOURCES:
                    for reason in _OWN_BOUNCE_REASONS:
                        self._c(BOUNCES, route, bounce_type.value, source.value, reason.value)
            step += _ROUTE_CHILDREN
            if step >= DECLARE_STEP:
                yield
                step = 0
        # Per pair, only what alerts take rate() ratios (outcomes, latency count) or staleness
        # (last outcome) of: 12 series. The placement ratios divide by every accepted outcome, so
        # all eight are here; a series born mid-window would lose its first probe to rate().
        for route, mailbox in new("pairs", ordered):
            for outcome in Outcome:
                self._c(PROBES, route, mailbox, outcome.value)
            self._g(PROBES_IN_FLIGHT, route, mailbox)
            self._s(PAIR_DELIVERY_SECONDS, route, mailbox)
            self._g(LAST_OUTCOME_TIMESTAMP, route, mailbox)
            step += _PAIR_CHILDREN
            if step >= DECLARE_STEP:
                yield
                step = 0
        for mailbox in new("pair_mailboxes", pair_mailboxes):
            self._h(DELIVERY_SECONDS, mailbox)
            for found_by in FoundBy:
                self._c(PROBES_FOUND, mailbox, found_by.value)
        for mailbox in new("mailboxes", mailboxes):
            self._c(FORGED_MESSAGES, mailbox)
            self._g(IMAP_UP, mailbox)
            for imap_kind in ErrorKind:
                self._c(IMAP_ERRORS, mailbox, imap_kind.value)
            self._c(MALFORMED_MESSAGES, mailbox)
        for mailbox in new("report_mailboxes", report_mailboxes):
            self._g(IMAP_UP, mailbox)
            for imap_kind in ErrorKind:
                self._c(IMAP_ERRORS, mailbox, imap_kind.value)
            for report_kind in ReportKind:
                for report_result in (*ReportResult, *ReportProblem):
                    self._c(REPORTS, mailbox, report_kind.value, report_result.value)
        yield

    @property
    def declared_pairs(self) -> frozenset[tuple[str, str]]:
        """The pairs the last `declare` was given."""
        return self._declared_pairs

    def declare_esp(self, routes: Iterable[str]) -> None:
        """Pre-create the webhook series of the routes with an ESP (per route: a few dozen, never
        per pair), and remove those of routes that no longer have one. Call after `declare`."""
        wanted = set(routes)
        for spec in ESP_SPECS:
            for values in sorted(self._children[spec.name]):
                if values[0] not in wanted:
                    self._remove(spec, values)
        for values in sorted(self._children[BOUNCES.name]):
            if values[2] == BounceSource.ESP.value and values[0] not in wanted:
                self._remove(BOUNCES, values)
        for route in sorted(wanted):
            for event_type in EspEventType:
                self._c(ESP_EVENTS, route, event_type.value)
            for refusal in WebhookRefusal:
                self._c(WEBHOOK_REFUSALS, route, refusal.value)
            self._c(ESP_UNMATCHED, route)
            self._g(WEBHOOK_LAST_EVENT, route)
            self._c(ESP_SUPPRESSED, route)
            self._c(ESP_COMPLAINTS, route)
            self._h(ESP_DELIVERY_SECONDS, route)
            self._h(ESP_RECEIVER_SECONDS, route)
            for bounce_type in BounceType:
                for reason in BounceReason:
                    self._c(BOUNCES, route, bounce_type.value, BounceSource.ESP.value, reason.value)

    def _bounce(
        self, route: str, bounce_type: BounceType, source: BounceSource, reason: BounceReason
    ) -> None:
        """One bounce of one probe (the caller makes sure each is counted once)."""
        self._c(BOUNCES, route, bounce_type.value, source.value, reason.value).inc()

    def _imap_calibration(self, mailbox: str, folder: str, delay: float | None) -> None:
        """Series per watched folder, from its first calibration on; no delay while uncalibrated
        (a stale figure would read as one in force)."""
        self._g(IMAP_CALIBRATED, mailbox, folder).set(0 if delay is None else 1)
        if delay is None:
            if (mailbox, folder) in self._children[IMAP_NOTIFICATION_DELAY.name]:
                self._remove(IMAP_NOTIFICATION_DELAY, (mailbox, folder))
        else:
            self._g(IMAP_NOTIFICATION_DELAY, mailbox, folder).set(delay)

    def _config_loaded(self, ok: bool, at: float) -> None:
        """A configuration load or reload finished; `at` is its wall-clock time."""
        self._g(CONFIG_LAST_RELOAD_SUCCESSFUL).set(1 if ok else 0)
        if ok:
            self._g(CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP).set(at)

    # -- the one entry point ----------------------------------------------------------------------

    def record(self, result: Result) -> None:
        """Turn one result into series: every result of the agent comes in through here."""
        match result:
            case ProbeSent(route, _):
                self._probe_sent(route)
            case SmtpTransaction(route, send_result):
                self._smtp_result(route, send_result)
            case ProbeFinished():
                self._probe_final(
                    result.route,
                    result.mailbox,
                    result.outcome,
                    finished_at=result.finished_at,
                    latency_seconds=result.latency_seconds,
                    auth=result.arrival.auth if result.arrival is not None else None,
                    found_by=result.arrival.found_by if result.arrival is not None else None,
                )
                if result.outcome is Outcome.INBOX and result.arrival is not None:
                    self._inbox_category(result.mailbox, result.arrival.category)
                if result.arrival is not None:
                    self._spam(result.route, result.mailbox, result.arrival.spam)
            case ProbeLate(route, mailbox):
                self._probe_late(route, mailbox)
            case BounceCounted(route, bounce_type, source, reason):
                self._bounce(route, bounce_type, source, reason)
            case MessageSkipped(mailbox, SkipReason.MALFORMED):
                self._malformed_message(mailbox)
            case MessageSkipped(mailbox, SkipReason.FORGED):
                self._forged_message(mailbox)
            case MessageSkipped(mailbox, SkipReason.FOREIGN):
                # Created when first seen: most mailboxes never see one (not sharded).
                self._c(FOREIGN_PROBES, mailbox).inc()
            case ImapHealth(mailbox, up, error):
                if error is not None:
                    self._imap_error(mailbox, error)
                self._imap_state(mailbox, up)
            case ImapCalibration(mailbox, folder, delay):
                self._imap_calibration(mailbox, folder, delay)
            case InFlight(counts):
                self._set_in_flight(counts)
            case PairInFlight(route, mailbox, count):
                self._set_pair_in_flight((route, mailbox), count)
            case LedgerHealth(writable, error):
                self._ledger_health(writable, error)
            case TokenRefreshed():
                self._token_refreshed(result)
            case ConfigLoaded(ok, at):
                self._config_loaded(ok, at)
            case ProbeStarted(lag_seconds):
                self._histograms[SCHEDULER_LAG_SECONDS.name].observe(max(0.0, lag_seconds))
            case LoopLag(seconds):
                self._histograms[EVENT_LOOP_LAG_SECONDS.name].observe(max(0.0, seconds))
            case DnsReport():
                self._dns_report(result)
            case ReportRead() | NewestReport() | DmarcCounted() | TlsSessionsCounted():
                self._report(result)
            case WebhookRefused(route, reason):
                self._c(WEBHOOK_REFUSALS, route, reason.value).inc()
            case EspEventReceived(route, event_type, received_at):
                self._c(ESP_EVENTS, route, event_type.value).inc()
                self._g(WEBHOOK_LAST_EVENT, route).set(received_at)
            case EspUnmatched(route):
                self._c(ESP_UNMATCHED, route).inc()
            case EspDelivered(route, latency_seconds):
                if latency_seconds is not None:
                    self._h(ESP_DELIVERY_SECONDS, route).observe(max(0.0, latency_seconds))
            case EspReceiverStage(route, seconds):
                self._h(ESP_RECEIVER_SECONDS, route).observe(max(0.0, seconds))
            case EspSuppressed(route):
                self._c(ESP_SUPPRESSED, route).inc()
            case EspComplaint(route):
                self._c(ESP_COMPLAINTS, route).inc()
            case ShardOwnership():
                self._shard_ownership(result)
            case PostmasterFetched():
                self._postmaster(result)
            case SndsFetched():
                self._snds(result)
            case FeedFailed(feed, kind):
                self._c(REPUTATION_FEED_ERRORS, feed.value, kind.value).inc()

    # -- probes -----------------------------------------------------------------------------------

    def _probe_sent(self, route: str) -> None:
        self._c(PROBES_SENT, route).inc()

    def _smtp_result(self, route: str, result: SendResult) -> None:
        """Count every reply and the error of one transaction; observe its duration and TLS."""
        for reply in result.transcript:
            enhanced = reply.enhanced_code or ""
            if enhanced and not _ENHANCED_CODE.fullmatch(enhanced):
                enhanced = _INVALID_ENHANCED_CODE
            code = str(reply.code) if 0 <= reply.code <= 999 else "invalid"
            self._c(
                SMTP_REPLIES, route, reply.stage.value, code, enhanced, reply.reply_class.value
            ).inc()
        if result.error is not None:
            self._c(SMTP_ERRORS, route, result.error.stage.value, result.error.kind.value).inc()
        self._h(SMTP_TRANSACTION_SECONDS, route).observe(max(result.duration_seconds, 0.0))
        if result.tls_version is not None:
            previous = self._tls_versions.get(route)
            if previous is not None and previous != result.tls_version:
                # An info metric shows the current value only; the old version's series goes.
                self._remove(TLS_VERSION_INFO, (route, previous))
            self._tls_versions[route] = result.tls_version
            self._g(TLS_VERSION_INFO, route, result.tls_version).set(1)
        if result.tls_cert_not_after is not None:
            self._g(TLS_CERT_EXPIRY, route).set(result.tls_cert_not_after)

    def _probe_final(
        self,
        route: str,
        mailbox: str,
        outcome: Outcome,
        *,
        finished_at: float,
        latency_seconds: float | None,
        auth: AuthVerdicts | None,
        found_by: FoundBy | None,
    ) -> None:
        """Count the probe's one final outcome (recorded only when `Ledger.finalize` returned True).
        A summary method the trusted fields did not report (None) counts as `absent`, so a
        receiver that stops stamping, or trust rules that match nothing, show; how a probe was
        found is not counted when that was not recorded."""
        self._c(PROBES, route, mailbox, outcome.value).inc()
        if (route, mailbox) in self._declared_pairs:
            # Not for a pair this agent no longer probes (a sharded replica's probe to a mailbox
            # a rescale gave to another, a pair a reload removed): a timestamp that never moves
            # again would read as a stale pair.
            self._g(LAST_OUTCOME_TIMESTAMP, route, mailbox).set(finished_at)
        if latency_seconds is not None:
            # Sender and watcher share one clock; a negative value can only be a clock step.
            latency = max(latency_seconds, 0.0)
            self._h(DELIVERY_SECONDS, mailbox).observe(latency)
            self._s(PAIR_DELIVERY_SECONDS, route, mailbox).observe(latency)
        if auth is not None:
            for method, result in auth.items():
                label = AUTH_ABSENT if result is None else result.value
                self._c(AUTH_RESULTS, route, mailbox, method.value, label).inc()
        if found_by is not None:
            self._c(PROBES_FOUND, mailbox, found_by.value).inc()

    def _inbox_category(self, mailbox: str, category: InboxCategory | None) -> None:
        """Count the Gmail tab of an inbox probe, per mailbox (all routes). The mailbox's series
        are created with its first categorised probe, all five at once, not declared at start: a
        mailbox whose server has no X-GM-EXT-1 never gets any."""
        if category is None:
            return
        for tab in InboxCategory:
            self._c(INBOX_CATEGORIES, mailbox, tab.value)
        self._c(INBOX_CATEGORIES, mailbox, category.value).inc()

    def _spam(self, route: str, mailbox: str, verdicts: tuple[SpamVerdict, ...]) -> None:
        """Count each filter's verdict on a delivered probe (per pair) and observe its score (per
        mailbox: the scale is the receiver's filter's). Both are created when first seen, not at
        declare(): a receiver runs one filter and says ham or spam, nearly always the same."""
        for verdict in verdicts:
            source = verdict.source.value
            self._c(SPAM_VERDICTS, route, mailbox, source, verdict.category.value).inc()
            if verdict.score is not None:
                self._h(SPAM_SCORE, mailbox, source).observe(verdict.score)

    def restore_last_outcomes(self, times: Mapping[tuple[str, str, Outcome], float]) -> None:
        """Set the last-outcome gauges from the ledger after a restart (`Ledger.last_finished_at`,
        per outcome: the latest of a pair's outcomes wins), so they do not read 0 ("never") and
        fire staleness alerts on every restart."""
        latest: dict[tuple[str, str], float] = {}
        for (route, mailbox, _), at in times.items():
            latest[route, mailbox] = max(at, latest.get((route, mailbox), at))
        for (route, mailbox), at in latest.items():
            self._g(LAST_OUTCOME_TIMESTAMP, route, mailbox).set(at)

    def _probe_late(self, route: str, mailbox: str) -> None:
        self._c(LATE_PROBES, route, mailbox).inc()

    def _set_in_flight(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Set the in-flight gauge of every pair from `Ledger.in_flight_counts`: declared pairs
        absent from `counts` read 0; undeclared pairs that drop out are removed."""
        # O(probes in flight), not O(pairs): only gauges that are or were above 0 can change (a
        # newly declared pair's is created at 0).
        for pair in self._in_flight_pairs - counts.keys():
            self._set_pair_in_flight(pair, 0)
        for pair, count in counts.items():
            self._set_pair_in_flight(pair, count)

    def _set_pair_in_flight(self, pair: tuple[str, str], count: int) -> None:
        """One pair's in-flight gauge; an undeclared pair (removed by a reload, probes still in
        flight) loses its series at 0."""
        if count:
            self._in_flight_pairs.add(pair)
        else:
            self._in_flight_pairs.discard(pair)
        if count == 0 and pair not in self._declared_pairs:
            if pair in self._children[PROBES_IN_FLIGHT.name]:
                self._remove(PROBES_IN_FLIGHT, pair)
            return
        self._g(PROBES_IN_FLIGHT, *pair).set(count)

    # -- the ledger -------------------------------------------------------------------------------

    def _ledger_health(self, writable: bool, error: LedgerErrorKind | None) -> None:
        if error is not None:
            self._c(LEDGER_ERRORS, error.value).inc()
        self._g(LEDGER_WRITABLE).set(1 if writable else 0)

    # -- mailboxes --------------------------------------------------------------------------------

    def _imap_state(self, mailbox: str, up: bool) -> None:
        self._g(IMAP_UP, mailbox).set(1 if up else 0)

    def _imap_error(self, mailbox: str, kind: ErrorKind) -> None:
        self._c(IMAP_ERRORS, mailbox, kind.value).inc()

    def _forged_message(self, mailbox: str) -> None:
        self._c(FORGED_MESSAGES, mailbox).inc()

    def _malformed_message(self, mailbox: str) -> None:
        self._c(MALFORMED_MESSAGES, mailbox).inc()

    # -- DMARC aggregate and SMTP TLS reports ----------------------------------------------------

    def _report(
        self, result: ReportRead | NewestReport | DmarcCounted | TlsSessionsCounted
    ) -> None:
        """One report read, or one row of a counted report (the caller counts each report once
        and bounds the labels)."""
        match result:
            case ReportRead(mailbox, kind, outcome):
                self._c(REPORTS, mailbox, kind.value, outcome.value).inc()
            case NewestReport(mailbox, kind, end):
                self._g(REPORT_NEWEST_END, mailbox, kind.value).set(end)
            case DmarcCounted():
                self._c(
                    DMARC_MESSAGES,
                    result.mailbox,
                    result.org,
                    result.header_from,
                    result.disposition,
                    _pass_fail(result.dkim),
                    _pass_fail(result.spf),
                ).inc(result.count)
                self._c(
                    DMARC_SOURCE_MESSAGES,
                    result.mailbox,
                    result.header_from,
                    result.source_ip,
                    _pass_fail(result.dkim or result.spf),
                ).inc(result.count)
            case TlsSessionsCounted():
                self._c(
                    TLSRPT_SESSIONS,
                    result.mailbox,
                    result.org,
                    result.policy_domain,
                    result.policy_type,
                    result.result,
                ).inc(result.count)

    # -- sharding ---------------------------------------------------------------------------------

    def _shard_ownership(self, ownership: ShardOwnership) -> None:
        """This replica's shard and the seed mailboxes it owns: one series per configured
        mailbox (0 or 1), so a sum across replicas shows a mailbox nobody, or two, own."""
        shard = (str(ownership.index), str(ownership.count))
        for spec, keep in (
            (SHARD_INFO, {shard}),
            (SHARD_MAILBOX_OWNED, {(name,) for name in ownership.owned}),
        ):
            for values in set(self._children[spec.name]) - keep:
                self._remove(spec, values)
        self._g(SHARD_INFO, *shard).set(1)
        for name, owned in ownership.owned.items():
            self._g(SHARD_MAILBOX_OWNED, name).set(1 if owned else 0)
        self._g(SHARD_OWNED_MAILBOXES).set(sum(ownership.owned.values()))

    # -- reputation feeds (Gmail Postmaster Tools, Microsoft SNDS) --------------------------------

    def declare_reputation(
        self, *, domains: Iterable[str], snds_ips: Iterable[str] | None, feeds: Iterable[str]
    ) -> None:
        """Pre-create each configured feed's error counts (every kind at zero) and each domain's
        data-available gauge, and remove the series of domains, SNDS IPs (when `snds_ips` is a
        list: those not in it; None: SNDS is off) and feeds no longer configured. Values of
        series still configured are kept."""
        wanted_domains, wanted_feeds = set(domains), set(feeds)
        for spec in _POSTMASTER_SPECS:
            for values in sorted(self._children[spec.name]):
                if values[0] not in wanted_domains:
                    self._remove(spec, values)
        ips = None if snds_ips is None else set(snds_ips)
        for spec in _SNDS_SPECS:
            for values in sorted(self._children[spec.name]):
                if ips is None or (ips and values[0] not in ips and values[0] != "other"):
                    self._remove(spec, values)
        for spec in _FEED_SPECS:
            for values in sorted(self._children[spec.name]):
                if values[0] not in wanted_feeds:
                    self._remove(spec, values)
        for feed in sorted(wanted_feeds):
            for kind in FeedErrorKind:
                self._c(REPUTATION_FEED_ERRORS, feed, kind.value)
        for domain in sorted(wanted_domains):
            self._g(POSTMASTER_DATA_AVAILABLE, domain)

    def _feed_read(self, feed: str, at: float, malformed: int) -> None:
        self._g(REPUTATION_FEED_LAST_SUCCESS, feed).set(at)
        if malformed:
            self._c(REPUTATION_FEED_ERRORS, feed, FeedErrorKind.MALFORMED.value).inc(malformed)

    def _drop(self, specs: Iterable[MetricSpec], key: str, keep: set[tuple[str, ...]]) -> None:
        """Remove the series of `key` (a domain or an IP) in `specs` that are not in `keep`."""
        for spec in specs:
            for values in sorted(self._children[spec.name]):
                if values[0] == key and values not in keep:
                    self._remove(spec, values)

    def _postmaster(self, fetched: PostmasterFetched) -> None:
        self._feed_read("postmaster", fetched.at, fetched.malformed)
        for report in fetched.domains:
            self._postmaster_domain(report)

    def _postmaster_domain(self, report: DomainReport) -> None:
        domain, day = report.domain, report.day
        self._g(POSTMASTER_DATA_AVAILABLE, domain).set(int(day is not None))
        kept: set[tuple[str, ...]] = set()
        if day is not None:
            midnight = dt.datetime.combine(day.date, dt.time(), dt.UTC).timestamp()
            values: list[tuple[MetricSpec, tuple[str, ...], float]] = [
                (POSTMASTER_DATA_DATE, (domain,), midnight)
            ]
            if day.spam_ratio is not None:
                values.append((POSTMASTER_SPAM_RATIO, (domain,), day.spam_ratio))
            if day.tls_inbound_ratio is not None:
                values.append((POSTMASTER_TLS_INBOUND_RATIO, (domain,), day.tls_inbound_ratio))
            values += [
                (POSTMASTER_AUTH_SUCCESS_RATIO, (domain, method), ratio)
                for method, ratio in day.auth_success
            ]
            values += [
                (POSTMASTER_DELIVERY_ERROR_RATIO, (domain, e.type, e.reason), e.ratio)
                for e in day.delivery_errors
            ]
            for spec, labels, value in values:
                self._g(spec, *labels).set(value)
                kept.add(labels)
        # No data is a state of its own: the day's series go rather than read zero.
        self._drop(_POSTMASTER_DAY_SPECS, domain, kept)
        rows = {(domain, requirement.value): ok for requirement, ok in report.compliance}
        self._drop((POSTMASTER_COMPLIANT,), domain, set(rows))
        for labels, ok in rows.items():
            self._g(POSTMASTER_COMPLIANT, *labels).set(int(ok))

    def _snds(self, fetched: SndsFetched) -> None:
        self._feed_read("snds", fetched.at, fetched.malformed)
        kept: set[tuple[str, ...]] = set()
        for record in fetched.ips:
            ip = record.ip
            for result in FilterResult:
                self._g(SNDS_FILTER_RESULT, ip, result.value).set(
                    int(result is record.filter_result)
                )
                kept.add((ip, result.value))
            for kind, count in (
                ("rcpt", record.rcpt_commands),
                ("data", record.data_commands),
                ("recipients", record.recipients),
            ):
                self._g(SNDS_MESSAGES, ip, kind).set(count)
                kept.add((ip, kind))
            self._g(SNDS_COMPLAINT_RATIO, ip).set(record.complaint_ratio)
            self._g(SNDS_TRAP_HITS, ip).set(record.trap_hits)
            self._g(SNDS_PERIOD_END, ip).set(record.period_end)
            kept.add((ip,))
        # An IP without a period in today's data sent nothing SNDS counted: no series, not zeros.
        for spec in _SNDS_PERIOD_SPECS:
            for values in sorted(self._children[spec.name]):
                if values not in kept:
                    self._remove(spec, values)
        blocked = {(ip,): flag for ip, flag in fetched.blocked}
        for values in sorted(self._children[SNDS_BLOCKED.name]):
            if values not in blocked:
                self._remove(SNDS_BLOCKED, values)
        for labels, flag in blocked.items():
            self._g(SNDS_BLOCKED, *labels).set(int(flag))

    # -- DNS checks -------------------------------------------------------------------------------

    def declare_credentials(self, credentials: Iterable[str]) -> None:
        """Pre-create the series of the configured OAuth credentials (every result at zero) and
        remove those of credentials no longer configured: a few per credential, none per pair."""
        wanted = set(credentials)
        for spec in _CREDENTIAL_SPECS:
            for values in sorted(self._children[spec.name]):
                if values[0] not in wanted:
                    self._remove(spec, values)
        for credential in sorted(wanted):
            for result in _TOKEN_RESULTS:
                self._c(OAUTH_TOKEN_REFRESHES, credential, result)
            self._g(OAUTH_TOKEN_LAST_SUCCESS, credential)
            self._g(OAUTH_TOKEN_EXPIRY, credential)

    def _token_refreshed(self, refreshed: TokenRefreshed) -> None:
        # Results come from an enum; anything else would be a bug, not a new series.
        result = refreshed.result if refreshed.result in _TOKEN_RESULTS else "refused"
        self._c(OAUTH_TOKEN_REFRESHES, refreshed.credential, result).inc()
        if result == _TOKEN_OK:
            self._g(OAUTH_TOKEN_LAST_SUCCESS, refreshed.credential).set(refreshed.at)
            self._g(OAUTH_TOKEN_EXPIRY, refreshed.credential).set(refreshed.expires_at or 0)

    def declare_dns(
        self, checks: Iterable[tuple[str, DnsCheck]], blocklists: Iterable[tuple[str, str]]
    ) -> None:
        """Pre-create the series of the configured DNS checks (`DnsPlan.check_series()`) and
        blocklist lookups at zero and remove those no longer configured; with neither, remove
        every DNS series. Values of series still configured are kept."""
        wanted_checks = {(target, check.value) for target, check in checks}
        wanted_lists = set(blocklists)
        domains = {target for target, _ in wanted_checks}
        configured = bool(wanted_checks or wanted_lists)
        for spec in _DNS_SPECS:
            for values in sorted(self._children[spec.name]):
                if spec is DNS_CHECK_OK:
                    keep = values in wanted_checks
                elif spec is DNSBL_LISTED:
                    keep = values in wanted_lists
                elif spec is DNS_CHECK_ERRORS:
                    keep = configured
                else:
                    keep = values[0] in domains
                if not keep:
                    self._remove(spec, values)
        if not configured:
            return
        for check in DnsCheck:
            self._c(DNS_CHECK_ERRORS, check.value)
        for target, check_name in sorted(wanted_checks):
            self._g(DNS_CHECK_OK, target, check_name)
        for target, zone in sorted(wanted_lists):
            self._g(DNSBL_LISTED, target, zone)

    def _dns_report(self, report: DnsReport) -> None:
        """Record one run of the DNS checks. An undecided check or blocklist lookup keeps its
        last value and counts as an error."""
        self._g(DNS_CHECK_DURATION).set(report.duration_seconds)
        for result in report.checks:
            if result.passed is None:
                self._c(DNS_CHECK_ERRORS, result.check.value).inc()
            else:
                self._g(DNS_CHECK_OK, result.target, result.check.value).set(int(result.passed))
        for listing in report.blocklists:
            if listing.listed is None:
                self._c(DNS_CHECK_ERRORS, DnsCheck.DNSBL.value).inc()
            else:
                self._g(DNSBL_LISTED, listing.target, listing.zone).set(int(listing.listed))
        for domain, lookups in report.spf_lookups:
            self._g(SPF_DNS_LOOKUPS, domain).set(lookups)
        for found in report.dkim_keys:
            kind = found.key.key_type if found.key is not None else None
            for values in sorted(self._children[DKIM_KEY_BITS.name]):
                # One series per selector: a key that changed type, or went, leaves no stale one.
                if values[:2] == (found.domain, found.selector) and values[2] != kind:
                    self._remove(DKIM_KEY_BITS, values)
            if found.key is not None:
                self._g(DKIM_KEY_BITS, found.domain, found.selector, found.key.key_type).set(
                    found.key.bits
                )
        policies = {
            finding.domain: (
                finding.domain,
                finding.policy.value,
                (finding.record.subdomain_policy or finding.record.policy).value,
                finding.record.adkim.value,
                finding.record.aspf.value,
            )
            for finding in report.dmarc
        }
        # An info metric shows the current policy only; an undecided check keeps the last one.
        gone = {r.target for r in report.checks if r.check is DnsCheck.DMARC and r.passed is False}
        for values in sorted(self._children[DMARC_POLICY_INFO.name]):
            if values[0] in gone or policies.get(values[0], values) != values:
                self._remove(DMARC_POLICY_INFO, values)
        for values in policies.values():
            self._g(DMARC_POLICY_INFO, *values).set(1)


def _pass_fail(passed: bool) -> str:
    return "pass" if passed else "fail"
