"""The one place a probe gets its final outcome: ledger first, then metrics, then waiters.

The sender (SMTP verdicts), the matcher (arrivals) and the reaper (deadlines) all finalize through
here. The ledger's atomic `finalize` decides which of them wins, so each probe is counted exactly
once even when a watcher and the reaper race, and across restarts.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from agent.model import AuthVerdicts, BounceSource, BounceType, Outcome, ReplyClass, SendResult
from agent.monitoring.recorder import Recorder
from agent.smtp.replies import deciding_reply
from agent.store.ledger import Ledger, ProbeRecord

__all__ = ["FinalOutcome", "Outcomes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FinalOutcome:
    """What a waiter learns when a probe is finalized."""

    probe_id: str
    outcome: Outcome
    folder: str | None
    latency_seconds: float | None


class Outcomes:
    """Finalizes probes in the ledger and records each final outcome once in the metrics."""

    def __init__(self, ledger: Ledger, recorder: Recorder) -> None:
        self._ledger = ledger
        self._recorder = recorder
        self._waiters: dict[str, asyncio.Future[FinalOutcome]] = {}

    def finalize(
        self,
        record: ProbeRecord,
        outcome: Outcome,
        *,
        finished_at: float,
        folder: str | None = None,
        latency_seconds: float | None = None,
        auth: AuthVerdicts | None = None,
    ) -> bool:
        """True when this call set the outcome; False when another path already had."""
        won = self._ledger.finalize(
            record.probe_id,
            outcome=outcome,
            finished_at=finished_at,
            folder=folder,
            latency_seconds=latency_seconds,
            auth=auth,
        )
        if not won:
            return False
        self._recorder.probe_final(
            record.route,
            record.mailbox,
            outcome,
            finished_at=finished_at,
            latency_seconds=latency_seconds,
            auth=auth,
        )
        log.info(
            "probe %s %s -> %s: %s%s",
            record.probe_id,
            record.route,
            record.mailbox,
            outcome,
            f" in {latency_seconds:.2f} s" if latency_seconds is not None else "",
        )
        self.refresh_in_flight()
        waiter = self._waiters.pop(record.probe_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(FinalOutcome(record.probe_id, outcome, folder, latency_seconds))
        return True

    def late(
        self, record: ProbeRecord, *, seen_at: float, folder: str, latency_seconds: float
    ) -> bool:
        """A probe already final as `missing` showed up; counted once."""
        if not self._ledger.mark_late(
            record.probe_id, seen_at=seen_at, folder=folder, latency_seconds=latency_seconds
        ):
            return False
        self._recorder.probe_late(record.route, record.mailbox)
        log.info(
            "probe %s %s -> %s arrived late in %s after %.1f s",
            record.probe_id,
            record.route,
            record.mailbox,
            folder,
            latency_seconds,
        )
        return True

    def bounce(
        self,
        record: ProbeRecord,
        bounce_type: BounceType,
        source: BounceSource,
        *,
        status: str | None,
        reporting_mta: str | None,
        seen_at: float,
    ) -> bool:
        """Count a bounce of the probe once per type and source; True when this call counted it."""
        if not self._ledger.record_bounce(
            record.probe_id,
            bounce_type=bounce_type,
            source=source,
            status=status,
            reporting_mta=reporting_mta,
            seen_at=seen_at,
        ):
            return False
        self._recorder.bounce(record.route, bounce_type, source)
        log.info(
            "probe %s %s -> %s: %s bounce (%s) %s from %s",
            record.probe_id,
            record.route,
            record.mailbox,
            bounce_type,
            source,
            status or "no status code",
            reporting_mta or "unknown MTA",
        )
        return True

    def smtp_verdict(
        self, record: ProbeRecord, result: SendResult, verdict: Outcome, *, finished_at: float
    ) -> None:
        """Finalize a probe the SMTP server answered for; a 5xx or 4xx also counts as a bounce."""
        reply = deciding_reply(result)
        if result.error is None and reply is not None:
            kind = {ReplyClass.PERMANENT: BounceType.HARD, ReplyClass.TRANSIENT: BounceType.SOFT}
            bounce_type = kind.get(reply.reply_class)
            if bounce_type is not None:
                self.bounce(
                    record,
                    bounce_type,
                    BounceSource.SMTP,
                    status=reply.enhanced_code,
                    reporting_mta=None,
                    seen_at=finished_at,
                )
        self.finalize(record, verdict, finished_at=finished_at)

    def refresh_in_flight(self) -> None:
        self._recorder.set_in_flight(self._ledger.in_flight_counts())

    def wait(self, probe_id: str) -> asyncio.Future[FinalOutcome]:
        """A future resolved when the probe is finalized (at once if it already is)."""
        loop = asyncio.get_running_loop()
        future = self._waiters.get(probe_id)
        if future is None:
            future = loop.create_future()
            self._waiters[probe_id] = future
        record = self._ledger.get(probe_id)
        if record is not None and record.outcome is not None and not future.done():
            self._waiters.pop(probe_id, None)
            future.set_result(
                FinalOutcome(probe_id, record.outcome, record.folder, record.latency_seconds)
            )
        return future
