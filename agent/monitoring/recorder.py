"""The recorder: turns the agent's frozen results into Prometheus series of the catalog.

Only this module and `agent.monitoring.catalog` import prometheus_client. Bounded labels only:
stage, outcome, class, kind, method and result come from the `agent.model` enums and are
pre-created at zero by `Recorder.declare` for every configured route/mailbox pair, so series never
blink in and out. `code` and `enhanced_code` are created when seen (SMTP bounds them). Nothing is
ever labelled by probe id, message id, recipient or subject.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent import __version__
from agent.dns.records import DnsCheck, DnsReport
from agent.model import (
    AUTH_ABSENT,
    AuthMethod,
    AuthResult,
    AuthVerdicts,
    BounceCounted,
    BounceReason,
    BounceSource,
    BounceType,
    ConfigLoaded,
    ErrorKind,
    FoundBy,
    ImapHealth,
    InboxCategory,
    InFlight,
    LedgerErrorKind,
    LedgerHealth,
    LoopLag,
    MessageSkipped,
    Outcome,
    PairInFlight,
    ProbeFinished,
    ProbeLate,
    ProbeSent,
    ProbeStarted,
    SendResult,
    SkipReason,
    SmtpTransaction,
    SpamCategory,
    SpamSource,
    SpamVerdict,
    Stage,
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
    DMARC_POLICY_INFO,
    DNS_CHECK_DURATION,
    DNS_CHECK_ERRORS,
    DNS_CHECK_OK,
    DNSBL_LISTED,
    EVENT_LOOP_LAG_SECONDS,
    FORGED_MESSAGES,
    IMAP_ERRORS,
    IMAP_UP,
    INBOX_CATEGORIES,
    LAST_OUTCOME_TIMESTAMP,
    LATE_PROBES,
    LEDGER_ERRORS,
    LEDGER_WRITABLE,
    MALFORMED_MESSAGES,
    PROBES,
    PROBES_FOUND,
    PROBES_IN_FLIGHT,
    PROBES_SENT,
    SCHEDULER_LAG_SECONDS,
    SMTP_ERRORS,
    SMTP_REPLIES,
    SMTP_TRANSACTION_SECONDS,
    SPAM_SCORE,
    SPAM_VERDICTS,
    SPF_DNS_LOOKUPS,
    TLS_CERT_EXPIRY,
    TLS_VERSION_INFO,
    MetricKind,
    MetricSpec,
)

__all__ = ["Recorder", "Result"]

Result = (
    ProbeSent
    | SmtpTransaction
    | ProbeFinished
    | ProbeLate
    | BounceCounted
    | MessageSkipped
    | ImapHealth
    | InFlight
    | PairInFlight
    | LedgerHealth
    | ConfigLoaded
    | ProbeStarted
    | LoopLag
    | DnsReport
)

# The DNS series that follow the configured checks (declare_dns drops the stale ones).
_DNS_SPECS = (
    DNS_CHECK_OK,
    DNS_CHECK_ERRORS,
    DNSBL_LISTED,
    SPF_DNS_LOOKUPS,
    DKIM_KEY_BITS,
    DMARC_POLICY_INFO,
)

# RFC 3463 status codes; anything else a server sends is labelled "invalid" so a hostile server
# cannot mint series.
_ENHANCED_CODE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_INVALID_ENHANCED_CODE = "invalid"

# The categories each filter can report (agent.reading.spam): rspamd and SpamAssassin say only
# spam or not, so only Microsoft's series carry its richer categories (15, not 27, per pair).
_YES_NO = (SpamCategory.HAM, SpamCategory.SPAM, SpamCategory.UNKNOWN)
_SPAM_CATEGORIES: dict[SpamSource, tuple[SpamCategory, ...]] = {
    SpamSource.RSPAMD: _YES_NO,
    SpamSource.SPAMASSASSIN: _YES_NO,
    SpamSource.MICROSOFT: tuple(SpamCategory),
}


class Recorder:
    """Turns probe results into series on `registry`. Call from one thread (the event loop)."""

    def __init__(self, registry: CollectorRegistry, *, version: str = __version__) -> None:
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._histograms: dict[str, Histogram] = {}
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
        # Every labelled child we created, per metric, so declare() can remove the stale ones.
        self._children: dict[str, set[tuple[str, ...]]] = {spec.name: set() for spec in CATALOG}
        self._pairs: tuple[tuple[str, str], ...] = ()
        self._declared_pairs: frozenset[tuple[str, str]] = frozenset()
        self._tls_versions: dict[str, str] = {}
        self._g(BUILD_INFO, version).set(1)
        for ledger_kind in LedgerErrorKind:
            self._c(LEDGER_ERRORS, ledger_kind.value)

    # -- children, tracked ------------------------------------------------------------------------

    def _c(self, spec: MetricSpec, *values: str) -> Counter:
        self._children[spec.name].add(values)
        return self._counters[spec.name].labels(*values)

    def _g(self, spec: MetricSpec, *values: str) -> Gauge:
        if values:
            self._children[spec.name].add(values)
            return self._gauges[spec.name].labels(*values)
        return self._gauges[spec.name]

    def _h(self, spec: MetricSpec, *values: str) -> Histogram:
        self._children[spec.name].add(values)
        return self._histograms[spec.name].labels(*values)

    def _remove(self, spec: MetricSpec, values: tuple[str, ...]) -> None:
        metric: Counter | Gauge | Histogram
        match spec.kind:
            case MetricKind.COUNTER:
                metric = self._counters[spec.name]
            case MetricKind.GAUGE:
                metric = self._gauges[spec.name]
            case MetricKind.HISTOGRAM:
                metric = self._histograms[spec.name]
        metric.remove(*values)
        self._children[spec.name].discard(values)

    # -- configuration ----------------------------------------------------------------------------

    def declare(
        self, pairs: Iterable[tuple[str, str]], *, bounce_mailboxes: Iterable[str] = ()
    ) -> None:
        """Pre-create every bounded series of the configured (route, mailbox) pairs at zero, and
        remove the series of routes, mailboxes and pairs no longer configured. Call at start and on
        every successful reload. Existing values of pairs still configured are kept. Bounce
        mailboxes get the per-mailbox series (IMAP health, malformed and forged messages)."""
        ordered = tuple(dict.fromkeys(pairs))
        pair_set = set(ordered)
        routes = tuple(dict.fromkeys(route for route, _ in ordered))
        mailboxes = tuple(dict.fromkeys([*(mailbox for _, mailbox in ordered), *bounce_mailboxes]))
        route_set, mailbox_set = set(routes), set(mailboxes)

        for spec in CATALOG:
            for values in sorted(self._children[spec.name]):
                labels = dict(zip(spec.labels, values, strict=True))
                if "route" in labels and "mailbox" in labels:
                    keep = (labels["route"], labels["mailbox"]) in pair_set
                elif "route" in labels:
                    keep = labels["route"] in route_set
                elif "mailbox" in labels:
                    keep = labels["mailbox"] in mailbox_set
                else:
                    keep = True
                if not keep:
                    self._remove(spec, values)
        for route in set(self._tls_versions) - route_set:
            del self._tls_versions[route]

        for route in routes:
            for stage in Stage:
                for kind in ErrorKind:
                    self._c(SMTP_ERRORS, route, stage.value, kind.value)
            self._h(SMTP_TRANSACTION_SECONDS, route)
            for bounce_type in BounceType:
                for source in BounceSource:
                    for reason in BounceReason:
                        self._c(BOUNCES, route, bounce_type.value, source.value, reason.value)
        for route, mailbox in ordered:
            for outcome in Outcome:
                self._c(PROBES, route, mailbox, outcome.value)
            self._c(PROBES_SENT, route, mailbox)
            self._g(PROBES_IN_FLIGHT, route, mailbox)
            self._h(DELIVERY_SECONDS, route, mailbox)
            self._c(LATE_PROBES, route, mailbox)
            for method in AuthMethod:
                for result_label in (*(result.value for result in AuthResult), AUTH_ABSENT):
                    self._c(AUTH_RESULTS, route, mailbox, method.value, result_label)
            for spam_source, categories in _SPAM_CATEGORIES.items():
                for category in categories:
                    self._c(SPAM_VERDICTS, route, mailbox, spam_source.value, category.value)
            for outcome in Outcome:
                self._g(LAST_OUTCOME_TIMESTAMP, route, mailbox, outcome.value)
        for mailbox in dict.fromkeys(mailbox for _, mailbox in ordered):
            for found_by in FoundBy:
                self._c(PROBES_FOUND, mailbox, found_by.value)
        for mailbox in mailboxes:
            self._c(FORGED_MESSAGES, mailbox)
            self._g(IMAP_UP, mailbox)
            for imap_kind in ErrorKind:
                self._c(IMAP_ERRORS, mailbox, imap_kind.value)
            self._c(MALFORMED_MESSAGES, mailbox)
        self._pairs = ordered
        self._declared_pairs = frozenset(ordered)

    def _bounce(
        self, route: str, bounce_type: BounceType, source: BounceSource, reason: BounceReason
    ) -> None:
        """One bounce of one probe (the caller makes sure each is counted once)."""
        self._c(BOUNCES, route, bounce_type.value, source.value, reason.value).inc()

    def _config_loaded(self, ok: bool, at: float) -> None:
        """A configuration load or reload finished; `at` is its wall-clock time."""
        self._g(CONFIG_LAST_RELOAD_SUCCESSFUL).set(1 if ok else 0)
        if ok:
            self._g(CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP).set(at)

    # -- the one entry point ----------------------------------------------------------------------

    def record(self, result: Result) -> None:
        """Turn one result into series: every result of the agent comes in through here."""
        match result:
            case ProbeSent(route, mailbox):
                self._probe_sent(route, mailbox)
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
                    self._inbox_category(result.route, result.mailbox, result.arrival.category)
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
            case ImapHealth(mailbox, up, error):
                if error is not None:
                    self._imap_error(mailbox, error)
                self._imap_state(mailbox, up)
            case InFlight(counts):
                self._set_in_flight(counts)
            case PairInFlight(route, mailbox, count):
                self._set_pair_in_flight((route, mailbox), count)
            case LedgerHealth(writable, error):
                self._ledger_health(writable, error)
            case ConfigLoaded(ok, at):
                self._config_loaded(ok, at)
            case ProbeStarted(lag_seconds):
                self._histograms[SCHEDULER_LAG_SECONDS.name].observe(max(0.0, lag_seconds))
            case LoopLag(seconds):
                self._histograms[EVENT_LOOP_LAG_SECONDS.name].observe(max(0.0, seconds))
            case DnsReport():
                self._dns_report(result)

    # -- probes -----------------------------------------------------------------------------------

    def _probe_sent(self, route: str, mailbox: str) -> None:
        self._c(PROBES_SENT, route, mailbox).inc()

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
        self._g(LAST_OUTCOME_TIMESTAMP, route, mailbox, outcome.value).set(finished_at)
        if latency_seconds is not None:
            # Sender and watcher share one clock; a negative value can only be a clock step.
            self._h(DELIVERY_SECONDS, route, mailbox).observe(max(latency_seconds, 0.0))
        if auth is not None:
            for method, result in auth.items():
                label = AUTH_ABSENT if result is None else result.value
                self._c(AUTH_RESULTS, route, mailbox, method.value, label).inc()
        if found_by is not None:
            self._c(PROBES_FOUND, mailbox, found_by.value).inc()

    def _inbox_category(self, route: str, mailbox: str, category: InboxCategory | None) -> None:
        """Count the Gmail tab of an inbox probe. The pair's series are created with its first
        categorised probe, all five at once, not declared at start: a pair whose server has no
        X-GM-EXT-1 never gets any."""
        if category is None:
            return
        for tab in InboxCategory:
            self._c(INBOX_CATEGORIES, route, mailbox, tab.value)
        self._c(INBOX_CATEGORIES, route, mailbox, category.value).inc()

    def _spam(self, route: str, mailbox: str, verdicts: tuple[SpamVerdict, ...]) -> None:
        """Count each filter's verdict on a delivered probe and observe its score. The score
        histogram of a filter is created with its first score, not at declare(): a receiver runs
        one filter, and pre-creating all three would triple its series for nothing."""
        for verdict in verdicts:
            labels = (route, mailbox, verdict.source.value)
            self._c(SPAM_VERDICTS, *labels, verdict.category.value).inc()
            if verdict.score is not None:
                self._h(SPAM_SCORE, *labels).observe(verdict.score)

    def restore_last_outcomes(self, times: Mapping[tuple[str, str, Outcome], float]) -> None:
        """Set the last-outcome gauges from the ledger after a restart (`Ledger.last_finished_at`),
        so they do not read 0 ("never") and fire staleness alerts on every restart."""
        for (route, mailbox, outcome), at in times.items():
            self._g(LAST_OUTCOME_TIMESTAMP, route, mailbox, outcome.value).set(at)

    def _probe_late(self, route: str, mailbox: str) -> None:
        self._c(LATE_PROBES, route, mailbox).inc()

    def _set_in_flight(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Set the in-flight gauge of every pair from `Ledger.in_flight_counts`: declared pairs
        absent from `counts` read 0; undeclared pairs that drop out are removed."""
        declared = self._declared_pairs
        for pair in self._pairs:
            self._g(PROBES_IN_FLIGHT, *pair).set(counts.get(pair, 0))
        for pair, count in counts.items():
            if pair not in declared:
                self._g(PROBES_IN_FLIGHT, *pair).set(count)
        for values in sorted(self._children[PROBES_IN_FLIGHT.name]):
            if values not in declared and values not in counts:
                self._remove(PROBES_IN_FLIGHT, values)

    def _set_pair_in_flight(self, pair: tuple[str, str], count: int) -> None:
        """One pair's in-flight gauge; an undeclared pair (removed by a reload, probes still in
        flight) loses its series at 0."""
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

    # -- DNS checks -------------------------------------------------------------------------------

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
