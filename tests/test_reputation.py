"""Reading Postmaster Tools and SNDS answers (pure), the feeds' backoff, and their series."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest
from prometheus_client import CollectorRegistry

from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder
from agent.reputation.feeds import BACKOFF_FIRST, backoff_delay
from agent.reputation.http import retry_after_seconds
from agent.reputation.model import (
    ComplianceRequirement,
    DomainReport,
    Feed,
    FeedError,
    FeedErrorKind,
    FeedFailed,
    FilterResult,
    PostmasterFetched,
)
from agent.reputation.postmaster import METRICS, newest_day, parse_compliance, parse_stats
from agent.reputation.snds import OTHER, combine, parse_data, parse_ip_status
from tests.reputation_samples import (
    SNDS_DATA,
    SNDS_IP_STATUS,
    compliance_answer,
    stats_answer,
)

HOUR = 3600.0


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


# --- Postmaster Tools -----------------------------------------------------------------------------


def test_stats_newest_day_holds_every_rate_of_that_day() -> None:
    collected, token = parse_stats(_json(stats_answer("example.com")))
    day = newest_day(collected)

    assert token == ""
    assert day is not None
    assert day.date == dt.date(2026, 12, 4)
    assert day.spam_ratio == pytest.approx(0.0021)
    assert dict(day.auth_success) == {"spf": 0.998, "dkim": 1.0, "dmarc": 0.997}
    assert day.tls_inbound_ratio == pytest.approx(0.999)
    assert {(e.type, e.reason, e.ratio) for e in day.delivery_errors} == {
        ("reject", "ip_in_rbls", 0.004),
        ("temp_fail", "anomalous_traffic_pattern", 0.011),
    }


def test_stats_without_entries_is_no_data_not_zero() -> None:
    collected, _ = parse_stats(b"{}")  # Google leaves out the dates without data

    assert newest_day(collected) is None


def test_stats_entries_not_in_the_documented_shape_are_counted_and_skipped() -> None:
    answer = stats_answer("example.com")
    answer["domainStats"] += [
        {"metric": "spam_rate", "date": {"year": 2026, "month": 13, "day": 1}, "value": {}},
        {"metric": "not_ours", "date": {"year": 2026, "month": 12, "day": 4}, "value": {}},
        {"metric": "spam_rate", "date": {"year": 2026, "month": 12, "day": 5}, "value": 42},
        {"metric": "spam_rate", "date": {"year": 2026, "month": 12, "day": 5},
         "value": {"doubleValue": 7.5}},  # a rate over 1 is not a rate
        "text",
    ]  # fmt: skip

    collected, _ = parse_stats(_json(answer))

    assert collected.malformed == 5
    day = newest_day(collected)
    assert day is not None and day.date == dt.date(2026, 12, 4)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"domainStats": 3}'])
def test_stats_body_that_is_not_the_documented_object_is_malformed(body: bytes) -> None:
    with pytest.raises(FeedError) as caught:
        parse_stats(body)

    assert caught.value.kind is FeedErrorKind.MALFORMED


def test_stats_request_asks_every_documented_metric_daily() -> None:
    from agent.reputation.postmaster import stats_request

    body = stats_request(dt.date(2026, 11, 27), dt.date(2026, 12, 4))

    assert body["aggregationGranularity"] == "DAILY"
    (span,) = body["timeQuery"]["dateRanges"]["dateRanges"]
    assert span["start"] == {"year": 2026, "month": 11, "day": 27}
    assert span["end"] == {"year": 2026, "month": 12, "day": 4}
    standard = {d["baseMetric"]["standardMetric"] for d in body["metricDefinitions"]}
    assert standard == {
        "SPAM_RATE",
        "AUTH_SUCCESS_RATE",
        "TLS_ENCRYPTION_RATE",
        "DELIVERY_ERROR_RATE",
    }
    assert len(body["metricDefinitions"]) == len(METRICS) == 15


def test_compliance_rows_say_compliant_or_needs_work_and_unknown_rows_are_skipped() -> None:
    answer = compliance_answer("example.com")
    answer["complianceData"]["rowData"] += [
        {"requirement": "SOMETHING_NEW", "status": {"status": "COMPLIANT"}},
        {"requirement": "ENCRYPTION", "status": {"status": "STATE_UNSPECIFIED"}},
    ]

    rows, skipped = parse_compliance(_json(answer))

    assert dict(rows) == {
        ComplianceRequirement.SPF: True,
        ComplianceRequirement.DKIM: True,
        ComplianceRequirement.DMARC_POLICY: True,
        ComplianceRequirement.USER_REPORTED_SPAM_RATE: False,
        ComplianceRequirement.ONE_CLICK_UNSUBSCRIBE: False,
    }
    assert skipped == 2


# --- SNDS -----------------------------------------------------------------------------------------


def test_snds_data_rows_give_each_ip_its_period() -> None:
    records, skipped = parse_data(SNDS_DATA)

    assert skipped == 0
    by_ip = {r.ip: r for r in records}
    assert by_ip["192.0.2.10"].filter_result is FilterResult.GREEN
    assert by_ip["192.0.2.10"].complaint_ratio == 0.001  # "< 0.1%": its bound
    assert by_ip["192.0.2.11"].filter_result is FilterResult.RED
    assert by_ip["192.0.2.11"].complaint_ratio == pytest.approx(0.023)
    assert by_ip["192.0.2.11"].trap_hits == 7
    assert (by_ip["192.0.2.11"].rcpt_commands, by_ip["192.0.2.11"].data_commands) == (5021, 5000)
    assert by_ip["192.0.2.11"].period_end == dt.datetime(2026, 12, 4, 9, tzinfo=dt.UTC).timestamp()


def test_snds_malformed_rows_are_counted_and_skipped() -> None:
    body = SNDS_DATA + (
        b"not-an-ip,12/03/2026 10:00 AM,12/04/2026 9:00 AM,1,1,1,GREEN,< 0.1%,,,0,h,m,\r\n"
        b"192.0.2.20,yesterday,12/04/2026 9:00 AM,1,1,1,GREEN,< 0.1%,,,0,h,m,\r\n"
        b"192.0.2.21,12/03/2026 10:00 AM,12/04/2026 9:00 AM,1,1,1,PURPLE,< 0.1%,,,0,h,m,\r\n"
        b"192.0.2.22,12/03/2026 10:00 AM\r\n"
        b"<html><body>Server Error</body></html>\r\n"
        b"\r\n"
    )

    records, skipped = parse_data(body)

    assert skipped == 5
    assert {r.ip for r in records} == {"192.0.2.10", "192.0.2.11", "192.0.2.12"}


def test_snds_ip_status_lists_blocked_ranges() -> None:
    ranges, skipped = parse_ip_status(
        SNDS_IP_STATUS + b"192.0.2.40,192.0.2.43,Yes,Blocked\r\n198.51.100.9,nonsense,Yes,x\r\n"
    )

    assert skipped == 1
    assert ["192.0.2.11" in r for r in ranges] == [True, False]
    assert ranges[1].size == 4


def test_snds_ips_beyond_the_cap_are_summed_as_other_with_the_worst_result() -> None:
    records, _ = parse_data(SNDS_DATA)
    ranges, _ = parse_ip_status(SNDS_IP_STATUS)

    fetched = combine(records, ranges, configured=(), cap=1, at=0.0, skipped=0)

    assert [r.ip for r in fetched.ips] == ["192.0.2.10", OTHER]
    other = fetched.ips[1]
    assert other.filter_result is FilterResult.RED
    assert other.trap_hits == 8
    assert other.recipients == 5012 + 295
    assert dict(fetched.blocked) == {"192.0.2.10": False, OTHER: True}


def test_snds_configured_ips_are_labelled_even_without_a_row() -> None:
    records, _ = parse_data(SNDS_DATA)
    ranges, _ = parse_ip_status(SNDS_IP_STATUS)

    fetched = combine(
        records, ranges, configured=("192.0.2.11", "203.0.113.5"), cap=20, at=0.0, skipped=0
    )

    assert [r.ip for r in fetched.ips] == ["192.0.2.11", OTHER]
    assert dict(fetched.blocked) == {"192.0.2.11": True, "203.0.113.5": False, OTHER: False}


# --- the schedule ---------------------------------------------------------------------------------


def test_backoff_doubles_from_a_minute_up_to_the_interval_with_jitter() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(n, interval=6 * HOUR, retry_after=None, rng=rng) for n in range(1, 12)]

    for n, delay in enumerate(delays, start=1):
        step = min(6 * HOUR, BACKOFF_FIRST * 2 ** (n - 1))
        assert step / 2 <= delay <= step
    assert max(delays) <= 6 * HOUR


def test_backoff_never_retries_before_retry_after() -> None:
    delay = backoff_delay(1, interval=6 * HOUR, retry_after=1800.0, rng=random.Random(1))

    assert delay == 1800.0


def test_retry_after_reads_seconds_and_http_dates_and_caps_at_a_day() -> None:
    now = dt.datetime(2026, 12, 6, 6, 0, tzinfo=dt.UTC).timestamp()

    assert retry_after_seconds("120", now=now) == 120.0
    assert retry_after_seconds("Sun, 06 Dec 2026 06:10:00 GMT", now=now) == 600.0
    assert retry_after_seconds("999999999", now=now) == 86400.0
    assert retry_after_seconds("soon", now=now) is None
    assert retry_after_seconds(None, now=now) is None


# --- series ---------------------------------------------------------------------------------------


def _recorder() -> tuple[Recorder, CollectorRegistry]:
    registry = new_registry()
    return Recorder(registry), registry


def _day_report(domain: str) -> DomainReport:
    collected, _ = parse_stats(_json(stats_answer(domain)))
    rows, _ = parse_compliance(_json(compliance_answer(domain)))
    return DomainReport(domain, newest_day(collected), rows)


def test_postmaster_series_show_the_newest_day_and_compliance() -> None:
    recorder, registry = _recorder()
    recorder.declare_reputation(domains=["example.com"], snds_ips=None, feeds=["postmaster"])

    recorder.record(PostmasterFetched((_day_report("example.com"),), at=1000.0))

    value = registry.get_sample_value
    assert value("deliverability_postmaster_data_available", {"domain": "example.com"}) == 1
    assert value("deliverability_postmaster_spam_ratio", {"domain": "example.com"}) == 0.0021
    assert (
        value("deliverability_postmaster_data_date_timestamp_seconds", {"domain": "example.com"})
        == dt.datetime(2026, 12, 4, tzinfo=dt.UTC).timestamp()
    )
    assert (
        value(
            "deliverability_postmaster_compliant",
            {"domain": "example.com", "requirement": "user_reported_spam_rate"},
        )
        == 0
    )
    assert (
        value(
            "deliverability_reputation_feed_last_success_timestamp_seconds", {"feed": "postmaster"}
        )
        == 1000.0
    )


def test_a_domain_without_data_loses_its_rates_instead_of_reading_zero() -> None:
    recorder, registry = _recorder()
    recorder.declare_reputation(domains=["example.com"], snds_ips=None, feeds=["postmaster"])
    recorder.record(PostmasterFetched((_day_report("example.com"),), at=1000.0))

    recorder.record(PostmasterFetched((DomainReport("example.com", None),), at=2000.0))

    value = registry.get_sample_value
    assert value("deliverability_postmaster_data_available", {"domain": "example.com"}) == 0
    assert value("deliverability_postmaster_spam_ratio", {"domain": "example.com"}) is None
    assert (
        value(
            "deliverability_postmaster_auth_success_ratio",
            {"domain": "example.com", "method": "spf"},
        )
        is None
    )
    assert (
        value("deliverability_postmaster_data_date_timestamp_seconds", {"domain": "example.com"})
        is None
    )


def test_declare_reputation_precreates_error_kinds_and_drops_what_is_unconfigured() -> None:
    recorder, registry = _recorder()
    recorder.declare_reputation(
        domains=["a.example", "b.example"], snds_ips=(), feeds=["postmaster", "snds"]
    )
    recorder.record(PostmasterFetched((_day_report("b.example"),), at=1.0))
    recorder.record(FeedFailed(Feed.SNDS, FeedErrorKind.QUOTA, 2.0))

    value = registry.get_sample_value
    for kind in FeedErrorKind:
        assert (
            value(
                "deliverability_reputation_feed_errors_total", {"feed": "postmaster", "kind": kind}
            )
            == 0
        )
    assert (
        value("deliverability_reputation_feed_errors_total", {"feed": "snds", "kind": "quota"}) == 1
    )

    recorder.declare_reputation(domains=["a.example"], snds_ips=None, feeds=["postmaster"])

    assert value("deliverability_postmaster_spam_ratio", {"domain": "b.example"}) is None
    assert value("deliverability_postmaster_data_available", {"domain": "b.example"}) is None
    assert value("deliverability_postmaster_data_available", {"domain": "a.example"}) == 0
    assert (
        value("deliverability_reputation_feed_errors_total", {"feed": "snds", "kind": "quota"})
        is None
    )


def test_snds_series_per_ip_and_an_ip_without_a_period_loses_them() -> None:
    recorder, registry = _recorder()
    recorder.declare_reputation(domains=[], snds_ips=(), feeds=["snds"])
    records, _ = parse_data(SNDS_DATA)
    ranges, _ = parse_ip_status(SNDS_IP_STATUS)
    recorder.record(combine(records, ranges, configured=(), cap=20, at=5.0, skipped=0))

    value = registry.get_sample_value
    assert value("deliverability_snds_filter_result", {"ip": "192.0.2.11", "result": "red"}) == 1
    assert value("deliverability_snds_filter_result", {"ip": "192.0.2.11", "result": "green"}) == 0
    assert value("deliverability_snds_trap_hits", {"ip": "192.0.2.11"}) == 7
    assert value("deliverability_snds_blocked", {"ip": "192.0.2.11"}) == 1
    assert value("deliverability_snds_messages", {"ip": "192.0.2.10", "kind": "rcpt"}) == 1895

    recorder.record(combine(records[:1], [], configured=(), cap=20, at=6.0, skipped=2))

    assert value("deliverability_snds_trap_hits", {"ip": "192.0.2.11"}) is None
    assert value("deliverability_snds_blocked", {"ip": "192.0.2.11"}) is None
    assert value("deliverability_snds_blocked", {"ip": records[0].ip}) == 0
    assert (
        value("deliverability_reputation_feed_errors_total", {"feed": "snds", "kind": "malformed"})
        == 2
    )


# --- configuration -------------------------------------------------------------------------------


def test_google_auth_defaults_to_the_postmaster_read_only_scope_not_gmail_s() -> None:
    from agent.config import Reputation
    from agent.config.reputation import POSTMASTER_SCOPE

    def scope(oauth2: dict[str, str]) -> str:
        section = Reputation.model_validate(
            {
                "google": {
                    "domains": ["Example.COM."],
                    "auth": {"username": "p@example.com", "oauth2": oauth2},
                }
            }
        )
        assert section.google is not None and section.google.domains == ("example.com",)
        assert section.google.auth.oauth2 is not None
        return section.google.auth.oauth2.scope

    refresh = {"provider": "google", "client_id": "c", "refresh_token": "r"}
    assert scope(refresh) == POSTMASTER_SCOPE
    assert POSTMASTER_SCOPE == "https://www.googleapis.com/auth/postmaster.traffic.readonly"
    wider = "https://www.googleapis.com/auth/postmaster"
    assert scope({**refresh, "scope": wider}) == wider
