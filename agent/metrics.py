"""The metric catalog and the recorder that turns probe results into Prometheus series.

This is the only module that imports prometheus_client. `CATALOG` is the single source of metric
names, kinds, help strings and labels: dashboards, alert rules and their tests read it. The
`Recorder` registers the catalog on an injected `CollectorRegistry` and takes our result types, so
senders and watchers never see a metric.

Bounded labels only: stage, outcome, class, kind, method and result come from the `agent.model`
enums and are pre-created at zero by `Recorder.declare` for every configured route/mailbox pair, so
series never blink in and out. `code` and `enhanced_code` are created when seen (SMTP bounds them).
Nothing is ever labelled by probe id, message id, recipient or subject.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from wsgiref.types import WSGIApplication

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    make_wsgi_app,
)

from agent import __version__
from agent.dns_records import DnsCheck, DnsReport
from agent.model import (
    AuthMethod,
    AuthResult,
    AuthVerdicts,
    BounceSource,
    BounceType,
    ErrorKind,
    ImapErrorKind,
    Outcome,
    SendResult,
    Stage,
)

__all__ = [
    "AUTH_RESULTS",
    "BOUNCES",
    "BUILD_INFO",
    "CATALOG",
    "CONFIG_LAST_RELOAD_SUCCESSFUL",
    "CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP",
    "CONTENT_TYPE",
    "DELIVERY_SECONDS",
    "DKIM_KEY_BITS",
    "DMARC_POLICY_INFO",
    "DNSBL_LISTED",
    "DNS_CHECK_DURATION",
    "DNS_CHECK_ERRORS",
    "DNS_CHECK_OK",
    "FORGED_MESSAGES",
    "IMAP_ERRORS",
    "IMAP_UP",
    "LAST_OUTCOME_TIMESTAMP",
    "LATE_PROBES",
    "MALFORMED_MESSAGES",
    "PREFIX",
    "PROBES",
    "PROBES_IN_FLIGHT",
    "PROBES_SENT",
    "SMTP_ERRORS",
    "SMTP_REPLIES",
    "SMTP_TRANSACTION_SECONDS",
    "SPF_DNS_LOOKUPS",
    "TLS_CERT_EXPIRY",
    "TLS_VERSION_INFO",
    "MetricKind",
    "MetricSpec",
    "Recorder",
    "exposition",
    "metrics_app",
    "new_registry",
]

# `_created` series add one wall-clock sample per child that no dashboard or alert here uses, and
# they make the exposition depend on when a child was created. This is process-wide, which is fine:
# this module owns every series of the agent.
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "deliverability_"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class MetricKind(enum.StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric of the catalog: its exposed name (with `_total` for counters), kind and labels."""

    name: str
    kind: MetricKind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.name.startswith(PREFIX):
            raise ValueError(f"{self.name}: metric names start with {PREFIX!r}")
        if (self.kind is MetricKind.COUNTER) != self.name.endswith("_total"):
            raise ValueError(f"{self.name}: counters, and only counters, end in _total")
        if (self.kind is MetricKind.HISTOGRAM) != (self.buckets is not None):
            raise ValueError(f"{self.name}: histograms, and only histograms, have buckets")


_PAIR = ("route", "mailbox")

# Delivery takes minutes at worst before a probe counts as missing: 1 s to 1 h.
DELIVERY_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
# One SMTP transaction: healthy ones take well under a second; greylisting or tarpits, far more.
SMTP_TRANSACTION_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

PROBES = MetricSpec(
    "deliverability_probes_total",
    MetricKind.COUNTER,
    "Probes by final outcome; each probe is counted once.",
    (*_PAIR, "outcome"),
)
PROBES_SENT = MetricSpec(
    "deliverability_probes_sent_total",
    MetricKind.COUNTER,
    "Probes whose SMTP transaction was attempted.",
    _PAIR,
)
PROBES_IN_FLIGHT = MetricSpec(
    "deliverability_probes_in_flight",
    MetricKind.GAUGE,
    "Probes recorded in the ledger without a final outcome yet.",
    _PAIR,
)
SMTP_REPLIES = MetricSpec(
    "deliverability_smtp_replies_total",
    MetricKind.COUNTER,
    "SMTP replies seen, by stage, reply code, enhanced status code and reply class.",
    ("route", "stage", "code", "enhanced_code", "class"),
)
SMTP_ERRORS = MetricSpec(
    "deliverability_smtp_errors_total",
    MetricKind.COUNTER,
    "SMTP transactions that ended without a server verdict, by stage and kind.",
    ("route", "stage", "kind"),
)
SMTP_TRANSACTION_SECONDS = MetricSpec(
    "deliverability_smtp_transaction_seconds",
    MetricKind.HISTOGRAM,
    "Duration of the whole SMTP transaction of a probe.",
    ("route",),
    SMTP_TRANSACTION_BUCKETS,
)
DELIVERY_SECONDS = MetricSpec(
    "deliverability_delivery_seconds",
    MetricKind.HISTOGRAM,
    "Time from the server accepting a probe to the probe being seen in the seed mailbox.",
    _PAIR,
    DELIVERY_BUCKETS,
)
LATE_PROBES = MetricSpec(
    "deliverability_late_probes_total",
    MetricKind.COUNTER,
    "Probes seen in the seed mailbox after they were already counted as missing.",
    _PAIR,
)
FORGED_MESSAGES = MetricSpec(
    "deliverability_forged_messages_total",
    MetricKind.COUNTER,
    "Messages that looked like probes but carried an invalid or unknown token.",
    ("mailbox",),
)
AUTH_RESULTS = MetricSpec(
    "deliverability_auth_results_total",
    MetricKind.COUNTER,
    "Authentication-Results verdicts of delivered probes, by method and result.",
    (*_PAIR, "method", "result"),
)
LAST_OUTCOME_TIMESTAMP = MetricSpec(
    "deliverability_last_outcome_timestamp_seconds",
    MetricKind.GAUGE,
    "When a probe last finished with this outcome (Unix time; 0 if never).",
    (*_PAIR, "outcome"),
)
IMAP_UP = MetricSpec(
    "deliverability_imap_up",
    MetricKind.GAUGE,
    "Whether the watcher of the seed mailbox has a working IMAP connection (1) or not (0).",
    ("mailbox",),
)
IMAP_ERRORS = MetricSpec(
    "deliverability_imap_errors_total",
    MetricKind.COUNTER,
    "Errors that cost a mailbox watcher its IMAP connection or an operation, by kind.",
    ("mailbox", "kind"),
)
MALFORMED_MESSAGES = MetricSpec(
    "deliverability_malformed_messages_total",
    MetricKind.COUNTER,
    "Messages in a seed mailbox skipped because they could not be parsed safely.",
    ("mailbox",),
)
CONFIG_LAST_RELOAD_SUCCESSFUL = MetricSpec(
    "deliverability_config_last_reload_successful",
    MetricKind.GAUGE,
    "Whether the last configuration load or reload succeeded (1) or not (0).",
)
CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP = MetricSpec(
    "deliverability_config_last_reload_success_timestamp_seconds",
    MetricKind.GAUGE,
    "When the configuration was last loaded successfully (Unix time).",
)
BUILD_INFO = MetricSpec(
    "deliverability_build_info",
    MetricKind.GAUGE,
    "Always 1; labelled with the agent's version.",
    ("version",),
)
TLS_CERT_EXPIRY = MetricSpec(
    "deliverability_tls_cert_expiry_timestamp_seconds",
    MetricKind.GAUGE,
    "Expiry of the certificate the route's SMTP server last presented (Unix time).",
    ("route",),
)
BOUNCES = MetricSpec(
    "deliverability_bounces_total",
    MetricKind.COUNTER,
    "Bounces of probes by type (hard 5.x.x, soft 4.x.x) and source (SMTP reply or later DSN); "
    "bounce rate is this over deliverability_probes_sent_total.",
    ("route", "type", "source"),
)
TLS_VERSION_INFO = MetricSpec(
    "deliverability_tls_version_info",
    MetricKind.GAUGE,
    "Always 1; labelled with the TLS version last negotiated on the route.",
    ("route", "version"),
)
DNS_CHECK_OK = MetricSpec(
    "deliverability_dns_check_ok",
    MetricKind.GAUGE,
    "Whether the last decided DNS check of the target (a domain, or an IP for rdns and fcrdns) "
    "passed (1) or found a problem (0).",
    ("target", "check"),
)
DNS_CHECK_ERRORS = MetricSpec(
    "deliverability_dns_check_errors_total",
    MetricKind.COUNTER,
    "DNS checks left undecided because their lookups failed or timed out, and blocklist lookups "
    "answered with an error code (check dnsbl).",
    ("check",),
)
DNS_CHECK_DURATION = MetricSpec(
    "deliverability_dns_check_duration_seconds",
    MetricKind.GAUGE,
    "Duration of the last run of every DNS check.",
)
DNSBL_LISTED = MetricSpec(
    "deliverability_dnsbl_listed",
    MetricKind.GAUGE,
    "Whether the sending IP or domain is listed on the DNS blocklist zone (1) or not (0).",
    ("target", "zone"),
)
SPF_DNS_LOOKUPS = MetricSpec(
    "deliverability_spf_dns_lookups",
    MetricKind.GAUGE,
    "DNS lookups an SPF evaluation of the domain may need over its include tree (limit 10).",
    ("domain",),
)
DKIM_KEY_BITS = MetricSpec(
    "deliverability_dkim_key_bits",
    MetricKind.GAUGE,
    "Size of the DKIM public key published at a configured selector, by key type.",
    ("domain", "selector", "type"),
)
DMARC_POLICY_INFO = MetricSpec(
    "deliverability_dmarc_policy_info",
    MetricKind.GAUGE,
    "Always 1; labelled with the DMARC policy applying to the domain, the subdomain policy and "
    "the DKIM and SPF alignment modes.",
    ("domain", "policy", "subdomain_policy", "adkim", "aspf"),
)

CATALOG: tuple[MetricSpec, ...] = (
    PROBES,
    PROBES_SENT,
    PROBES_IN_FLIGHT,
    SMTP_REPLIES,
    SMTP_ERRORS,
    SMTP_TRANSACTION_SECONDS,
    DELIVERY_SECONDS,
    LATE_PROBES,
    FORGED_MESSAGES,
    AUTH_RESULTS,
    LAST_OUTCOME_TIMESTAMP,
    IMAP_UP,
    IMAP_ERRORS,
    MALFORMED_MESSAGES,
    CONFIG_LAST_RELOAD_SUCCESSFUL,
    CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP,
    BUILD_INFO,
    TLS_CERT_EXPIRY,
    TLS_VERSION_INFO,
    BOUNCES,
    DNS_CHECK_OK,
    DNS_CHECK_ERRORS,
    DNS_CHECK_DURATION,
    DNSBL_LISTED,
    SPF_DNS_LOOKUPS,
    DKIM_KEY_BITS,
    DMARC_POLICY_INFO,
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


def new_registry() -> CollectorRegistry:
    """A registry for one Recorder, so callers need not import prometheus_client."""
    return CollectorRegistry(auto_describe=True)


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (serve it with `CONTENT_TYPE`)."""
    return generate_latest(registry)


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
        self._tls_versions: dict[str, str] = {}
        self._g(BUILD_INFO, version).set(1)

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
                    self._c(BOUNCES, route, bounce_type.value, source.value)
        for route, mailbox in ordered:
            for outcome in Outcome:
                self._c(PROBES, route, mailbox, outcome.value)
            self._c(PROBES_SENT, route, mailbox)
            self._g(PROBES_IN_FLIGHT, route, mailbox)
            self._h(DELIVERY_SECONDS, route, mailbox)
            self._c(LATE_PROBES, route, mailbox)
            for method in AuthMethod:
                for result in AuthResult:
                    self._c(AUTH_RESULTS, route, mailbox, method.value, result.value)
            for outcome in Outcome:
                self._g(LAST_OUTCOME_TIMESTAMP, route, mailbox, outcome.value)
        for mailbox in mailboxes:
            self._c(FORGED_MESSAGES, mailbox)
            self._g(IMAP_UP, mailbox)
            for imap_kind in ImapErrorKind:
                self._c(IMAP_ERRORS, mailbox, imap_kind.value)
            self._c(MALFORMED_MESSAGES, mailbox)
        self._pairs = ordered

    def bounce(self, route: str, bounce_type: BounceType, source: BounceSource) -> None:
        """One bounce of one probe (the caller makes sure each is counted once)."""
        self._c(BOUNCES, route, bounce_type.value, source.value).inc()

    def config_reloaded(self, ok: bool, at: float) -> None:
        """A configuration load or reload finished; `at` is its wall-clock time."""
        self._g(CONFIG_LAST_RELOAD_SUCCESSFUL).set(1 if ok else 0)
        if ok:
            self._g(CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP).set(at)

    # -- probes -----------------------------------------------------------------------------------

    def probe_sent(self, route: str, mailbox: str) -> None:
        self._c(PROBES_SENT, route, mailbox).inc()

    def smtp_result(self, route: str, result: SendResult) -> None:
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

    def probe_final(
        self,
        route: str,
        mailbox: str,
        outcome: Outcome,
        *,
        finished_at: float,
        latency_seconds: float | None,
        auth: AuthVerdicts | None,
    ) -> None:
        """Count the probe's one final outcome (call only when `Ledger.finalize` returned True).
        Auth methods the receiver did not report (None) are not counted."""
        self._c(PROBES, route, mailbox, outcome.value).inc()
        self._g(LAST_OUTCOME_TIMESTAMP, route, mailbox, outcome.value).set(finished_at)
        if latency_seconds is not None:
            # Sender and watcher share one clock; a negative value can only be a clock step.
            self._h(DELIVERY_SECONDS, route, mailbox).observe(max(latency_seconds, 0.0))
        if auth is not None:
            for method, result in auth.items():
                if result is not None:
                    self._c(AUTH_RESULTS, route, mailbox, method.value, result.value).inc()

    def restore_last_outcomes(self, times: Mapping[tuple[str, str, Outcome], float]) -> None:
        """Set the last-outcome gauges from the ledger after a restart (`Ledger.last_finished_at`),
        so they do not read 0 ("never") and fire staleness alerts on every restart."""
        for (route, mailbox, outcome), at in times.items():
            self._g(LAST_OUTCOME_TIMESTAMP, route, mailbox, outcome.value).set(at)

    def probe_late(self, route: str, mailbox: str) -> None:
        self._c(LATE_PROBES, route, mailbox).inc()

    def set_in_flight(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Set the in-flight gauge of every pair from `Ledger.in_flight_counts`: declared pairs
        absent from `counts` read 0; undeclared pairs that drop out are removed."""
        declared = set(self._pairs)
        for pair in self._pairs:
            self._g(PROBES_IN_FLIGHT, *pair).set(counts.get(pair, 0))
        for pair, count in counts.items():
            if pair not in declared:
                self._g(PROBES_IN_FLIGHT, *pair).set(count)
        for values in sorted(self._children[PROBES_IN_FLIGHT.name]):
            if values not in declared and values not in counts:
                self._remove(PROBES_IN_FLIGHT, values)

    # -- mailboxes --------------------------------------------------------------------------------

    def imap_state(self, mailbox: str, up: bool) -> None:
        self._g(IMAP_UP, mailbox).set(1 if up else 0)

    def imap_error(self, mailbox: str, kind: ImapErrorKind) -> None:
        self._c(IMAP_ERRORS, mailbox, kind.value).inc()

    def forged_message(self, mailbox: str) -> None:
        self._c(FORGED_MESSAGES, mailbox).inc()

    def malformed_message(self, mailbox: str) -> None:
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

    def dns_report(self, report: DnsReport) -> None:
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


def metrics_app(registry: CollectorRegistry) -> WSGIApplication:
    """A WSGI app serving `registry`, with prometheus_client's content negotiation and gzip."""
    app: WSGIApplication = make_wsgi_app(registry)
    return app
