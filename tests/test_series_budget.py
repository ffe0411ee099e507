"""The series budget (issue 15): what /metrics costs per route, per mailbox and per pair.

A generated config (5 routes x 7 seed mailboxes and a bounce mailbox) goes through the recorder
with a realistic set of results: every outcome, auth verdicts (mostly pass, some fail, ARC not
reported), spam verdicts of rspamd and Microsoft receivers, Gmail tabs, bounces, late probes,
SMTP replies of every class, watcher and ledger events. Every metric family's series count is
held to its cost in `BUDGET` (the formula in docs/monitoring.md), so a regression names the
family, and the series per pair stay within 20.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from agent.model import (
    AUTH_ABSENT,
    Arrival,
    AuthResult,
    AuthVerdicts,
    BounceCounted,
    BounceReason,
    BounceSource,
    BounceType,
    ConfigLoaded,
    ErrorKind,
    FoundBy,
    ImapCalibration,
    ImapHealth,
    InboxCategory,
    InFlight,
    LedgerErrorKind,
    LedgerHealth,
    MessageSkipped,
    Outcome,
    PairInFlight,
    ProbeError,
    ProbeFinished,
    ProbeLate,
    ProbeSent,
    ProbeStarted,
    SendResult,
    ShardOwnership,
    SkipReason,
    SmtpReply,
    SmtpTransaction,
    SpamCategory,
    SpamSource,
    SpamVerdict,
    Stage,
)
from agent.monitoring.catalog import CATALOG, exposition, new_registry
from agent.monitoring.recorder import Recorder

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0
ROUTES = tuple(f"route-{index}" for index in range(5))
MAILBOXES = tuple(f"seed-{index}" for index in range(7))
BOUNCE_MAILBOX = "bounces"
PAIRS = tuple((route, mailbox) for route in ROUTES for mailbox in MAILBOXES)
MAX_SERIES_PER_PAIR = 20


@dataclass(frozen=True, slots=True)
class Cost:
    """Series a family pre-creates per configured route, seed mailbox, bounce mailbox, pair, and
    once; families that create series when first seen say so (counted from what was seen)."""

    route: int = 0
    mailbox: int = 0
    bounce_mailbox: int = 0
    pair: int = 0
    fixed: int = 0
    when_seen: bool = False

    def precreated(self, routes: int, mailboxes: int, bounce_mailboxes: int, pairs: int) -> int:
        return (
            self.route * routes
            + self.mailbox * mailboxes
            + self.bounce_mailbox * bounce_mailboxes
            + self.pair * pairs
            + self.fixed
        )


_IMAP_PER_MAILBOX = 1 + len(ErrorKind) + 1 + 1  # up, errors by kind, forged, malformed
# Histograms: one series per bucket, +Inf, _sum and _count.
BUDGET: dict[str, Cost] = {
    # per pair: what alerts take rate() ratios or staleness of
    "deliverability_probes_total": Cost(pair=len(Outcome)),
    "deliverability_probes_in_flight": Cost(pair=1),
    "deliverability_pair_delivery_seconds": Cost(pair=2),
    "deliverability_last_outcome_timestamp_seconds": Cost(pair=1),
    # per pair, when first seen
    "deliverability_auth_results_total": Cost(when_seen=True),
    "deliverability_spam_verdicts_total": Cost(when_seen=True),
    "deliverability_late_probes_total": Cost(when_seen=True),
    # per route
    "deliverability_probes_sent_total": Cost(route=1),
    "deliverability_route_info": Cost(route=1),
    "deliverability_smtp_errors_total": Cost(route=len(Stage) * len(ErrorKind)),
    "deliverability_smtp_transaction_seconds": Cost(route=10 + 3),
    # Sources smtp and dsn, every reason but `suppressed`: source `esp` and reason `suppressed`
    # are pre-created only on routes with an ESP webhook (none here).
    "deliverability_bounces_total": Cost(
        route=len(BounceType) * (len(BounceSource) - 1) * (len(BounceReason) - 1)
    ),
    "deliverability_smtp_replies_total": Cost(when_seen=True),
    "deliverability_tls_version_info": Cost(when_seen=True),
    "deliverability_tls_cert_expiry_timestamp_seconds": Cost(when_seen=True),
    # per seed mailbox (and bounce mailbox)
    "deliverability_delivery_seconds": Cost(mailbox=13 + 3),
    "deliverability_probes_found_total": Cost(mailbox=len(FoundBy)),
    "deliverability_imap_up": Cost(mailbox=1, bounce_mailbox=1),
    "deliverability_mailbox_info": Cost(mailbox=1, bounce_mailbox=1),
    "deliverability_imap_errors_total": Cost(mailbox=len(ErrorKind), bounce_mailbox=len(ErrorKind)),
    "deliverability_forged_messages_total": Cost(mailbox=1, bounce_mailbox=1),
    "deliverability_malformed_messages_total": Cost(mailbox=1, bounce_mailbox=1),
    "deliverability_spam_score": Cost(when_seen=True),
    "deliverability_inbox_category_total": Cost(when_seen=True),
    # per watched folder of a seed mailbox, from its first calibration on
    "deliverability_imap_calibrated": Cost(when_seen=True),
    "deliverability_imap_notification_delay_seconds": Cost(when_seen=True),
    # once
    "deliverability_ledger_errors_total": Cost(fixed=len(LedgerErrorKind)),
    "deliverability_ledger_writable": Cost(fixed=1),
    "deliverability_scheduler_lag_seconds": Cost(fixed=7 + 3),
    "deliverability_event_loop_lag_seconds": Cost(fixed=9 + 3),
    "deliverability_config_last_reload_successful": Cost(fixed=1),
    "deliverability_config_last_reload_success_timestamp_seconds": Cost(fixed=1),
    "deliverability_build_info": Cost(fixed=1),
    "deliverability_dns_check_duration_seconds": Cost(fixed=1),
    # per configured DNS check, blocklist lookup and domain: none configured here
    "deliverability_dns_check_ok": Cost(),
    "deliverability_dns_check_errors_total": Cost(),
    "deliverability_dnsbl_listed": Cost(),
    "deliverability_spf_dns_lookups": Cost(),
    "deliverability_dkim_key_bits": Cost(),
    "deliverability_dmarc_policy_info": Cost(),
    # per OAuth credential: none configured here (a few series per credential, none per pair)
    "deliverability_oauth_token_refreshes_total": Cost(),
    "deliverability_oauth_token_last_success_timestamp_seconds": Cost(),
    "deliverability_oauth_token_expiry_timestamp_seconds": Cost(),
    # per route with an ESP webhook (`routes[].esp`): none configured here
    "deliverability_esp_events_total": Cost(),
    "deliverability_esp_unmatched_events_total": Cost(),
    "deliverability_webhook_refusals_total": Cost(),
    "deliverability_webhook_last_event_timestamp_seconds": Cost(),
    "deliverability_esp_suppressed_total": Cost(),
    "deliverability_esp_complaints_total": Cost(),
    "deliverability_esp_delivery_seconds": Cost(),
    "deliverability_esp_receiver_seconds": Cost(),
    # sharding: this replica's shard and, per configured seed mailbox, whether it owns it
    "deliverability_shard_info": Cost(fixed=1),
    "deliverability_shard_owned_mailboxes": Cost(fixed=1),
    "deliverability_shard_mailbox_owned": Cost(mailbox=1),
    "deliverability_foreign_probes_total": Cost(when_seen=True),
    # per report mailbox (reports by kind and result, the newest report's end), and per reporting
    # org / domain / top-N source seen in reports: none configured here, bounded by the reader
    "deliverability_reports_total": Cost(),
    "deliverability_report_newest_end_timestamp_seconds": Cost(),
    "deliverability_dmarc_messages_total": Cost(),
    "deliverability_dmarc_source_messages_total": Cost(),
    "deliverability_tlsrpt_sessions_total": Cost(),
    # per configured Postmaster Tools domain (data available, then per day: date, spam, 3 auth,
    # TLS, up to 10 error reasons; up to 11 compliance rows), per SNDS IP (configured or capped,
    # the rest one "other": 3 filter results, 3 counts, complaints, traps, period end, blocked)
    # and per feed (6 error kinds, last success): none configured here, none per pair
    "deliverability_postmaster_data_available": Cost(),
    "deliverability_postmaster_data_date_timestamp_seconds": Cost(),
    "deliverability_postmaster_spam_ratio": Cost(),
    "deliverability_postmaster_auth_success_ratio": Cost(),
    "deliverability_postmaster_tls_inbound_ratio": Cost(),
    "deliverability_postmaster_delivery_error_ratio": Cost(),
    "deliverability_postmaster_compliant": Cost(),
    "deliverability_snds_filter_result": Cost(),
    "deliverability_snds_complaint_ratio": Cost(),
    "deliverability_snds_trap_hits": Cost(),
    "deliverability_snds_messages": Cost(),
    "deliverability_snds_blocked": Cost(),
    "deliverability_snds_period_end_timestamp_seconds": Cost(),
    "deliverability_reputation_feed_errors_total": Cost(),
    "deliverability_reputation_feed_last_success_timestamp_seconds": Cost(),
}


def _totals() -> Cost:
    return Cost(
        route=sum(cost.route for cost in BUDGET.values()),
        mailbox=sum(cost.mailbox for cost in BUDGET.values()),
        bounce_mailbox=sum(cost.bounce_mailbox for cost in BUDGET.values()),
        pair=sum(cost.pair for cost in BUDGET.values()),
        fixed=sum(cost.fixed for cost in BUDGET.values()),
    )


def formula() -> str:
    """The pre-created series as docs/monitoring.md writes them."""
    total = _totals()
    return (
        f"{total.route} x routes + {total.mailbox} x seed mailboxes + "
        f"{total.bounce_mailbox} x bounce mailboxes + {total.pair} x pairs + {total.fixed}"
    )


def series_by_family(registry: CollectorRegistry) -> Counter[str]:
    """Series on /metrics per catalog name (the exposition is made of these samples)."""
    counted: Counter[str] = Counter()
    for family in registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        if family.samples:
            counted[name] += len(family.samples)
    return counted


# --- a realistic day, compressed -----------------------------------------------------------------


@dataclass
class Seen:
    """What the scenario fed that creates series when first seen, as the recorder's contract
    says: one series per distinct label set (Gmail tabs and spam score histograms in blocks)."""

    auth: set[tuple[str, ...]] = field(default_factory=set)
    spam_verdicts: set[tuple[str, ...]] = field(default_factory=set)
    spam_scores: set[tuple[str, str]] = field(default_factory=set)
    late: set[tuple[str, str]] = field(default_factory=set)
    replies: set[tuple[str, ...]] = field(default_factory=set)
    tls_routes: set[str] = field(default_factory=set)
    gmail_mailboxes: set[str] = field(default_factory=set)
    foreign: set[str] = field(default_factory=set)
    calibrated: set[tuple[str, str]] = field(default_factory=set)  # (mailbox, folder)
    uncalibrated: set[tuple[str, str]] = field(default_factory=set)


def _reply(stage: Stage, code: int, enhanced: str | None) -> SmtpReply:
    return SmtpReply(stage, code, enhanced, "text")


_GREETING = (
    SmtpReply(Stage.BANNER, 220, None, "mx ESMTP"),
    SmtpReply(Stage.EHLO, 250, None, "mx"),
    SmtpReply(Stage.STARTTLS, 220, "2.0.0", "Ready"),
    SmtpReply(Stage.EHLO, 250, None, "mx"),
    SmtpReply(Stage.AUTH, 235, "2.7.0", "ok"),
    SmtpReply(Stage.MAIL, 250, "2.1.0", "Ok"),
)
_ACCEPTED = (
    *_GREETING,
    _reply(Stage.RCPT, 250, "2.1.5"),
    _reply(Stage.DATA, 354, None),
    _reply(Stage.END_OF_DATA, 250, "2.0.0"),
    _reply(Stage.QUIT, 221, "2.0.0"),
)
_TRANSCRIPTS: dict[Outcome, tuple[SmtpReply, ...]] = {
    Outcome.REJECTED: (*_GREETING, _reply(Stage.RCPT, 550, "5.1.1")),
    Outcome.DEFERRED: (*_GREETING, _reply(Stage.RCPT, 451, "4.7.1")),
    Outcome.ERROR: (),
}


def _receiver_verdicts(
    mailbox_index: int, outcome: Outcome
) -> tuple[tuple[SpamVerdict, ...], InboxCategory | None]:
    """Three kinds of receiver: rspamd (like the test mail system), Microsoft, Gmail (whose
    verdict is the folder, with inbox tabs)."""
    spam = outcome is Outcome.SPAM
    match mailbox_index % 3:
        case 0:
            category = SpamCategory.SPAM if spam else SpamCategory.HAM
            return (
                SpamVerdict(SpamSource.RSPAMD, 9.0 if spam else 1.5, 15.0, spam, category),
            ), None
        case 1:
            category = SpamCategory.BULK if spam else SpamCategory.HAM
            scl = 6.0 if spam else 1.0
            return (SpamVerdict(SpamSource.MICROSOFT, scl, None, spam, category),), None
        case _:
            tab = InboxCategory.PROMOTIONS if mailbox_index % 2 else InboxCategory.PRIMARY
            return (), tab if outcome is Outcome.INBOX else None


def play_a_day(recorder: Recorder) -> Seen:
    """Four probes per pair (every outcome across the pairs) and the events around them."""
    seen = Seen()
    recorder.declare(PAIRS, bounce_mailboxes=[BOUNCE_MAILBOX])
    # As the agent does right after declare (one shard: every mailbox its own).
    recorder.record(ShardOwnership(0, 1, dict.fromkeys(MAILBOXES, True)))
    recorder.record(ConfigLoaded(True, T0))
    recorder.record(LedgerHealth(writable=True))
    recorder.record(InFlight({pair: 1 for pair in PAIRS}))
    outcomes = tuple(Outcome)
    for index, (route, mailbox) in enumerate(PAIRS):
        mailbox_index = MAILBOXES.index(mailbox)
        plan = (Outcome.INBOX, Outcome.INBOX, outcomes[index % len(outcomes)], Outcome.INBOX)
        for attempt, outcome in enumerate(plan):
            recorder.record(ProbeStarted(0.01 * attempt))
            recorder.record(ProbeSent(route, mailbox))
            recorder.record(PairInFlight(route, mailbox, 1))
            transcript = _TRANSCRIPTS.get(outcome, _ACCEPTED)
            error = None
            if outcome is Outcome.ERROR:
                error = ProbeError(Stage.CONNECT, ErrorKind.TIMEOUT, "timed out")
            send = SendResult(
                transcript=transcript,
                accepted=transcript is _ACCEPTED,
                accepted_at=T0 if transcript is _ACCEPTED else None,
                duration_seconds=0.3,
                error=error,
                tls_version="TLSv1.3" if transcript else None,
                tls_cert_not_after=T0 + 86_400 * 60 if transcript else None,
            )
            recorder.record(SmtpTransaction(route, send))
            for reply in transcript:
                code_class = f"{reply.code // 100}xx"
                seen.replies.add(
                    (route, reply.stage, str(reply.code), reply.enhanced_code or "", code_class)
                )
            if transcript:
                seen.tls_routes.add(route)
            if outcome is Outcome.REJECTED:
                recorder.record(
                    BounceCounted(
                        route, BounceType.HARD, BounceSource.SMTP, BounceReason.RECIPIENT_INVALID
                    )
                )
            if outcome is Outcome.BOUNCED:
                recorder.record(
                    BounceCounted(route, BounceType.HARD, BounceSource.DSN, BounceReason.POLICY)
                )
            arrival = None
            latency = None
            if outcome in (Outcome.INBOX, Outcome.SPAM, Outcome.OTHER):
                # Mostly pass; every fifth pair's third probe fails DKIM and so DMARC; receivers
                # here do not report ARC.
                failing = index % 5 == 0 and attempt == 2
                auth = AuthVerdicts(
                    spf=AuthResult.PASS,
                    dkim=AuthResult.FAIL if failing else AuthResult.PASS,
                    dmarc=AuthResult.FAIL if failing else AuthResult.PASS,
                )
                for method, result in auth.items():
                    label = AUTH_ABSENT if result is None else result.value
                    seen.auth.add((route, mailbox, method.value, label))
                spam, tab = _receiver_verdicts(mailbox_index, outcome)
                for verdict in spam:
                    source = verdict.source.value
                    seen.spam_verdicts.add((route, mailbox, source, verdict.category.value))
                    seen.spam_scores.add((mailbox, source))
                if tab is not None:
                    seen.gmail_mailboxes.add(mailbox)
                arrival = Arrival(
                    f"probe-{index}-{attempt}",
                    mailbox,
                    "INBOX",
                    outcome,
                    T0 + 10.0,
                    auth,
                    found_by=FoundBy.PUSH,
                    category=tab,
                    spam=spam,
                )
                latency = 3.0 + index
            recorder.record(
                ProbeFinished(
                    route,
                    mailbox,
                    outcome,
                    finished_at=T0 + 60.0 * attempt,
                    latency_seconds=latency,
                    arrival=arrival,
                )
            )
            recorder.record(PairInFlight(route, mailbox, 0))
            if outcome is Outcome.MISSING:
                recorder.record(ProbeLate(route, mailbox))
                seen.late.add((route, mailbox))
    for mailbox in (*MAILBOXES, BOUNCE_MAILBOX):
        recorder.record(ImapHealth(mailbox, True))
    recorder.record(ImapHealth(MAILBOXES[0], up=False, error=ErrorKind.TIMEOUT))
    # Every seed mailbox's inbox and junk folder calibrated, but one junk folder cannot be.
    for mailbox in MAILBOXES:
        for folder in ("INBOX", "Junk"):
            recorder.record(ImapCalibration(mailbox, folder, 0.5))
            seen.calibrated.add((mailbox, folder))
    recorder.record(ImapCalibration(MAILBOXES[0], "Junk", None))
    seen.calibrated.discard((MAILBOXES[0], "Junk"))
    seen.uncalibrated.add((MAILBOXES[0], "Junk"))
    recorder.record(MessageSkipped(BOUNCE_MAILBOX, SkipReason.FORGED))
    recorder.record(MessageSkipped(MAILBOXES[1], SkipReason.MALFORMED))
    recorder.record(MessageSkipped(MAILBOXES[2], SkipReason.FOREIGN))  # a pruned probe's return
    seen.foreign.add(MAILBOXES[2])
    recorder.record(LedgerHealth(False, LedgerErrorKind.BUSY, "database is locked"))
    recorder.record(LedgerHealth(writable=True))
    return seen


_HISTOGRAM_SERIES = {"deliverability_spam_score": 6 + 3}
_SEEN: dict[str, Callable[[Seen], int]] = {
    "deliverability_auth_results_total": lambda seen: len(seen.auth),
    "deliverability_spam_verdicts_total": lambda seen: len(seen.spam_verdicts),
    "deliverability_late_probes_total": lambda seen: len(seen.late),
    "deliverability_foreign_probes_total": lambda seen: len(seen.foreign),
    "deliverability_smtp_replies_total": lambda seen: len(seen.replies),
    "deliverability_tls_version_info": lambda seen: len(seen.tls_routes),
    "deliverability_tls_cert_expiry_timestamp_seconds": lambda seen: len(seen.tls_routes),
    "deliverability_spam_score": lambda seen: (
        len(seen.spam_scores) * _HISTOGRAM_SERIES["deliverability_spam_score"]
    ),
    "deliverability_inbox_category_total": lambda seen: (
        len(seen.gmail_mailboxes) * len(InboxCategory)
    ),
    # Per watched folder: the state always, the delay only while calibrated.
    "deliverability_imap_calibrated": lambda seen: len(seen.calibrated | seen.uncalibrated),
    "deliverability_imap_notification_delay_seconds": lambda seen: len(seen.calibrated),
}


def _expected(seen: Seen | None) -> dict[str, int]:
    expected = {}
    for name, cost in BUDGET.items():
        count = cost.precreated(len(ROUTES), len(MAILBOXES), 1, len(PAIRS))
        if cost.when_seen and seen is not None:
            count += _SEEN[name](seen)
        expected[name] = count
    return expected


def test_series_budget_covers_every_metric_of_the_catalog() -> None:
    assert set(BUDGET) == {spec.name for spec in CATALOG}
    assert {name for name, cost in BUDGET.items() if cost.when_seen} == set(_SEEN)


def test_series_budget_declare_precreates_exactly_the_formula() -> None:
    registry = new_registry()
    recorder = Recorder(registry)
    recorder.declare(PAIRS, bounce_mailboxes=[BOUNCE_MAILBOX])
    recorder.record(ShardOwnership(0, 1, dict.fromkeys(MAILBOXES, True)))  # as the agent does

    counted = series_by_family(registry)
    expected = {name: count for name, count in _expected(None).items() if count}
    assert dict(counted) == expected


def test_series_budget_holds_after_a_realistic_day_per_family_and_per_pair() -> None:
    registry = new_registry()
    seen = play_a_day(Recorder(registry))

    counted = series_by_family(registry)
    expected = {name: count for name, count in _expected(seen).items() if count}
    assert dict(counted) == expected
    lines = [line for line in exposition(registry).splitlines() if not line.startswith(b"#")]
    assert len(lines) == sum(counted.values())  # what /metrics serves
    # Every outcome happened, and what is created when first seen was seen at all.
    assert all(_SEEN[name](seen) for name in _SEEN)

    pair_families = {spec.name for spec in CATALOG if {"route", "mailbox"} <= set(spec.labels)}
    per_pair = {name: counted[name] / len(PAIRS) for name in sorted(pair_families)}
    assert sum(per_pair.values()) <= MAX_SERIES_PER_PAIR, per_pair
    # Nothing per pair hides in a family labelled otherwise.
    for name, cost in BUDGET.items():
        if name not in pair_families:
            assert cost.pair == 0, name


def test_series_budget_formula_is_the_one_in_the_metrics_reference() -> None:
    assert formula() in (ROOT / "docs" / "monitoring.md").read_text()
