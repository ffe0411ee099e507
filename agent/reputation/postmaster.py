"""Gmail Postmaster Tools API v2: per configured domain, its newest day of statistics and its
bulk-sender compliance status.

Google's reference (https://developers.google.com/workspace/gmail/postmaster/reference/rest/v2;
the discovery document gmailpostmastertools.v2.json, revision 20260512):
- `POST /v2/domains/{domain}/domainStats:query` with `metricDefinitions` (a `name` of ours, a
  `baseMetric.standardMetric` and a `filter`), a `timeQuery.dateRanges` and `DAILY` granularity;
  the answer's `domainStats[]` carry `metric` (our name), `date` {year, month, day} and `value`
  (`doubleValue` / `floatValue` / `intValue`). Dates without data are left out: a domain with no
  day in the window has no data (Google publishes none below roughly 50 Gmail users a day).
- `GET /v2/domains/{domain}/complianceStatus`: `complianceData.rowData[]` of `requirement` and
  `status.status` (`COMPLIANT` / `NEEDS_WORK`); `subdomainComplianceData` for a subdomain.
`domains.list` is not called: it needs the `postmaster.domain` scope, and the domains to read are
configured. Parsing is pure (`parse_stats`, `parse_compliance`); entries that are not the
documented shape are counted and skipped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from agent.oauth.token_source import TokenError, TokenSource
from agent.reputation.http import FeedHttp
from agent.reputation.model import (
    DELIVERY_ERRORS,
    ComplianceRequirement,
    DeliveryError,
    DomainDay,
    DomainReport,
    FeedError,
    FeedErrorKind,
    PostmasterFetched,
)

__all__ = ["METRICS", "PostmasterClient", "parse_compliance", "parse_stats", "stats_request"]

_MAX_PAGES: Final = 20  # 15 metrics x 30 days fit in 3 pages of 200; more is a server loop


@dataclass(frozen=True, slots=True)
class _Metric:
    name: str  # ours, echoed back in DomainStat.metric
    standard: str
    filter: str = ""


def _metrics() -> tuple[_Metric, ...]:
    found = [_Metric("spam_rate", "SPAM_RATE")]
    found += [
        _Metric(f"auth_{method}", "AUTH_SUCCESS_RATE", f'auth_type = "{method}"')
        for method in ("spf", "dkim", "dmarc")
    ]
    found.append(_Metric("tls_inbound", "TLS_ENCRYPTION_RATE", 'traffic_direction = "inbound"'))
    found += [
        _Metric(
            f"error_{kind}_{reason}",
            "DELIVERY_ERROR_RATE",
            f'error_type = "{kind}" AND error_reason = "{reason}"',
        )
        for kind, reason in DELIVERY_ERRORS
    ]
    return tuple(found)


METRICS: Final = _metrics()
_BY_NAME: Final = {metric.name: metric for metric in METRICS}


def stats_request(start: dt.date, end: dt.date, page_token: str = "") -> dict[str, Any]:
    """The domainStats:query body for the days start..end (inclusive)."""
    body: dict[str, Any] = {
        "metricDefinitions": [
            {"name": m.name, "baseMetric": {"standardMetric": m.standard}}
            | ({"filter": m.filter} if m.filter else {})
            for m in METRICS
        ],
        "timeQuery": {"dateRanges": {"dateRanges": [{"start": _date(start), "end": _date(end)}]}},
        "aggregationGranularity": "DAILY",
        "pageSize": 200,
    }
    if page_token:
        body["pageToken"] = page_token
    return body


def _date(day: dt.date) -> dict[str, int]:
    return {"year": day.year, "month": day.month, "day": day.day}


@dataclass(slots=True)
class _Collected:
    values: dict[dt.date, dict[str, float]] = field(default_factory=dict)
    malformed: int = 0


def parse_stats(body: bytes, into: _Collected | None = None) -> tuple[_Collected, str]:
    """One page of a domainStats:query answer: values by day and metric name, and the next page
    token. Raises FeedError(MALFORMED) when the body is not a JSON object."""
    collected = into if into is not None else _Collected()
    document = _object(body)
    stats = document.get("domainStats", [])
    if not isinstance(stats, list):
        raise FeedError(FeedErrorKind.MALFORMED, "domainStats is not a list")
    for entry in stats:
        parsed = _stat(entry)
        if parsed is None:
            collected.malformed += 1
            continue
        day, name, value = parsed
        collected.values.setdefault(day, {})[name] = value
    token = document.get("nextPageToken", "")
    return collected, token if isinstance(token, str) else ""


def _object(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FeedError(FeedErrorKind.MALFORMED, "the answer is not JSON") from None
    if not isinstance(document, dict):
        raise FeedError(FeedErrorKind.MALFORMED, "the answer is not a JSON object")
    return document


def _stat(entry: Any) -> tuple[dt.date, str, float] | None:
    if not isinstance(entry, dict) or entry.get("metric") not in _BY_NAME:
        return None
    date, value = entry.get("date"), entry.get("value")
    if not isinstance(date, dict) or not isinstance(value, dict):
        return None
    try:
        day = dt.date(int(date["year"]), int(date["month"]), int(date["day"]))
    except (KeyError, TypeError, ValueError):
        return None
    number = _number(value)
    # Rates are ratios 0..1 (v1's userReportedSpamRatio and friends were): anything else is not
    # the documented value.
    if number is None or not 0.0 <= number <= 1.0:
        return None
    return day, entry["metric"], number


def _number(value: dict[str, Any]) -> float | None:
    for key in ("doubleValue", "floatValue", "intValue"):
        raw = value.get(key)
        if raw is None or isinstance(raw, bool):
            continue
        try:
            number = float(raw)  # intValue is an int64 sent as a string
        except (TypeError, ValueError):
            return None
        return number if math.isfinite(number) else None
    return None


def newest_day(collected: _Collected) -> DomainDay | None:
    """The newest day that has any value; None: no data in the window."""
    if not collected.values:
        return None
    day = max(collected.values)
    values = collected.values[day]
    return DomainDay(
        date=day,
        spam_ratio=values.get("spam_rate"),
        auth_success=tuple(
            (method, values[f"auth_{method}"])
            for method in ("spf", "dkim", "dmarc")
            if f"auth_{method}" in values
        ),
        tls_inbound_ratio=values.get("tls_inbound"),
        delivery_errors=tuple(
            DeliveryError(kind, reason, values[f"error_{kind}_{reason}"])
            for kind, reason in DELIVERY_ERRORS
            if f"error_{kind}_{reason}" in values
        ),
    )


def parse_compliance(body: bytes) -> tuple[tuple[tuple[ComplianceRequirement, bool], ...], int]:
    """The compliance rows (requirement, compliant) of a complianceStatus answer, and how many
    rows were skipped (unknown requirement or status). The subdomain's own data wins."""
    document = _object(body)
    data = document.get("subdomainComplianceData") or document.get("complianceData") or {}
    rows = data.get("rowData", []) if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise FeedError(FeedErrorKind.MALFORMED, "complianceData.rowData is not a list")
    found: dict[ComplianceRequirement, bool] = {}
    skipped = 0
    for row in rows:
        parsed = _compliance_row(row)
        if parsed is None:
            skipped += 1
        else:
            found[parsed[0]] = parsed[1]
    return tuple(sorted(found.items())), skipped


def _compliance_row(row: Any) -> tuple[ComplianceRequirement, bool] | None:
    if not isinstance(row, dict) or not isinstance(row.get("requirement"), str):
        return None
    try:
        requirement = ComplianceRequirement(row["requirement"].lower())
    except ValueError:
        return None
    status = row.get("status")
    state = status.get("status") if isinstance(status, dict) else None
    if state == "COMPLIANT":
        return requirement, True
    if state == "NEEDS_WORK":
        return requirement, False
    return None


class PostmasterClient:
    """Fetches the configured domains, one after the other (quota: a few requests a domain)."""

    def __init__(
        self,
        *,
        base_url: str,
        domains: tuple[str, ...],
        tokens: TokenSource,
        http: FeedHttp,
        days: int,
        clock: Callable[[], float],
    ) -> None:
        self._base = base_url
        self._domains = domains
        self._tokens = tokens
        self._http = http
        self._days = days
        self._clock = clock

    async def fetch(self) -> tuple[PostmasterFetched, list[FeedError]]:
        """Every domain that could be read, and the errors of those that could not. Errors that
        would repeat for every domain (auth, quota, timeout) end the fetch: raised."""
        today = dt.datetime.fromtimestamp(self._clock(), dt.UTC).date()
        start = today - dt.timedelta(days=self._days)
        reports: list[DomainReport] = []
        errors: list[FeedError] = []
        malformed = 0
        for domain in self._domains:
            try:
                report, skipped = await self._domain(domain, start, today)
            except FeedError as exc:
                if exc.kind in (FeedErrorKind.AUTH, FeedErrorKind.QUOTA, FeedErrorKind.TIMEOUT):
                    raise
                errors.append(exc)
                continue
            reports.append(report)
            malformed += skipped
        return PostmasterFetched(tuple(reports), at=self._clock(), malformed=malformed), errors

    async def _domain(self, domain: str, start: dt.date, end: dt.date) -> tuple[DomainReport, int]:
        name = quote(domain, safe="")
        collected = _Collected()
        token = ""
        for _ in range(_MAX_PAGES):
            body = await self._call(
                "POST",
                f"{self._base}/v2/domains/{name}/domainStats:query",
                json=stats_request(start, end, token),
                domain=domain,
            )
            # Up to MAX_BODY of JSON: parsed in a worker thread, so probing never waits for it.
            collected, token = await asyncio.to_thread(parse_stats, body, collected)
            if not token:
                break
        body = await self._call(
            "GET", f"{self._base}/v2/domains/{name}/complianceStatus", domain=domain
        )
        compliance, skipped = await asyncio.to_thread(parse_compliance, body)
        report = DomainReport(domain, newest_day(collected), compliance)
        return report, collected.malformed + skipped

    async def _call(self, method: str, url: str, *, domain: str, json: Any = None) -> bytes:
        try:
            token = await self._tokens.access_token()
        except TokenError as exc:
            raise FeedError(FeedErrorKind.AUTH, f"no access token: {exc}") from None
        try:
            return await self._http.request(
                method,
                url,
                headers={"Authorization": f"Bearer {token.value}", "Accept": "application/json"},
                json=json,
            )
        except FeedError as exc:
            if exc.kind is FeedErrorKind.AUTH:
                self._tokens.refused(token)  # the next fetch asks for a new one
            raise FeedError(
                exc.kind, f"domain {domain}: {exc}", retry_after=exc.retry_after
            ) from None
