"""The metric catalog and recorder: names, pre-created bounded series, values, golden exposition.

The golden test compares the exposition of a fixed sequence of results with tests/golden/metrics.txt
byte for byte. After an intended change, regenerate it and review the diff:

    DELIVERABILITY_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_metrics.py -k golden
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.dns.records import (
    Alignment,
    BlocklistResult,
    CheckResult,
    DkimKey,
    DkimKeyResult,
    DmarcFinding,
    DmarcPolicy,
    DmarcRecord,
    DnsCheck,
    DnsReport,
)
from agent.model import (
    AUTH_ABSENT,
    Arrival,
    AuthMethod,
    AuthResult,
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
    MessageSkipped,
    NewestReport,
    Outcome,
    PairInFlight,
    ProbeError,
    ProbeFinished,
    ProbeLate,
    ProbeSent,
    ReportKind,
    ReportProblem,
    ReportRead,
    ReportResult,
    SendResult,
    ShardOwnership,
    SkipReason,
    SmtpReply,
    SmtpTransaction,
    SpamCategory,
    SpamSource,
    SpamVerdict,
    Stage,
    TlsSessionsCounted,
    TokenRefreshed,
    WebhookRefusal,
    WebhookRefused,
)
from agent.monitoring.catalog import (
    AUTH_RESULTS,
    CATALOG,
    DELIVERY_SECONDS,
    PREFIX,
    PROBES,
    SMTP_ERRORS,
    SPAM_VERDICTS,
    MetricKind,
    MetricSpec,
    exposition,
    new_registry,
)
from agent.monitoring.recorder import Recorder
from agent.oauth import TokenErrorKind
from agent.providers import PROFILES
from agent.reputation.model import (
    DELIVERY_ERRORS,
    ComplianceRequirement,
    DeliveryError,
    DomainDay,
    DomainReport,
    Feed,
    FeedErrorKind,
    FeedFailed,
    FilterResult,
    PostmasterFetched,
    SndsFetched,
    SndsIp,
)

GOLDEN = Path(__file__).parent / "golden" / "metrics.txt"
UPDATE_GOLDEN_ENV = "DELIVERABILITY_UPDATE_GOLDEN"

T0 = 1_700_000_000.0
ROUTE = "submission"
GMAIL = "gmail-seed"
OUTLOOK = "outlook-seed"
REPORTS_BOX = "dmarc-reports"
PROBE_ID = "pr0be-5f2c9a"  # appears in reply text, as real servers echo queue ids

ACCEPTED = SendResult(
    transcript=(
        SmtpReply(Stage.BANNER, 220, None, "mx.example ESMTP"),
        SmtpReply(Stage.EHLO, 250, None, "mx.example"),
        SmtpReply(Stage.STARTTLS, 220, "2.0.0", "Ready to start TLS"),
        SmtpReply(Stage.EHLO, 250, None, "mx.example"),
        SmtpReply(Stage.AUTH, 235, "2.7.0", "Authentication successful"),
        SmtpReply(Stage.MAIL, 250, "2.1.0", "Ok"),
        SmtpReply(Stage.RCPT, 250, "2.1.5", "Ok"),
        SmtpReply(Stage.DATA, 354, None, "End data with <CR><LF>.<CR><LF>"),
        SmtpReply(Stage.END_OF_DATA, 250, "2.0.0", f"Ok: queued as {PROBE_ID}"),
        SmtpReply(Stage.QUIT, 221, "2.0.0", "Bye"),
    ),
    accepted=True,
    accepted_at=T0 + 0.4,
    duration_seconds=0.42,
    tls_version="TLSv1.3",
    tls_cert_not_after=T0 + 90 * 86_400,
)
REJECTED = SendResult(
    transcript=(
        SmtpReply(Stage.BANNER, 220, None, "mx.example ESMTP"),
        SmtpReply(Stage.EHLO, 250, None, "mx.example"),
        SmtpReply(Stage.MAIL, 250, "2.1.0", "Ok"),
        SmtpReply(Stage.RCPT, 550, "5.1.1", f"<{PROBE_ID}@seed.example>: no such user"),
    ),
    accepted=False,
    accepted_at=None,
    duration_seconds=0.2,
)
TIMED_OUT = SendResult(
    transcript=(),
    accepted=False,
    accepted_at=None,
    duration_seconds=30.0,
    error=ProbeError(Stage.CONNECT, ErrorKind.TIMEOUT, "connect to mx.example:587 timed out"),
)


SENDING = "example.com"
SENDING_IP = "192.0.2.10"
ZONE = "zen.example.org"
DNS_REPORT = DnsReport(
    checks=(
        CheckResult(SENDING, DnsCheck.SPF, True, "v=spf1 ip4:192.0.2.0/24 -all"),
        CheckResult(SENDING, DnsCheck.DKIM, None, "DNS lookup failed: timeout"),
        CheckResult(SENDING_IP, DnsCheck.FCRDNS, False, "no PTR record for 192.0.2.10"),
    ),
    blocklists=(BlocklistResult(SENDING_IP, ZONE, True, "listed (127.0.0.2)"),),
    dkim_keys=(DkimKeyResult(SENDING, "sel1", DkimKey("rsa", 2048, False)),),
    dmarc=(
        DmarcFinding(
            SENDING,
            SENDING,
            DmarcRecord(
                DmarcPolicy.REJECT, None, Alignment.RELAXED, Alignment.STRICT, 100, (), (), ()
            ),
        ),
    ),
    spf_lookups=((SENDING, 3),),
    duration_seconds=0.25,
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return new_registry()


@pytest.fixture
def recorder(registry: CollectorRegistry) -> Recorder:
    return Recorder(registry, version="1.2.3")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def samples(registry: CollectorRegistry) -> Iterator[tuple[str, dict[str, str], float]]:
    for family in registry.collect():
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def _arrival(
    mailbox: str,
    placement: Outcome,
    auth: AuthVerdicts,
    found_by: FoundBy | None = FoundBy.PUSH,
    spam: tuple[SpamVerdict, ...] = (),
) -> Arrival:
    return Arrival(
        "01hzjb7m8k0000000000000000",
        mailbox,
        "INBOX",
        placement,
        T0,
        auth,
        found_by=found_by,
        spam=spam,
    )


def play_fixed_sequence(recorder: Recorder) -> None:
    """The results the golden file shows: one route, two seed mailboxes, every kind of event."""
    recorder.declare(
        [(ROUTE, GMAIL), (ROUTE, OUTLOOK)],
        report_mailboxes=[REPORTS_BOX],
        route_providers={ROUTE: "microsoft365"},
        mailbox_providers={GMAIL: "gmail", OUTLOOK: "outlook"},
    )
    recorder.record(ConfigLoaded(True, T0))
    recorder.record(
        BounceCounted(ROUTE, BounceType.HARD, BounceSource.DSN, BounceReason.RECIPIENT_INVALID)
    )
    for mailbox in (GMAIL, OUTLOOK, GMAIL, OUTLOOK):
        recorder.record(ProbeSent(ROUTE, mailbox))
    recorder.record(SmtpTransaction(ROUTE, ACCEPTED))
    recorder.record(SmtpTransaction(ROUTE, ACCEPTED))
    recorder.record(SmtpTransaction(ROUTE, REJECTED))
    recorder.record(SmtpTransaction(ROUTE, TIMED_OUT))
    recorder.record(
        ProbeFinished(
            ROUTE,
            GMAIL,
            Outcome.INBOX,
            finished_at=T0 + 5.0,
            latency_seconds=4.6,
            arrival=dataclasses.replace(
                _arrival(
                    GMAIL,
                    Outcome.INBOX,
                    AuthVerdicts(spf=AuthResult.PASS, dkim=AuthResult.PASS, dmarc=AuthResult.PASS),
                    spam=(SpamVerdict(SpamSource.RSPAMD, 2.0, 50.0, False, SpamCategory.HAM),),
                ),
                category=InboxCategory.PROMOTIONS,
            ),
        )
    )
    recorder.record(
        ProbeFinished(ROUTE, OUTLOOK, Outcome.REJECTED, finished_at=T0 + 6.0, latency_seconds=None)
    )
    recorder.record(
        ProbeFinished(ROUTE, GMAIL, Outcome.ERROR, finished_at=T0 + 36.0, latency_seconds=None)
    )
    recorder.record(
        ProbeFinished(ROUTE, OUTLOOK, Outcome.MISSING, finished_at=T0 + 600.0, latency_seconds=None)
    )
    recorder.record(ProbeLate(ROUTE, OUTLOOK))
    recorder.record(InFlight({(ROUTE, GMAIL): 1}))
    recorder.record(ImapHealth(GMAIL, True))
    recorder.record(ImapHealth(OUTLOOK, False))
    recorder.record(ImapHealth(OUTLOOK, up=False, error=ErrorKind.TIMEOUT))
    recorder.record(ImapCalibration(GMAIL, "INBOX", 0.5))
    recorder.record(ImapCalibration(OUTLOOK, "INBOX", None))  # no delay series while uncalibrated
    recorder.record(MessageSkipped(GMAIL, SkipReason.FORGED))
    recorder.record(MessageSkipped(OUTLOOK, SkipReason.MALFORMED))
    recorder.record(MessageSkipped(OUTLOOK, SkipReason.FOREIGN))
    recorder.record(ShardOwnership(1, 3, {GMAIL: True, OUTLOOK: False}))
    recorder.record(LedgerHealth(writable=True))
    recorder.record(LedgerHealth(False, LedgerErrorKind.DISK_FULL, "database or disk is full"))
    recorder.record(LedgerHealth(writable=True))
    recorder.declare_credentials([OUTLOOK])
    recorder.record(TokenRefreshed(OUTLOOK, "ok", T0, T0 + 3600))
    recorder.record(TokenRefreshed(OUTLOOK, "invalid_grant", T0 + 3300))
    recorder.declare_dns(
        [(SENDING, DnsCheck.SPF), (SENDING, DnsCheck.DKIM), (SENDING_IP, DnsCheck.FCRDNS)],
        [(SENDING_IP, ZONE)],
    )
    recorder.record(DNS_REPORT)
    recorder.record(ReportRead(REPORTS_BOX, ReportKind.DMARC, ReportResult.COUNTED))
    recorder.record(ReportRead(REPORTS_BOX, ReportKind.DMARC, ReportProblem.FORBIDDEN_XML))
    recorder.record(NewestReport(REPORTS_BOX, ReportKind.DMARC, T0 - 3600.0))
    recorder.record(
        DmarcCounted(REPORTS_BOX, "google.com", "example.com", "none", True, False, "192.0.2.1", 7)
    )
    recorder.record(
        DmarcCounted(REPORTS_BOX, "google.com", "example.com", "reject", False, False, "other", 2)
    )
    recorder.record(
        TlsSessionsCounted(REPORTS_BOX, "Company-X", "example.com", "sts", "success", 5326)
    )
    recorder.record(
        TlsSessionsCounted(REPORTS_BOX, "Company-X", "example.com", "sts", "certificate-expired", 3)
    )
    # The route is an ESP's relay: its webhook's series, and one of each ESP result.
    recorder.declare_esp([ROUTE])
    recorder.record(WebhookRefused(ROUTE, WebhookRefusal.BAD_SIGNATURE))
    recorder.record(EspEventReceived(ROUTE, EspEventType.DROPPED, T0 + 100.0))
    recorder.record(EspEventReceived(ROUTE, EspEventType.DELIVERED, T0 + 120.0))
    recorder.record(EspUnmatched(ROUTE))
    recorder.record(EspDelivered(ROUTE, 3.2))
    recorder.record(EspReceiverStage(ROUTE, 1.4))
    recorder.record(
        BounceCounted(ROUTE, BounceType.HARD, BounceSource.ESP, BounceReason.SUPPRESSED)
    )
    recorder.record(EspSuppressed(ROUTE))
    recorder.record(EspComplaint(ROUTE))
    recorder.declare_reputation(domains=[SENDING], snds_ips=(), feeds=["postmaster", "snds"])
    recorder.record(POSTMASTER_FETCHED)
    recorder.record(SNDS_FETCHED)
    recorder.record(FeedFailed(Feed.SNDS, FeedErrorKind.QUOTA, T0 + 60.0))


POSTMASTER_FETCHED = PostmasterFetched(
    (
        DomainReport(
            SENDING,
            DomainDay(
                date=dt.date(2023, 11, 13),
                spam_ratio=0.0012,
                auth_success=(("spf", 0.998), ("dkim", 1.0), ("dmarc", 0.997)),
                tls_inbound_ratio=0.999,
                delivery_errors=(DeliveryError("reject", "ip_in_rbls", 0.004),),
            ),
            (
                (ComplianceRequirement.SPF, True),
                (ComplianceRequirement.USER_REPORTED_SPAM_RATE, False),
            ),
        ),
    ),
    at=T0,
)
SNDS_FETCHED = SndsFetched(
    (SndsIp(SENDING_IP, T0 - 3600.0, FilterResult.YELLOW, 0.004, 1, 300, 290, 295),),
    blocked=((SENDING_IP, False),),
    at=T0,
    malformed=1,
)


def test_metrics_exposition_matches_golden_file(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    play_fixed_sequence(recorder)
    rendered = exposition(registry)
    if os.environ.get(UPDATE_GOLDEN_ENV) == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_bytes(rendered)
    assert rendered == GOLDEN.read_bytes()


def test_metrics_catalog_and_registry_match_both_ways(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    play_fixed_sequence(recorder)
    registered = {}
    for family in registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        labels: set[tuple[str, ...]] = set()
        for sample in family.samples:
            labels.add(tuple(k for k in sample.labels if k != "le"))
        registered[name] = (family.type, family.documentation, labels)

    assert set(registered) == {spec.name for spec in CATALOG}
    for spec in CATALOG:
        kind, documentation, labels = registered[spec.name]
        assert (kind, documentation) == (spec.kind.value, spec.help), spec.name
        # Every metric has samples after the fixed sequence, all with exactly the catalog's labels.
        assert labels == {spec.labels}, spec.name


def test_metrics_catalog_names_follow_prometheus_conventions() -> None:
    names = [spec.name for spec in CATALOG]
    assert len(names) == len(set(names))
    for spec in CATALOG:
        assert spec.name.startswith(PREFIX)
        assert spec.help.endswith("."), spec.name
        if spec.name.endswith(("_timestamp_seconds", "_info", "_up", "_successful")):
            assert spec.kind is MetricKind.GAUGE, spec.name
    assert DELIVERY_SECONDS.buckets is not None
    assert (DELIVERY_SECONDS.buckets[0], DELIVERY_SECONDS.buckets[-1]) == (1, 3600)


@pytest.mark.parametrize(
    ("name", "kind", "buckets"),
    [
        ("deliverability_things", MetricKind.COUNTER, None),
        ("deliverability_things_total", MetricKind.GAUGE, None),
        ("things_total", MetricKind.COUNTER, None),
        ("deliverability_things_seconds", MetricKind.HISTOGRAM, None),
        ("deliverability_things", MetricKind.GAUGE, (1.0,)),
    ],
)
def test_metrics_spec_rejects_unconventional_definitions(
    name: str, kind: MetricKind, buckets: tuple[float, ...] | None
) -> None:
    with pytest.raises(ValueError, match=name):
        MetricSpec(name, kind, "Help.", (), buckets)


def test_metrics_no_label_identifies_a_probe_or_message(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    forbidden = {"probe_id", "probe", "message_id", "recipient", "subject", "text", "token"}
    for spec in CATALOG:
        assert not forbidden & set(spec.labels), spec.name

    play_fixed_sequence(recorder)
    assert PROBE_ID.encode() not in exposition(registry)  # reply text never becomes a label
    bounded = (
        {ROUTE, GMAIL, OUTLOOK, "1.2.3", "TLSv1.3", ""}
        | {str(m) for m in (*Outcome, *Stage, *ErrorKind, *ErrorKind)}
        | {str(m) for m in (*AuthMethod, *AuthResult, *BounceType, *BounceSource, *FoundBy)}
        | {str(m) for m in BounceReason}
        | {str(m) for m in (*EspEventType, *WebhookRefusal)}
        | {AUTH_ABSENT}
        | {"2xx", "3xx", "4xx", "5xx", "invalid"}
        | {SENDING, SENDING_IP, ZONE, "sel1", "rsa"}
        | {str(m) for m in (*DnsCheck, *DmarcPolicy, *Alignment)}
        | {str(m) for m in LedgerErrorKind}
        | {str(m) for m in InboxCategory}
        | {str(m) for m in (*SpamSource, *SpamCategory)}
        | set(PROFILES)
        | {str(m) for m in (*ReportKind, *ReportResult, *ReportProblem)}
        # Report labels are bounded by the reader (top N per report mailbox, the rest "other").
        | {REPORTS_BOX, "google.com", "example.com", "192.0.2.1", "other", "Company-X"}
        | {"none", "reject", "pass", "fail", "sts", "success", "certificate-expired"}
        | {"ok"}
        | {str(m) for m in TokenErrorKind}
        | {"1", "3"}  # the shard index and count: at most the replica count
        | {"INBOX"}  # a watched folder: a few per seed mailbox, named in the configuration
        # Reputation feeds: configured domains and IPs, and Google's documented enums.
        | {str(m) for m in (*Feed, *FeedErrorKind, *FilterResult, *ComplianceRequirement)}
        | {t for pair in DELIVERY_ERRORS for t in pair}
        | {"spf", "dkim", "dmarc", "rcpt", "data", "recipients"}
    )
    for name, labels, _ in samples(registry):
        for key, label in labels.items():
            if key == "le":
                continue
            if key == "code":
                assert label.isdigit() and len(label) == 3, (name, label)
            elif key == "enhanced_code":
                assert label == "" or label[0] in "245", (name, label)
            else:
                assert label in bounded, (name, key, label)


def test_metrics_declare_precreates_the_budgeted_series_at_zero(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.declare([(ROUTE, GMAIL)])

    pair = {"route": ROUTE, "mailbox": GMAIL}
    for outcome in Outcome:
        assert value(registry, PROBES.name, **pair, outcome=outcome.value) == 0
    assert value(registry, "deliverability_last_outcome_timestamp_seconds", **pair) == 0
    for stage in Stage:
        for kind in ErrorKind:
            labels = {"route": ROUTE, "stage": stage.value, "kind": kind.value}
            assert value(registry, SMTP_ERRORS.name, **labels) == 0
    for imap_kind in ErrorKind:
        labels = {"mailbox": GMAIL, "kind": imap_kind.value}
        assert value(registry, "deliverability_imap_errors_total", **labels) == 0
    assert value(registry, "deliverability_probes_sent_total", route=ROUTE) == 0
    assert value(registry, "deliverability_probes_in_flight", **pair) == 0
    assert value(registry, "deliverability_pair_delivery_seconds_count", **pair) == 0
    assert value(registry, "deliverability_delivery_seconds_count", mailbox=GMAIL) == 0
    assert value(registry, "deliverability_smtp_transaction_seconds_count", route=ROUTE) == 0
    assert value(registry, "deliverability_imap_up", mailbox=GMAIL) == 0
    assert value(registry, "deliverability_forged_messages_total", mailbox=GMAIL) == 0
    assert value(registry, "deliverability_malformed_messages_total", mailbox=GMAIL) == 0
    for found_by in FoundBy:
        labels = {"mailbox": GMAIL, "found_by": found_by.value}
        assert value(registry, "deliverability_probes_found_total", **labels) == 0
    # Created only when seen: reply codes, TLS facts (0 would read as "expired in 1970"), and
    # what only some pairs ever see (the series budget): auth and spam verdicts, late probes.
    names = {name for name, _, _ in samples(registry)}
    assert "deliverability_smtp_replies_total" not in names
    assert "deliverability_tls_cert_expiry_timestamp_seconds" not in names
    assert "deliverability_tls_version_info" not in names
    assert AUTH_RESULTS.name not in names
    assert SPAM_VERDICTS.name not in names
    assert "deliverability_late_probes_total" not in names


def test_metrics_redeclare_adds_new_pairs_removes_stale_and_keeps_values(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.declare([("old-route", GMAIL), (ROUTE, GMAIL), (ROUTE, OUTLOOK)])
    recorder.record(ProbeSent(ROUTE, GMAIL))
    recorder.record(ProbeSent("old-route", GMAIL))
    recorder.record(SmtpTransaction("old-route", ACCEPTED))
    recorder.record(MessageSkipped(OUTLOOK, SkipReason.FORGED))

    recorder.declare([(ROUTE, GMAIL), ("new-route", GMAIL)])

    assert value(registry, "deliverability_probes_sent_total", route=ROUTE) == 1
    new_pair = {"route": "new-route", "mailbox": GMAIL}
    assert value(registry, "deliverability_probes_sent_total", route="new-route") == 0
    assert value(registry, PROBES.name, **new_pair, outcome="inbox") == 0
    for name, labels, _ in samples(registry):
        assert labels.get("route") != "old-route", name
        assert labels.get("mailbox") != OUTLOOK, name
        assert (labels.get("route"), labels.get("mailbox")) != (ROUTE, OUTLOOK), name


def test_metrics_declare_in_steps_ends_as_declare_at_once() -> None:
    pairs = [(f"r{i:02d}", f"m{j:02d}") for i in range(32) for j in range(32)]
    at_once, stepped = new_registry(), new_registry()
    Recorder(at_once).declare(pairs, bounce_mailboxes=["bounces"])

    steps = list(Recorder(stepped).declare_steps(pairs, bounce_mailboxes=["bounces"]))

    assert len(steps) > 5  # 1,024 pairs: the loop runs several times in between
    assert exposition(stepped) == exposition(at_once)


def test_metrics_redeclare_creates_only_what_is_new(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    pairs = [(f"r{i:02d}", f"m{j:02d}") for i in range(32) for j in range(32)]
    recorder.declare(pairs)
    recorder.record(ProbeSent("r00", "m00"))

    # Nothing new: one step (the last), not one per DECLARE_STEP children as the first.
    assert len(list(recorder.declare_steps(pairs))) == 1
    assert len(list(recorder.declare_steps([*pairs[1:], ("r99", "m00")]))) == 1

    assert value(registry, "deliverability_probes_sent_total", route="r00") == 1
    assert value(registry, PROBES.name, route="r99", mailbox="m00", outcome="inbox") == 0
    assert value(registry, PROBES.name, route="r00", mailbox="m00", outcome="inbox") is None


def test_metrics_redeclare_removes_series_a_late_result_brought_back(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.declare([(ROUTE, GMAIL), (ROUTE, OUTLOOK)])
    recorder.declare([(ROUTE, GMAIL)])
    # A probe sent before the reload ends afterwards: its pair's series come back for a while.
    recorder.record(ProbeLate(ROUTE, OUTLOOK))
    recorder.record(ProbeFinished(ROUTE, OUTLOOK, Outcome.MISSING, finished_at=T0))
    assert value(registry, PROBES.name, route=ROUTE, mailbox=OUTLOOK, outcome="missing") == 1

    recorder.declare([(ROUTE, GMAIL)])

    for name, labels, _ in samples(registry):
        assert (labels.get("route"), labels.get("mailbox")) != (ROUTE, OUTLOOK), name
    assert value(registry, PROBES.name, route=ROUTE, mailbox=GMAIL, outcome="inbox") == 0


def test_metrics_info_series_carry_the_provider_of_each_route_and_mailbox_once(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.declare(
        [(ROUTE, GMAIL), (ROUTE, OUTLOOK), ("relay", GMAIL)],
        bounce_mailboxes=["bounces"],
        route_providers={ROUTE: "gmail"},
        mailbox_providers={GMAIL: "gmail", OUTLOOK: "microsoft365", "bounces": "fastmail"},
    )

    def info(name: str) -> dict[str, str]:
        found = [labels for metric, labels, _ in samples(registry) if metric == name]
        assert all(v == 1 for metric, _, v in samples(registry) if metric == name)
        key = "route" if "route" in name else "mailbox"
        return {labels[key]: labels["provider"] for labels in found}

    # One series per route and per mailbox (not per pair); unnamed ones are "other".
    assert info("deliverability_route_info") == {ROUTE: "gmail", "relay": "other"}
    assert info("deliverability_mailbox_info") == {
        GMAIL: "gmail",
        OUTLOOK: "microsoft365",
        "bounces": "fastmail",
    }


def test_metrics_reload_replaces_an_info_series_whose_provider_changed(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.declare([(ROUTE, GMAIL), (ROUTE, OUTLOOK)], mailbox_providers={GMAIL: "other"})
    recorder.declare([(ROUTE, GMAIL)], mailbox_providers={GMAIL: "google-workspace"})

    found = [
        labels for name, labels, _ in samples(registry) if name == "deliverability_mailbox_info"
    ]
    assert found == [{"mailbox": GMAIL, "provider": "google-workspace"}]


def test_metrics_probe_final_counts_outcome_latency_auth_and_time(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.declare([(ROUTE, GMAIL)])
    pair = {"route": ROUTE, "mailbox": GMAIL}
    recorder.record(
        ProbeFinished(
            ROUTE,
            GMAIL,
            Outcome.SPAM,
            finished_at=T0 + 12.0,
            latency_seconds=11.5,
            arrival=_arrival(
                GMAIL, Outcome.SPAM, AuthVerdicts(spf=AuthResult.PASS, dkim=AuthResult.FAIL)
            ),
        )
    )

    assert value(registry, PROBES.name, **pair, outcome="spam") == 1
    assert value(registry, PROBES.name, **pair, outcome="inbox") == 0
    assert value(registry, "deliverability_last_outcome_timestamp_seconds", **pair) == T0 + 12.0
    # Per pair a count and a sum; the buckets per mailbox.
    assert value(registry, "deliverability_pair_delivery_seconds_count", **pair) == 1
    assert value(registry, "deliverability_pair_delivery_seconds_sum", **pair) == 11.5
    mailbox = {"mailbox": GMAIL}
    assert value(registry, "deliverability_delivery_seconds_count", **mailbox) == 1
    assert value(registry, "deliverability_delivery_seconds_bucket", **mailbox, le="10.0") == 0
    assert value(registry, "deliverability_delivery_seconds_bucket", **mailbox, le="15.0") == 1
    assert value(registry, AUTH_RESULTS.name, **pair, method="spf", result="pass") == 1
    assert value(registry, AUTH_RESULTS.name, **pair, method="dkim", result="fail") == 1
    # Methods the trusted fields did not report count as absent, never as a result word; only
    # verdicts seen have series.
    for result in AuthResult:
        assert value(registry, AUTH_RESULTS.name, **pair, method="dmarc", result=result) is None
    assert value(registry, AUTH_RESULTS.name, **pair, method="dmarc", result="absent") == 1
    assert value(registry, AUTH_RESULTS.name, **pair, method="arc", result="absent") == 1
    assert value(registry, AUTH_RESULTS.name, **pair, method="spf", result="absent") is None
    auth_series = [n for n, labels, _ in samples(registry) if n == AUTH_RESULTS.name]
    assert len(auth_series) == 4
    found = "deliverability_probes_found_total"
    assert value(registry, found, mailbox=GMAIL, found_by="push") == 1
    assert value(registry, found, mailbox=GMAIL, found_by="check") == 0


def test_metrics_spam_verdicts_are_counted_by_filter_and_category_with_their_scores(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.declare([(ROUTE, GMAIL)])
    pair = {"route": ROUTE, "mailbox": GMAIL}
    # Nothing before the first verdict (the series budget: a receiver says ham or spam, nearly
    # always the same, so pre-creating every category would multiply series for nothing).
    names = {name for name, _, _ in samples(registry)}
    assert SPAM_VERDICTS.name not in names
    assert "deliverability_spam_score_count" not in names
    spam = (
        SpamVerdict(SpamSource.RSPAMD, 25.4, 50.0, True, SpamCategory.SPAM),
        SpamVerdict(SpamSource.MICROSOFT, None, None, True, SpamCategory.BULK, bulk_level=7),
    )
    arrival = _arrival(GMAIL, Outcome.SPAM, AuthVerdicts(), spam=spam)
    recorder.record(
        ProbeFinished(ROUTE, GMAIL, Outcome.SPAM, finished_at=T0 + 1.0, arrival=arrival)
    )

    assert value(registry, SPAM_VERDICTS.name, **pair, source="rspamd", category="spam") == 1
    assert value(registry, SPAM_VERDICTS.name, **pair, source="microsoft", category="bulk") == 1
    verdict_series = [n for n, _, _ in samples(registry) if n == SPAM_VERDICTS.name]
    assert len(verdict_series) == 2  # only the verdicts seen
    rspamd = {"mailbox": GMAIL, "source": "rspamd"}  # scores per mailbox: the filter's own scale
    assert value(registry, "deliverability_spam_score_count", **rspamd) == 1
    assert value(registry, "deliverability_spam_score_bucket", **rspamd, le="15.0") == 0
    assert value(registry, "deliverability_spam_score_bucket", **rspamd, le="+Inf") == 1
    # Microsoft wrote no SCL here: no score observed.
    sources = {labels.get("source") for name, labels, _ in samples(registry) if "score" in name}
    assert sources == {"rspamd"}


def test_metrics_counts_how_each_found_probe_was_found_once_per_probe(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.declare([(ROUTE, GMAIL), ("other-route", GMAIL)])
    for route, found_by in ((ROUTE, FoundBy.CHECK), ("other-route", FoundBy.CHECK)):
        arrival = _arrival(GMAIL, Outcome.INBOX, AuthVerdicts(), found_by)
        recorder.record(ProbeFinished(route, GMAIL, Outcome.INBOX, finished_at=T0, arrival=arrival))
    # An arrival stored by an earlier version does not say how it was found: not counted.
    unknown = _arrival(GMAIL, Outcome.SPAM, AuthVerdicts(), None)
    recorder.record(ProbeFinished(ROUTE, GMAIL, Outcome.SPAM, finished_at=T0, arrival=unknown))
    recorder.record(ProbeFinished(ROUTE, GMAIL, Outcome.MISSING, finished_at=T0))

    found = {
        labels["found_by"]: count
        for name, labels, count in samples(registry)
        if name == "deliverability_probes_found_total"
    }
    assert found == {"select": 0, "push": 0, "check": 2, "poll": 0}


def test_metrics_counts_gmail_tabs_of_inbox_probes_per_mailbox_only_for_categorised_ones(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    tabs = "deliverability_inbox_category_total"
    recorder.declare([(ROUTE, GMAIL), (ROUTE, OUTLOOK)])
    assert not [name for name, _, _ in samples(registry) if name == tabs]  # none at start

    def finish(mailbox: str, outcome: Outcome, category: InboxCategory | None) -> None:
        arrival = dataclasses.replace(_arrival(mailbox, outcome, AuthVerdicts()), category=category)
        recorder.record(ProbeFinished(ROUTE, mailbox, outcome, finished_at=T0, arrival=arrival))

    finish(GMAIL, Outcome.INBOX, InboxCategory.SOCIAL)
    finish(GMAIL, Outcome.INBOX, InboxCategory.SOCIAL)
    finish(OUTLOOK, Outcome.INBOX, None)  # no X-GM-EXT-1: no series for this mailbox
    finish(GMAIL, Outcome.SPAM, InboxCategory.PRIMARY)  # a tab means nothing outside the inbox

    counted = {
        (labels["mailbox"], labels["category"]): count
        for name, labels, count in samples(registry)
        if name == tabs
    }
    # The mailbox's first categorised probe creates its five series at once.
    assert counted == {
        (GMAIL, category.value): 2.0 if category is InboxCategory.SOCIAL else 0.0
        for category in InboxCategory
    }
    recorder.declare([(ROUTE, OUTLOOK)])  # a mailbox no longer configured loses its series
    assert not [name for name, _, _ in samples(registry) if name == tabs]


def test_metrics_smtp_result_counts_replies_errors_duration_and_tls(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.declare([(ROUTE, GMAIL)])
    recorder.record(SmtpTransaction(ROUTE, ACCEPTED))
    recorder.record(SmtpTransaction(ROUTE, REJECTED))
    recorder.record(SmtpTransaction(ROUTE, TIMED_OUT))

    def replies(stage: Stage, code: str, enhanced: str, reply_class: str) -> float | None:
        labels = {"route": ROUTE, "stage": stage.value, "code": code, "enhanced_code": enhanced}
        # "class" is a Python keyword, so these labels go in as a dict.
        return registry.get_sample_value(
            "deliverability_smtp_replies_total", {**labels, "class": reply_class}
        )

    assert replies(Stage.BANNER, "220", "", "2xx") == 2
    assert replies(Stage.EHLO, "250", "", "2xx") == 3
    assert replies(Stage.DATA, "354", "", "3xx") == 1
    assert replies(Stage.RCPT, "550", "5.1.1", "5xx") == 1
    assert replies(Stage.END_OF_DATA, "250", "2.0.0", "2xx") == 1
    errors = {"route": ROUTE, "stage": "connect", "kind": "timeout"}
    assert value(registry, SMTP_ERRORS.name, **errors) == 1
    assert value(registry, SMTP_ERRORS.name, route=ROUTE, stage="rcpt", kind="protocol") == 0
    assert value(registry, "deliverability_smtp_transaction_seconds_count", route=ROUTE) == 3
    assert value(registry, "deliverability_smtp_transaction_seconds_sum", route=ROUTE) == 30.62
    assert (
        value(registry, "deliverability_tls_cert_expiry_timestamp_seconds", route=ROUTE)
        == T0 + 90 * 86_400
    )
    assert value(registry, "deliverability_tls_version_info", route=ROUTE, version="TLSv1.3") == 1


def test_metrics_malformed_enhanced_code_gets_one_bounded_label(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    for junk in ("5.1.1-evil", "x.y.z", "9.9.9", "5.1234.1"):
        result = SendResult(
            transcript=(SmtpReply(Stage.RCPT, 550, junk, "no"),),
            accepted=False,
            accepted_at=None,
            duration_seconds=0.1,
        )
        recorder.record(SmtpTransaction(ROUTE, result))

    labels = {"route": ROUTE, "stage": "rcpt", "code": "550", "class": "5xx"}
    replies = "deliverability_smtp_replies_total"
    assert value(registry, replies, **labels, enhanced_code="invalid") == 4
    reply_series = [n for n, _, _ in samples(registry) if n == replies]
    assert len(reply_series) == 1


def test_metrics_a_pair_removed_and_added_back_counts_on_new_series(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    # The recorder keeps each child it made: one removed must not be the one counted on later.
    recorder.declare([(ROUTE, GMAIL), (ROUTE, OUTLOOK)])
    recorder.record(ProbeFinished(ROUTE, OUTLOOK, Outcome.INBOX, finished_at=T0))
    recorder.declare([(ROUTE, GMAIL)])
    assert value(registry, PROBES.name, route=ROUTE, mailbox=OUTLOOK, outcome="inbox") is None

    recorder.declare([(ROUTE, GMAIL), (ROUTE, OUTLOOK)])
    recorder.record(ProbeFinished(ROUTE, OUTLOOK, Outcome.INBOX, finished_at=T0 + 1))

    assert value(registry, PROBES.name, route=ROUTE, mailbox=OUTLOOK, outcome="inbox") == 1


def test_metrics_tls_version_change_replaces_the_info_series(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    old = SendResult(
        transcript=(), accepted=True, accepted_at=T0, duration_seconds=0.1, tls_version="TLSv1.2"
    )
    recorder.record(SmtpTransaction(ROUTE, old))
    recorder.record(SmtpTransaction(ROUTE, ACCEPTED))

    assert value(registry, "deliverability_tls_version_info", route=ROUTE, version="TLSv1.3") == 1
    assert (
        value(registry, "deliverability_tls_version_info", route=ROUTE, version="TLSv1.2") is None
    )


def test_metrics_set_in_flight_zeroes_declared_pairs_absent_from_counts(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.declare([(ROUTE, GMAIL), (ROUTE, OUTLOOK)])
    recorder.record(InFlight({(ROUTE, GMAIL): 2, (ROUTE, OUTLOOK): 1, ("gone", GMAIL): 1}))
    recorder.record(InFlight({(ROUTE, OUTLOOK): 3}))

    in_flight = "deliverability_probes_in_flight"
    assert value(registry, in_flight, route=ROUTE, mailbox=GMAIL) == 0
    assert value(registry, in_flight, route=ROUTE, mailbox=OUTLOOK) == 3
    assert value(registry, in_flight, route="gone", mailbox=GMAIL) is None


def test_metrics_pair_in_flight_sets_one_pair_and_drops_an_undeclared_pair_at_zero(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.declare([(ROUTE, GMAIL), (ROUTE, OUTLOOK)])
    recorder.record(InFlight({(ROUTE, OUTLOOK): 3, ("gone", GMAIL): 1}))
    recorder.record(PairInFlight(ROUTE, GMAIL, 2))
    recorder.record(PairInFlight("gone", GMAIL, 0))  # a removed pair's last probe finished

    in_flight = "deliverability_probes_in_flight"
    assert value(registry, in_flight, route=ROUTE, mailbox=GMAIL) == 2
    assert value(registry, in_flight, route=ROUTE, mailbox=OUTLOOK) == 3  # untouched
    assert value(registry, in_flight, route="gone", mailbox=GMAIL) is None
    recorder.record(PairInFlight(ROUTE, GMAIL, 0))
    assert value(registry, in_flight, route=ROUTE, mailbox=GMAIL) == 0  # declared: stays at 0


def test_metrics_mailbox_watcher_events(recorder: Recorder, registry: CollectorRegistry) -> None:
    recorder.declare([(ROUTE, GMAIL)])
    recorder.record(ImapHealth(GMAIL, True))
    assert value(registry, "deliverability_imap_up", mailbox=GMAIL) == 1
    recorder.record(ImapHealth(GMAIL, up=False, error=ErrorKind.AUTH))
    recorder.record(ImapHealth(GMAIL, False))
    recorder.record(MessageSkipped(GMAIL, SkipReason.FORGED))
    recorder.record(MessageSkipped(GMAIL, SkipReason.MALFORMED))
    recorder.record(MessageSkipped(GMAIL, SkipReason.MALFORMED))

    assert value(registry, "deliverability_imap_up", mailbox=GMAIL) == 0
    assert value(registry, "deliverability_imap_errors_total", mailbox=GMAIL, kind="auth") == 1
    assert value(registry, "deliverability_forged_messages_total", mailbox=GMAIL) == 1
    assert value(registry, "deliverability_malformed_messages_total", mailbox=GMAIL) == 2


def test_metrics_ledger_errors_count_by_kind_and_writable_follows_the_last_write(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    for kind in LedgerErrorKind:  # pre-created, before any ledger exists
        assert value(registry, "deliverability_ledger_errors_total", kind=kind.value) == 0
    recorder.record(LedgerHealth(writable=True))
    assert value(registry, "deliverability_ledger_writable") == 1
    recorder.record(LedgerHealth(False, LedgerErrorKind.DISK_FULL, "database or disk is full"))
    recorder.record(LedgerHealth(False, LedgerErrorKind.DISK_FULL, "database or disk is full"))
    assert value(registry, "deliverability_ledger_writable") == 0
    # A failed read counts, and leaves the write state as it was.
    recorder.record(LedgerHealth(False, LedgerErrorKind.CORRUPT, "unreadable probe p1"))
    recorder.record(LedgerHealth(writable=True))

    assert value(registry, "deliverability_ledger_writable") == 1
    assert value(registry, "deliverability_ledger_errors_total", kind="disk_full") == 2
    assert value(registry, "deliverability_ledger_errors_total", kind="corrupt") == 1
    assert value(registry, "deliverability_ledger_errors_total", kind="io") == 0


def test_metrics_failed_reload_clears_success_but_keeps_its_time(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.record(ConfigLoaded(True, T0))
    recorder.record(ConfigLoaded(False, T0 + 60.0))

    assert value(registry, "deliverability_config_last_reload_successful") == 0
    assert value(registry, "deliverability_config_last_reload_success_timestamp_seconds") == T0


def test_metrics_probe_sent_late_and_build_info(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.record(ProbeSent(ROUTE, GMAIL))
    recorder.record(ProbeSent(ROUTE, GMAIL))
    recorder.record(ProbeLate(ROUTE, GMAIL))

    pair = {"route": ROUTE, "mailbox": GMAIL}
    assert value(registry, "deliverability_probes_sent_total", route=ROUTE) == 2
    assert value(registry, "deliverability_late_probes_total", **pair) == 1
    assert value(registry, "deliverability_build_info", version="1.2.3") == 1


def test_metrics_restore_last_outcomes_after_restart(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.declare([(ROUTE, GMAIL), (ROUTE, OUTLOOK)])
    recorder.restore_last_outcomes(
        {(ROUTE, GMAIL, Outcome.INBOX): T0 + 7.0, (ROUTE, GMAIL, Outcome.SPAM): T0 + 3.0}
    )

    # One gauge per pair: the latest of its outcomes.
    name = "deliverability_last_outcome_timestamp_seconds"
    assert value(registry, name, route=ROUTE, mailbox=GMAIL) == T0 + 7.0
    assert value(registry, name, route=ROUTE, mailbox=OUTLOOK) == 0


def test_oauth_credential_series_follow_the_configured_credentials(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.declare_credentials(["m365", "gmail"])
    name = "deliverability_oauth_token_refreshes_total"
    assert value(registry, name, credential="m365", result="invalid_grant") == 0
    recorder.record(TokenRefreshed("m365", "timeout", 1000.0))
    recorder.record(TokenRefreshed("m365", "ok", 1010.0, 4610.0))
    assert value(registry, name, credential="m365", result="timeout") == 1
    assert value(registry, name, credential="m365", result="ok") == 1
    assert (
        value(
            registry, "deliverability_oauth_token_last_success_timestamp_seconds", credential="m365"
        )
        == 1010.0
    )
    assert (
        value(registry, "deliverability_oauth_token_expiry_timestamp_seconds", credential="m365")
        == 4610.0
    )

    recorder.declare_credentials(["gmail"])  # m365 removed by a reload
    assert value(registry, name, credential="m365", result="ok") is None
    assert value(registry, name, credential="gmail", result="ok") == 0


def test_shard_ownership_is_one_series_per_configured_mailbox_and_follows_the_config(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.record(ShardOwnership(1, 3, {GMAIL: True, OUTLOOK: False}))
    assert registry.get_sample_value("deliverability_shard_info", {"shard": "1", "total": "3"}) == 1
    assert registry.get_sample_value("deliverability_shard_owned_mailboxes") == 1
    owned = "deliverability_shard_mailbox_owned"
    assert registry.get_sample_value(owned, {"mailbox": GMAIL}) == 1
    assert registry.get_sample_value(owned, {"mailbox": OUTLOOK}) == 0
    # A reload that drops a mailbox drops its series; a new count replaces the old info series.
    recorder.record(ShardOwnership(1, 2, {GMAIL: False}))
    assert registry.get_sample_value(owned, {"mailbox": OUTLOOK}) is None
    assert (
        registry.get_sample_value("deliverability_shard_info", {"shard": "1", "total": "3"}) is None
    )
    assert registry.get_sample_value("deliverability_shard_info", {"shard": "1", "total": "2"}) == 1
    assert registry.get_sample_value("deliverability_shard_owned_mailboxes") == 0


def test_a_foreign_probe_is_counted_apart_from_forged_ones(
    recorder: Recorder, registry: CollectorRegistry
) -> None:
    recorder.declare([(ROUTE, GMAIL)])
    recorder.record(MessageSkipped(GMAIL, SkipReason.FOREIGN))
    foreign = "deliverability_foreign_probes_total"
    assert registry.get_sample_value(foreign, {"mailbox": GMAIL}) == 1
    forged = "deliverability_forged_messages_total"
    assert registry.get_sample_value(forged, {"mailbox": GMAIL}) == 0
