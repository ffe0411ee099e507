"""Counting the reports of one report mailbox: messages in, bounded metrics out, each report once.

The watcher hands every message of the mailbox over (again after each restart); the reader:

1. skips a message it read before (a digest of its bytes in `ReportStore`);
2. reads its reports (`agent.reading.reports`, pure and hostile-input safe);
3. stores the message, its reports and their volumes in one transaction, which says which
   reports are new: a reporter's report id counted before makes a `duplicate`;
4. records the new reports' rows, with labels bounded per mailbox: the `top_sources` source IPs,
   `max_orgs` organisations and `max_domains` domains with the largest volume keep their own
   label, the rest are `other`. The top values are taken from the store at start (largest
   first); after that a new value gets a free place if there is one. A report's rows are taken
   largest first, so among new values the big ones win the free places. Values never lose their
   place while the agent runs, so counters stay continuous.

A series created when first seen already holding the report's count would hide that count from
`rate()` and `increase()`, which need a sample before the jump: a label set's first count creates
its series at zero at once, and is added `first_seen_delay` later (more than any scrape interval;
reports are daily, so minutes do not matter). `flush()` adds what is still waiting, at stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Final

from agent.config import ReportMailbox
from agent.model import (
    DmarcCounted,
    NewestReport,
    ReportRead,
    ReportResult,
    TlsSessionsCounted,
)
from agent.monitoring.recorder import Recorder
from agent.reading.reports import (
    INVALID,
    OTHER,
    DmarcReport,
    TlsReport,
    Unreadable,
    read_reports,
)
from agent.reports.store import CountedReport, ReportStore

__all__ = ["FIRST_SEEN_DELAY", "SUCCESS", "LabelCap", "ReportReader"]

log = logging.getLogger(__name__)

SUCCESS: Final = "success"
FIRST_SEEN_DELAY: Final = 300.0  # seconds between a series' zero and its first count
_SOURCE, _ORG, _DOMAIN = "source", "org", "domain"  # the store's volume labels


class LabelCap:
    """At most `limit` distinct values keep their own label; the rest are `other`."""

    def __init__(self, limit: int, initial: Iterable[str] = ()) -> None:
        self._limit = limit
        self._kept: set[str] = set()
        for value in initial:
            self.label(value)

    def label(self, value: str) -> str:
        if value in self._kept or value in (INVALID, OTHER):
            return value
        if len(self._kept) < self._limit:
            self._kept.add(value)
            return value
        return OTHER


class ReportReader:
    """Reads one report mailbox's messages into metrics; call from the event loop."""

    def __init__(
        self,
        mailbox: ReportMailbox,
        *,
        store: ReportStore,
        recorder: Recorder,
        clock: Callable[[], float] = time.time,
        first_seen_delay: float = FIRST_SEEN_DELAY,
    ) -> None:
        self._name = mailbox.name
        self._first_seen_delay = first_seen_delay
        self._created: set[DmarcCounted | TlsSessionsCounted] = set()  # label sets, count 0
        self._waiting: list[DmarcCounted | TlsSessionsCounted] = []
        self._waiting_keys: set[DmarcCounted | TlsSessionsCounted] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._store = store
        self._recorder = recorder
        self._clock = clock
        name = mailbox.name
        self._sources = LabelCap(mailbox.top_sources, store.top(name, _SOURCE, mailbox.top_sources))
        self._orgs = LabelCap(mailbox.max_orgs, store.top(name, _ORG, mailbox.max_orgs))
        self._domains = LabelCap(mailbox.max_domains, store.top(name, _DOMAIN, mailbox.max_domains))
        self._newest = store.newest_ends(name)
        for kind, end in sorted(self._newest.items()):
            recorder.record(NewestReport(name, kind, end))

    async def handle(self, raw: bytes, *, truncated: bool = False) -> bool:
        """Count the reports of one message once; whether the message was read now and held only
        reports (counted or duplicates), so that `cleanup: delete` may delete it: a message with
        an unreadable attachment stays for the operator. Raises `sqlite3.Error` when the store
        cannot be written (nothing is counted then: the caller hands the message over again)."""
        digest = hashlib.sha256(raw).digest()
        if self._store.seen(self._name, digest):
            return False
        # Off the event loop: a 20 MiB report takes a while to decompress and parse.
        found = await asyncio.to_thread(read_reports, raw, truncated=truncated)
        reports = [item for item in found if not isinstance(item, Unreadable)]
        fresh = self._store.record(
            self._name, digest, [_counted(report) for report in reports], now=self._clock()
        )
        for item in found:
            if isinstance(item, Unreadable):
                log.warning(
                    "report mailbox %s: skipped a %s report (%s): %r",
                    self._name,
                    item.kind,
                    item.problem,
                    item.detail[:200],
                )
                self._recorder.record(ReportRead(self._name, item.kind, item.problem))
        for report, new in zip(reports, fresh, strict=True):
            if not new:
                log.info(
                    "report mailbox %s: %s report %r of %r counted before: a duplicate",
                    self._name,
                    report.kind,
                    report.report_id[:100],
                    report.org,
                )
                self._recorder.record(ReportRead(self._name, report.kind, ReportResult.DUPLICATE))
                continue
            if isinstance(report, DmarcReport):
                self._count_dmarc(report)
            else:
                self._count_tls(report)
            self._recorder.record(ReportRead(self._name, report.kind, ReportResult.COUNTED))
            if report.end > self._newest.get(report.kind, float("-inf")):
                # The newest period, not the last one read: reports arrive out of order.
                self._newest[report.kind] = report.end
                self._recorder.record(NewestReport(self._name, report.kind, report.end))
        return len(reports) == len(found)

    def _add(self, counted: DmarcCounted | TlsSessionsCounted) -> None:
        key = dataclasses.replace(counted, count=0)
        if key in self._created and key not in self._waiting_keys:
            self._recorder.record(counted)
            return
        if key not in self._created:
            self._created.add(key)
            self._recorder.record(key)  # the series, at zero, for a scrape to see first
        self._waiting.append(counted)
        self._waiting_keys.add(key)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._first_seen_delay, self.flush)

    def flush(self) -> None:
        """Add the counts still waiting for their series' first scrape (at the delay, or stop)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, []
        self._waiting_keys.clear()
        for counted in waiting:
            self._recorder.record(counted)

    def _count_dmarc(self, report: DmarcReport) -> None:
        org = self._orgs.label(report.org)
        # Rows summed per label set first: a large report (thousands of rows, most of them
        # `other` once bounded) costs the event loop one record per series, not per row.
        summed: dict[DmarcCounted, int] = {}
        for row in sorted(report.rows, key=lambda row: -row.count):
            key = DmarcCounted(
                mailbox=self._name,
                org=org,
                header_from=self._domains.label(row.header_from),
                disposition=row.disposition,
                dkim=row.dkim,
                spf=row.spf,
                source_ip=self._sources.label(row.source_ip),
                count=0,
            )
            summed[key] = summed.get(key, 0) + row.count
        for key, count in summed.items():
            self._add(dataclasses.replace(key, count=count))

    def _count_tls(self, report: TlsReport) -> None:
        org = self._orgs.label(report.org)
        for policy in report.policies:
            domain = self._domains.label(policy.policy_domain)
            # A report's failure details may add up to less than its summary (or more: Mail.ru's
            # sample counts one failure twice); the details decide, any shortfall is `other`.
            failures = dict(policy.failures)
            shortfall = policy.failed - sum(failures.values())
            if shortfall > 0:
                failures[OTHER] = failures.get(OTHER, 0) + shortfall
            for result, count in (
                (SUCCESS, policy.successful),
                *sorted(failures.items()),
            ):
                self._add(
                    TlsSessionsCounted(
                        mailbox=self._name,
                        org=org,
                        policy_domain=domain,
                        policy_type=policy.policy_type,
                        result=result,
                        count=count,
                    )
                )


def _counted(report: DmarcReport | TlsReport) -> CountedReport:
    volumes: dict[tuple[str, str], int] = {}

    def add(label: str, value: str, amount: int) -> None:
        volumes[label, value] = volumes.get((label, value), 0) + amount

    if isinstance(report, DmarcReport):
        for row in report.rows:
            add(_SOURCE, row.source_ip, row.count)
            add(_DOMAIN, row.header_from, row.count)
            add(_ORG, report.org, row.count)
    else:
        for policy in report.policies:
            sessions = policy.successful + policy.failed
            add(_DOMAIN, policy.policy_domain, sessions)
            add(_ORG, report.org, sessions)
    return CountedReport(
        kind=report.kind,
        org=report.org,
        report_id=report.report_id,
        end=report.end,
        volumes=tuple((label, value, amount) for (label, value), amount in volumes.items()),
    )
