"""The metric catalog: every metric's name, kind, help string and labels, in one place.

`CATALOG` is the single source of metric names: the recorder registers it, and dashboards, alert
rules and their tests read it. Also the registry helpers the HTTP server needs, so nothing outside
`agent.monitoring` imports prometheus_client.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from wsgiref.types import WSGIApplication

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    disable_created_metrics,
)

from agent.monitoring.exposition import FastExposition, fast_metrics_app

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
    "DMARC_MESSAGES",
    "DMARC_POLICY_INFO",
    "DMARC_SOURCE_MESSAGES",
    "DNSBL_LISTED",
    "DNS_CHECK_DURATION",
    "DNS_CHECK_ERRORS",
    "DNS_CHECK_OK",
    "ESP_COMPLAINTS",
    "ESP_DELIVERY_SECONDS",
    "ESP_EVENTS",
    "ESP_RECEIVER_SECONDS",
    "ESP_SPECS",
    "ESP_SUPPRESSED",
    "ESP_UNMATCHED",
    "EVENT_LOOP_LAG_BUCKETS",
    "EVENT_LOOP_LAG_SECONDS",
    "FOREIGN_PROBES",
    "FORGED_MESSAGES",
    "IMAP_CALIBRATED",
    "IMAP_ERRORS",
    "IMAP_NOTIFICATION_DELAY",
    "IMAP_UP",
    "INBOX_CATEGORIES",
    "LAST_OUTCOME_TIMESTAMP",
    "LATE_PROBES",
    "LEDGER_ERRORS",
    "LEDGER_WRITABLE",
    "MAILBOX_INFO",
    "MALFORMED_MESSAGES",
    "OAUTH_TOKEN_EXPIRY",
    "OAUTH_TOKEN_LAST_SUCCESS",
    "OAUTH_TOKEN_REFRESHES",
    "PAIR_DELIVERY_SECONDS",
    "POSTMASTER_AUTH_SUCCESS_RATIO",
    "POSTMASTER_COMPLIANT",
    "POSTMASTER_DATA_AVAILABLE",
    "POSTMASTER_DATA_DATE",
    "POSTMASTER_DELIVERY_ERROR_RATIO",
    "POSTMASTER_SPAM_RATIO",
    "POSTMASTER_TLS_INBOUND_RATIO",
    "PREFIX",
    "PROBES",
    "PROBES_FOUND",
    "PROBES_IN_FLIGHT",
    "PROBES_SENT",
    "REPORTS",
    "REPORT_NEWEST_END",
    "REPUTATION_FEED_ERRORS",
    "REPUTATION_FEED_LAST_SUCCESS",
    "ROUTE_INFO",
    "SCHEDULER_LAG_SECONDS",
    "SHARD_INFO",
    "SHARD_MAILBOX_OWNED",
    "SHARD_OWNED_MAILBOXES",
    "SMTP_ERRORS",
    "SMTP_REPLIES",
    "SMTP_TRANSACTION_SECONDS",
    "SNDS_BLOCKED",
    "SNDS_COMPLAINT_RATIO",
    "SNDS_FILTER_RESULT",
    "SNDS_MESSAGES",
    "SNDS_PERIOD_END",
    "SNDS_TRAP_HITS",
    "SPAM_SCORE",
    "SPAM_SCORE_BUCKETS",
    "SPAM_VERDICTS",
    "SPF_DNS_LOOKUPS",
    "TLSRPT_SESSIONS",
    "TLS_CERT_EXPIRY",
    "TLS_VERSION_INFO",
    "WEBHOOK_LAST_EVENT",
    "WEBHOOK_REFUSALS",
    "MetricKind",
    "MetricSpec",
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
    SUMMARY = "summary"  # count and sum only: a mean that costs two series per child


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

# Spam-filter scores, on each filter's own scale (rspamd and SpamAssassin points, Microsoft SCL).
# Six bounds where the filters' defaults decide: <=0 trusted; rspamd greylists at 4, adds a header
# at 6 and rejects at 15; SpamAssassin's required 5 falls in (4, 6]; Microsoft's SCL 5-6 (spam)
# in (4, 6] and 9 (high confidence) in (6, 10]. Few buckets: 9 series per mailbox and filter.
SPAM_SCORE_BUCKETS: tuple[float, ...] = (0, 2, 4, 6, 10, 15)

PROBES = MetricSpec(
    "deliverability_probes_total",
    MetricKind.COUNTER,
    "Probes by final outcome; each probe is counted once.",
    (*_PAIR, "outcome"),
)
PROBES_SENT = MetricSpec(
    "deliverability_probes_sent_total",
    MetricKind.COUNTER,
    "Probes whose SMTP transaction was attempted, per route.",
    ("route",),
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
# The series budget (docs/monitoring.md): the distribution is per seed mailbox, where delays are
# made (greylisting, throttling, the server's IDLE); each pair keeps a count and a sum (its mean).
DELIVERY_SECONDS = MetricSpec(
    "deliverability_delivery_seconds",
    MetricKind.HISTOGRAM,
    "Time from the server accepting a probe to the probe being seen in the seed mailbox, per "
    "seed mailbox (all routes); per route and mailbox: deliverability_pair_delivery_seconds.",
    ("mailbox",),
    DELIVERY_BUCKETS,
)
PAIR_DELIVERY_SECONDS = MetricSpec(
    "deliverability_pair_delivery_seconds",
    MetricKind.SUMMARY,
    "Time from the server accepting a probe to the probe being seen in the seed mailbox, per "
    "route and mailbox: count and sum only (the mean); the distribution is "
    "deliverability_delivery_seconds.",
    _PAIR,
)
LATE_PROBES = MetricSpec(
    "deliverability_late_probes_total",
    MetricKind.COUNTER,
    "Probes seen in the seed mailbox after they were already counted as missing; a pair's series "
    "appears with its first late probe.",
    _PAIR,
)
FORGED_MESSAGES = MetricSpec(
    "deliverability_forged_messages_total",
    MetricKind.COUNTER,
    "Messages that looked like probes but carried an invalid or unknown token, and bounces "
    "that named a probe without proving it (bounce mailboxes).",
    ("mailbox",),
)
FOREIGN_PROBES = MetricSpec(
    "deliverability_foreign_probes_total",
    MetricKind.COUNTER,
    "Signed probes and bounces found in a mailbox that this agent's ledger does not hold: "
    "another replica's (sharded agents share the secret) or pruned; left in the mailbox.",
    ("mailbox",),
)
AUTH_RESULTS = MetricSpec(
    "deliverability_auth_results_total",
    MetricKind.COUNTER,
    "Authentication-Results verdicts of delivered probes, by method and result; a series "
    "appears with the first verdict of its kind for the pair.",
    (*_PAIR, "method", "result"),
)
SPAM_VERDICTS = MetricSpec(
    "deliverability_spam_verdicts_total",
    MetricKind.COUNTER,
    "Spam-filter verdicts the receiving hop wrote into delivered probes, by filter (rspamd, "
    "spamassassin, microsoft) and category (ham, spam, bulk, phish, malware, spoof, "
    "impersonation, other, unknown); a series appears with the first verdict of its kind for "
    "the pair.",
    (*_PAIR, "source", "category"),
)
SPAM_SCORE = MetricSpec(
    "deliverability_spam_score",
    MetricKind.HISTOGRAM,
    "Spam-filter scores of delivered probes, on the filter's own scale (rspamd and SpamAssassin "
    "points, Microsoft SCL -1..9), per seed mailbox; a filter's series appear with its first "
    "score.",
    ("mailbox", "source"),
    SPAM_SCORE_BUCKETS,
)
LAST_OUTCOME_TIMESTAMP = MetricSpec(
    "deliverability_last_outcome_timestamp_seconds",
    MetricKind.GAUGE,
    "When a probe of the route and mailbox last reached its final outcome, whatever the outcome "
    "(Unix time; 0 if never).",
    _PAIR,
)
IMAP_UP = MetricSpec(
    "deliverability_imap_up",
    MetricKind.GAUGE,
    "Whether the watcher of the seed mailbox has a working IMAP connection (1) or not (0).",
    ("mailbox",),
)
# Per watched folder of a seed mailbox (two or three a mailbox), from its first calibration on.
IMAP_CALIBRATED = MetricSpec(
    "deliverability_imap_calibrated",
    MetricKind.GAUGE,
    "Whether the folder's IDLE notification delay is measured (1) and taken off the latency of "
    "probes found by a push, or cannot be (0: no IDLE, APPEND refused, no push): latency raw.",
    ("mailbox", "folder"),
)
IMAP_NOTIFICATION_DELAY = MetricSpec(
    "deliverability_imap_notification_delay_seconds",
    MetricKind.GAUGE,
    "The server's IDLE notification delay last measured for the folder: from the calibration "
    "marker's APPEND to the push; only while deliverability_imap_calibrated is 1.",
    ("mailbox", "folder"),
)
IMAP_ERRORS = MetricSpec(
    "deliverability_imap_errors_total",
    MetricKind.COUNTER,
    "Errors that cost a mailbox watcher its IMAP connection or an operation, by kind.",
    ("mailbox", "kind"),
)
PROBES_FOUND = MetricSpec(
    "deliverability_probes_found_total",
    MetricKind.COUNTER,
    "Probes found in the seed mailbox, by what made the watcher look: an IDLE push, the periodic "
    "check out of IDLE (no push came), a poll, or selecting the folder (at start or reconnect).",
    ("mailbox", "found_by"),
)
INBOX_CATEGORIES = MetricSpec(
    "deliverability_inbox_category_total",
    MetricKind.COUNTER,
    "Probes delivered to the inbox, by Gmail inbox tab (primary, promotions, social, updates, "
    "forums), per seed mailbox (all routes); only for mailboxes whose IMAP server advertises "
    "X-GM-EXT-1, from their first categorised probe on.",
    ("mailbox", "category"),
)
MALFORMED_MESSAGES = MetricSpec(
    "deliverability_malformed_messages_total",
    MetricKind.COUNTER,
    "Messages in a seed mailbox skipped because they could not be parsed safely.",
    ("mailbox",),
)
LEDGER_ERRORS = MetricSpec(
    "deliverability_ledger_errors_total",
    MetricKind.COUNTER,
    "Operations on the probe ledger that failed, by kind (disk_full, read_only, io, busy, "
    "corrupt, other).",
    ("kind",),
)
LEDGER_WRITABLE = MetricSpec(
    "deliverability_ledger_writable",
    MetricKind.GAUGE,
    "Whether the last write to the probe ledger succeeded (1) or failed (0); no probe is sent "
    "while it is 0.",
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
MAILBOX_INFO = MetricSpec(
    "deliverability_mailbox_info",
    MetricKind.GAUGE,
    "Always 1; labelled with the seed or bounce mailbox's provider profile (docs/providers.md). "
    "Join it to per-mailbox series: * on(mailbox) group_left(provider).",
    ("mailbox", "provider"),
)
ROUTE_INFO = MetricSpec(
    "deliverability_route_info",
    MetricKind.GAUGE,
    "Always 1; labelled with the provider profile of the route's submission server "
    "(docs/providers.md).",
    ("route", "provider"),
)
SHARD_INFO = MetricSpec(
    "deliverability_shard_info",
    MetricKind.GAUGE,
    "Always 1; labelled with this replica's shard index and the shard count it was given.",
    ("shard", "total"),
)
SHARD_OWNED_MAILBOXES = MetricSpec(
    "deliverability_shard_owned_mailboxes",
    MetricKind.GAUGE,
    "Seed mailboxes this replica owns (probes and watches); all of them when not sharded.",
)
SHARD_MAILBOX_OWNED = MetricSpec(
    "deliverability_shard_mailbox_owned",
    MetricKind.GAUGE,
    "1 for a configured seed mailbox this replica owns, 0 for one it does not; summed across "
    "replicas, every mailbox should be 1.",
    ("mailbox",),
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
    "Bounces of probes by type (hard 5.x.x, soft 4.x.x), source (SMTP reply or later DSN) and "
    "reason (recipient_invalid, policy, mailbox_full, other); bounce rate is this over "
    "deliverability_probes_sent_total.",
    ("route", "type", "source", "reason"),
)
TLS_VERSION_INFO = MetricSpec(
    "deliverability_tls_version_info",
    MetricKind.GAUGE,
    "Always 1; labelled with the TLS version last negotiated on the route.",
    ("route", "version"),
)
OAUTH_TOKEN_REFRESHES = MetricSpec(
    "deliverability_oauth_token_refreshes_total",
    MetricKind.COUNTER,
    "Access-token requests of an OAuth credential (token endpoint, token_command or token_file), "
    "by result: ok, invalid_grant, invalid_client, refused, endpoint, timeout, command, file.",
    ("credential", "result"),
)
OAUTH_TOKEN_LAST_SUCCESS = MetricSpec(
    "deliverability_oauth_token_last_success_timestamp_seconds",
    MetricKind.GAUGE,
    "When the credential last got an access token (Unix time; 0: not yet since the start).",
    ("credential",),
)
OAUTH_TOKEN_EXPIRY = MetricSpec(
    "deliverability_oauth_token_expiry_timestamp_seconds",
    MetricKind.GAUGE,
    "When the credential's current access token expires (Unix time; 0: not known).",
    ("credential",),
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

# From "on time" to "the scheduler is starved": a probe job waits for the event loop only.
SCHEDULER_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
SCHEDULER_LAG_SECONDS = MetricSpec(
    "deliverability_scheduler_lag_seconds",
    MetricKind.HISTOGRAM,
    "How late each scheduled probe started against its planned time (its pair's phase plus "
    "jitter): the agent's own delay, not the mail system's.",
    (),
    SCHEDULER_LAG_BUCKETS,
)

# DMARC aggregate and SMTP TLS reports read from report mailboxes (agent.reports). Reports each
# cover a period (usually a day) and arrive once: counters grow by a report's counts when it is
# counted, so increase() over a window longer than the reporting period gives volumes and shares;
# only the newest period's end is a gauge. Labels are bounded per report mailbox (the top
# sources, organisations and domains by volume, the rest `other`) and created when first seen.
REPORTS = MetricSpec(
    "deliverability_reports_total",
    MetricKind.COUNTER,
    "Reports read from a report mailbox by kind and result: counted, duplicate (the reporter's "
    "report id was counted before) or why one was skipped.",
    ("mailbox", "kind", "result"),
)
DMARC_MESSAGES = MetricSpec(
    "deliverability_dmarc_messages_total",
    MetricKind.COUNTER,
    "Messages in counted DMARC aggregate reports by reporting organisation, header-from domain, "
    "disposition and aligned DKIM and SPF result.",
    ("mailbox", "org", "header_from", "disposition", "dkim", "spf"),
)
DMARC_SOURCE_MESSAGES = MetricSpec(
    "deliverability_dmarc_source_messages_total",
    MetricKind.COUNTER,
    "Messages in counted DMARC aggregate reports by header-from domain, source IP (the report "
    "mailbox's top sources by volume, the rest other) and DMARC result.",
    ("mailbox", "header_from", "source_ip", "dmarc"),
)
TLSRPT_SESSIONS = MetricSpec(
    "deliverability_tlsrpt_sessions_total",
    MetricKind.COUNTER,
    "TLS sessions in counted SMTP TLS reports by reporting organisation, policy domain, policy "
    "type and result (success or the failure's result type).",
    ("mailbox", "org", "policy_domain", "policy_type", "result"),
)
REPORT_NEWEST_END = MetricSpec(
    "deliverability_report_newest_end_timestamp_seconds",
    MetricKind.GAUGE,
    "End of the period covered by the newest counted report of the kind, as a Unix time.",
    ("mailbox", "kind"),
)

# --- ESP event webhooks: per route with an `esp` section, never per pair --------------------------

ESP_EVENTS = MetricSpec(
    "deliverability_esp_events_total",
    MetricKind.COUNTER,
    "Verified events received on the route's ESP webhook, by type (delivered, bounce, "
    "soft_bounce, deferred, dropped, complaint, other); duplicates an ESP retries count again.",
    ("route", "type"),
)
ESP_UNMATCHED = MetricSpec(
    "deliverability_esp_unmatched_events_total",
    MetricKind.COUNTER,
    "Verified ESP events that named no probe of the route (other mail, pruned or expired probes).",
    ("route",),
)
WEBHOOK_REFUSALS = MetricSpec(
    "deliverability_webhook_refusals_total",
    MetricKind.COUNTER,
    "Posts refused by the route's ESP webhook, by reason (unsigned, bad_signature, replayed, "
    "too_large, malformed, certificate); a refused post never changes a probe.",
    ("route", "reason"),
)
WEBHOOK_LAST_EVENT = MetricSpec(
    "deliverability_webhook_last_event_timestamp_seconds",
    MetricKind.GAUGE,
    "When the route's ESP webhook last received a verified post (Unix time; 0: none since start).",
    ("route",),
)
ESP_SUPPRESSED = MetricSpec(
    "deliverability_esp_suppressed_total",
    MetricKind.COUNTER,
    "Probes the ESP dropped without sending them because the address is on its suppression "
    "list (each probe once; the probe ends rejected).",
    ("route",),
)
ESP_COMPLAINTS = MetricSpec(
    "deliverability_esp_complaints_total",
    MetricKind.COUNTER,
    "Complaints (marked as spam) about probes, as the ESP reported them (each probe once).",
    ("route",),
)
ESP_DELIVERY_SECONDS = MetricSpec(
    "deliverability_esp_delivery_seconds",
    MetricKind.HISTOGRAM,
    "Seconds from the ESP's 250 to end of data to the receiver's acceptance as the ESP reports "
    "it (its delivered event): the ESP's own stage of the delivery latency.",
    ("route",),
    DELIVERY_BUCKETS,
)

ESP_RECEIVER_SECONDS = MetricSpec(
    "deliverability_esp_receiver_seconds",
    MetricKind.HISTOGRAM,
    "Seconds from the ESP's delivered event to the probe being seen in its seed mailbox: the "
    "receiver's stage after the ESP handed it over (per route, all of its seed mailboxes).",
    ("route",),
    DELIVERY_BUCKETS,
)

# The series of a route with an ESP, removed when the route no longer has one.
ESP_SPECS: tuple[MetricSpec, ...] = (
    ESP_EVENTS,
    ESP_UNMATCHED,
    WEBHOOK_REFUSALS,
    WEBHOOK_LAST_EVENT,
    ESP_SUPPRESSED,
    ESP_COMPLAINTS,
    ESP_DELIVERY_SECONDS,
    ESP_RECEIVER_SECONDS,
)

# A loop that keeps up wakes within milliseconds; 0.1 s is where the page and probes
# start to suffer, and seconds mean a handler holds the loop (probing and /healthz stall).
EVENT_LOOP_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
EVENT_LOOP_LAG_SECONDS = MetricSpec(
    "deliverability_event_loop_lag_seconds",
    MetricKind.HISTOGRAM,
    "How late the agent's event loop ran a heartbeat due every 0.5 s: the longest any probe, "
    "watcher or page waited for the loop at that moment.",
    (),
    EVENT_LOOP_LAG_BUCKETS,
)

# Gmail Postmaster Tools and Microsoft SNDS (agent.reputation): the receivers' own daily view of
# the sender, fetched every few hours. Per configured domain and per SNDS IP (configured, or the
# first max_ips with the rest summed as `other`), none per pair; rates created when the feed has
# data and removed when it has none ("no data" is never a zero).
POSTMASTER_DATA_AVAILABLE = MetricSpec(
    "deliverability_postmaster_data_available",
    MetricKind.GAUGE,
    "Whether Postmaster Tools had a day of statistics for the domain in its lookback window (1) "
    "or none (0: too little Gmail traffic, or not yet published); the rate series exist only "
    "while this is 1.",
    ("domain",),
)
POSTMASTER_DATA_DATE = MetricSpec(
    "deliverability_postmaster_data_date_timestamp_seconds",
    MetricKind.GAUGE,
    "The day (00:00 UTC, Unix time) of the newest Postmaster Tools statistics of the domain.",
    ("domain",),
)
POSTMASTER_SPAM_RATIO = MetricSpec(
    "deliverability_postmaster_spam_ratio",
    MetricKind.GAUGE,
    "User-reported spam rate of the domain's mail to Gmail on its newest day (0-1).",
    ("domain",),
)
POSTMASTER_AUTH_SUCCESS_RATIO = MetricSpec(
    "deliverability_postmaster_auth_success_ratio",
    MetricKind.GAUGE,
    "Share of the domain's mail that passed SPF, DKIM or DMARC at Gmail on its newest day (0-1).",
    ("domain", "method"),
)
POSTMASTER_TLS_INBOUND_RATIO = MetricSpec(
    "deliverability_postmaster_tls_inbound_ratio",
    MetricKind.GAUGE,
    "Share of the domain's mail that reached Gmail over TLS on its newest day (0-1).",
    ("domain",),
)
POSTMASTER_DELIVERY_ERROR_RATIO = MetricSpec(
    "deliverability_postmaster_delivery_error_ratio",
    MetricKind.GAUGE,
    "Share of the domain's mail Gmail rejected (type reject) or deferred (temp_fail), by "
    "Google's reason, on its newest day (0-1).",
    ("domain", "type", "reason"),
)
POSTMASTER_COMPLIANT = MetricSpec(
    "deliverability_postmaster_compliant",
    MetricKind.GAUGE,
    "Gmail's bulk-sender compliance status of the domain per requirement: 1 compliant, "
    "0 needs work.",
    ("domain", "requirement"),
)
SNDS_FILTER_RESULT = MetricSpec(
    "deliverability_snds_filter_result",
    MetricKind.GAUGE,
    "1 for the SNDS filter result (green, yellow, red) of the IP's newest activity period, "
    "0 for the others.",
    ("ip", "result"),
)
SNDS_COMPLAINT_RATIO = MetricSpec(
    "deliverability_snds_complaint_ratio",
    MetricKind.GAUGE,
    "SNDS complaint rate of the IP's newest activity period (0-1; SNDS' \"< 0.1%\" is 0.001).",
    ("ip",),
)
SNDS_TRAP_HITS = MetricSpec(
    "deliverability_snds_trap_hits",
    MetricKind.GAUGE,
    "Spam-trap hits of the IP in its newest SNDS activity period.",
    ("ip",),
)
SNDS_MESSAGES = MetricSpec(
    "deliverability_snds_messages",
    MetricKind.GAUGE,
    "RCPT commands, DATA commands and message recipients of the IP in its newest SNDS activity "
    "period (kind rcpt, data, recipients).",
    ("ip", "kind"),
)
SNDS_BLOCKED = MetricSpec(
    "deliverability_snds_blocked",
    MetricKind.GAUGE,
    "Whether SNDS lists the IP in a blocked range (1) or not (0).",
    ("ip",),
)
SNDS_PERIOD_END = MetricSpec(
    "deliverability_snds_period_end_timestamp_seconds",
    MetricKind.GAUGE,
    "End of the IP's newest SNDS activity period (Unix time).",
    ("ip",),
)
REPUTATION_FEED_ERRORS = MetricSpec(
    "deliverability_reputation_feed_errors_total",
    MetricKind.COUNTER,
    "Failed fetches of a reputation feed (postmaster, snds) by kind (auth, permission_denied, "
    "quota, malformed, endpoint, timeout); malformed also counts each entry or row skipped.",
    ("feed", "kind"),
)
REPUTATION_FEED_LAST_SUCCESS = MetricSpec(
    "deliverability_reputation_feed_last_success_timestamp_seconds",
    MetricKind.GAUGE,
    "When the reputation feed was last fetched and read (Unix time; absent until the first).",
    ("feed",),
)

CATALOG: tuple[MetricSpec, ...] = (
    PROBES,
    PROBES_SENT,
    PROBES_IN_FLIGHT,
    SMTP_REPLIES,
    SMTP_ERRORS,
    SMTP_TRANSACTION_SECONDS,
    DELIVERY_SECONDS,
    PAIR_DELIVERY_SECONDS,
    LATE_PROBES,
    FORGED_MESSAGES,
    AUTH_RESULTS,
    SPAM_VERDICTS,
    SPAM_SCORE,
    LAST_OUTCOME_TIMESTAMP,
    IMAP_UP,
    IMAP_CALIBRATED,
    IMAP_NOTIFICATION_DELAY,
    IMAP_ERRORS,
    PROBES_FOUND,
    INBOX_CATEGORIES,
    MALFORMED_MESSAGES,
    LEDGER_ERRORS,
    LEDGER_WRITABLE,
    SCHEDULER_LAG_SECONDS,
    EVENT_LOOP_LAG_SECONDS,
    CONFIG_LAST_RELOAD_SUCCESSFUL,
    CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP,
    BUILD_INFO,
    MAILBOX_INFO,
    ROUTE_INFO,
    SHARD_INFO,
    SHARD_OWNED_MAILBOXES,
    SHARD_MAILBOX_OWNED,
    FOREIGN_PROBES,
    TLS_CERT_EXPIRY,
    TLS_VERSION_INFO,
    BOUNCES,
    OAUTH_TOKEN_REFRESHES,
    OAUTH_TOKEN_LAST_SUCCESS,
    OAUTH_TOKEN_EXPIRY,
    DNS_CHECK_OK,
    DNS_CHECK_ERRORS,
    DNS_CHECK_DURATION,
    DNSBL_LISTED,
    SPF_DNS_LOOKUPS,
    DKIM_KEY_BITS,
    DMARC_POLICY_INFO,
    REPORTS,
    DMARC_MESSAGES,
    DMARC_SOURCE_MESSAGES,
    TLSRPT_SESSIONS,
    REPORT_NEWEST_END,
    *ESP_SPECS,
    POSTMASTER_DATA_AVAILABLE,
    POSTMASTER_DATA_DATE,
    POSTMASTER_SPAM_RATIO,
    POSTMASTER_AUTH_SUCCESS_RATIO,
    POSTMASTER_TLS_INBOUND_RATIO,
    POSTMASTER_DELIVERY_ERROR_RATIO,
    POSTMASTER_COMPLIANT,
    SNDS_FILTER_RESULT,
    SNDS_COMPLAINT_RATIO,
    SNDS_TRAP_HITS,
    SNDS_MESSAGES,
    SNDS_BLOCKED,
    SNDS_PERIOD_END,
    REPUTATION_FEED_ERRORS,
    REPUTATION_FEED_LAST_SUCCESS,
)


def new_registry() -> CollectorRegistry:
    """A registry for one Recorder, so callers need not import prometheus_client."""
    return CollectorRegistry(auto_describe=True)


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (serve it with `CONTENT_TYPE`), as
    prometheus_client's `generate_latest` writes it (agent.monitoring.exposition)."""
    return FastExposition(registry).text()


def metrics_app(registry: CollectorRegistry) -> WSGIApplication:
    """A WSGI app serving `registry`, with prometheus_client's content negotiation and gzip; the
    text and OpenMetrics formats rendered by agent.monitoring.exposition."""
    return fast_metrics_app(registry)
