"""The one place probe results are written down: the ledger first, then the recorder, then waiters.

The sender (send results, SMTP verdicts), the matcher (arrivals, bounces, skipped messages) and the
reaper (deadlines) all go through here, and nothing else in the probe loop touches the recorder.
The ledger's atomic writes decide which path wins, so each probe is counted exactly once even when
a watcher and the reaper race, and across restarts. The ledger is also the only place where the
sender and the matcher meet: an arrival seen before the send result was stored is stored on the
probe and finalized from there (`settle_arrival`), never kept in memory.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import Any

from agent.log_fields import probe_fields
from agent.model import (
    Arrival,
    BounceCounted,
    BounceReason,
    BounceSource,
    BounceType,
    EspComplaint,
    EspDelivered,
    EspEventReceived,
    EspEventType,
    EspReceiverStage,
    EspSuppressed,
    EspUnmatched,
    InFlight,
    MessageSkipped,
    Outcome,
    PairInFlight,
    ProbeFinished,
    ProbeLate,
    ProbeSent,
    ReplyClass,
    SendResult,
    SkipReason,
    SmtpTransaction,
    WebhookRefused,
)
from agent.monitoring.recorder import Recorder
from agent.reading.bounces import bounce_reason
from agent.smtp.replies import deciding_reply
from agent.store.ledger import Ledger, ProbeRecord, ProbeState

__all__ = ["FinalOutcome", "Outcomes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FinalOutcome:
    """What a waiter learns when a probe is finalized."""

    probe_id: str
    outcome: Outcome
    folder: str | None
    latency_seconds: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Bounce:
    """A bounce as the ledger stores it (`Ledger.record_bounce`'s arguments)."""

    bounce_type: BounceType
    source: BounceSource
    status: str | None
    reporting_mta: str | None
    seen_at: float
    reason: BounceReason = BounceReason.OTHER
    smtp_code: str | None = None
    action: str | None = None
    recipient: str | None = None
    original_message_id: str | None = None

    def fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def _latency(record: ProbeRecord, arrival: Arrival) -> float | None:
    """Seconds from the 250 to end of data to the sighting; None when the 250 was never stored
    (the probe was seen, then a restart cut its transaction)."""
    if record.accepted_at is None:
        return None
    # Sender and watcher share one clock; a negative value can only be a clock step.
    return max(0.0, arrival.seen_at - record.accepted_at)


class Outcomes:
    """Writes probe results to the ledger and hands each, once, to the recorder."""

    def __init__(self, ledger: Ledger, recorder: Recorder) -> None:
        self._ledger = ledger
        self._recorder = recorder
        self._waiters: dict[str, asyncio.Future[FinalOutcome]] = {}
        # Open probes per pair, kept in step with the ledger by the writes below, so each probe
        # event updates one gauge child instead of recounting every pair.
        self._in_flight: collections.Counter[tuple[str, str]] = collections.Counter()

    # -- the sender's side ------------------------------------------------------------------------

    def sending(
        self, *, probe_id: str, route: str, mailbox: str, created_at: float, deadline_at: float
    ) -> None:
        """A probe is about to be sent: on disk first, so a crash mid-send is known."""
        self._ledger.record_sending(
            probe_id=probe_id,
            route=route,
            mailbox=mailbox,
            created_at=created_at,
            deadline_at=deadline_at,
        )
        self._recorder.record(ProbeSent(route, mailbox))
        self._in_flight_changed((route, mailbox), +1)

    def sent(
        self, probe_id: str, result: SendResult, *, esp_message_id: str | None = None
    ) -> ProbeRecord:
        """The SMTP transaction ended: store and record its result (with the ESP's message id
        from its 250, on a route with an ESP); the probe as stored now."""
        self._ledger.record_send_result(probe_id, result, esp_message_id=esp_message_id)
        record = self._ledger.get(probe_id)
        assert record is not None  # recorded by `sending`
        self._recorder.record(SmtpTransaction(record.route, result))
        return record

    def sent_with_verdict(
        self, probe_id: str, result: SendResult, verdict: Outcome, *, finished_at: float
    ) -> ProbeRecord:
        """The SMTP transaction ended with the server's verdict (or an error): its result, the
        bounce a 4xx/5xx makes and the outcome are stored in one ledger transaction (one fsync
        instead of three), then recorded. The probe as stored before it was finalized."""
        with self._ledger.transaction():
            self._ledger.record_send_result(probe_id, result)
            record = self._ledger.get(probe_id)
            assert record is not None  # recorded by `sending`
            bounce, won = self._store_verdict(record, result, verdict, finished_at=finished_at)
        self._recorder.record(SmtpTransaction(record.route, result))
        self._counted(record, bounce, verdict, won, finished_at=finished_at)
        return record

    def smtp_verdict(
        self, record: ProbeRecord, result: SendResult, verdict: Outcome, *, finished_at: float
    ) -> None:
        """Finalize a probe the SMTP server answered for; a 5xx or 4xx also counts as a bounce
        (one ledger transaction for both)."""
        with self._ledger.transaction():
            bounce, won = self._store_verdict(record, result, verdict, finished_at=finished_at)
        self._counted(record, bounce, verdict, won, finished_at=finished_at)

    def _store_verdict(
        self, record: ProbeRecord, result: SendResult, verdict: Outcome, *, finished_at: float
    ) -> tuple[_Bounce | None, bool]:
        """The ledger half of an SMTP verdict: (the bounce if this call stored it, whether this
        call set the outcome). Counts nothing: the caller's transaction may still fail."""
        bounce: _Bounce | None = None
        reply = deciding_reply(result)
        if result.error is None and reply is not None:
            kind = {ReplyClass.PERMANENT: BounceType.HARD, ReplyClass.TRANSIENT: BounceType.SOFT}
            bounce_type = kind.get(reply.reply_class)
            if bounce_type is not None:
                bounce = _Bounce(
                    bounce_type=bounce_type,
                    source=BounceSource.SMTP,
                    status=reply.enhanced_code,
                    reporting_mta=None,
                    seen_at=finished_at,
                    reason=bounce_reason(reply.enhanced_code, str(reply.code), reply.text),
                    smtp_code=str(reply.code),
                )
                if not self._ledger.record_bounce(record.probe_id, **bounce.fields()):
                    bounce = None
        won = self._ledger.finalize(record.probe_id, outcome=verdict, finished_at=finished_at)
        return bounce, won

    def _counted(
        self,
        record: ProbeRecord,
        bounce: _Bounce | None,
        verdict: Outcome,
        won: bool,
        *,
        finished_at: float,
    ) -> None:
        """The recorder half of an SMTP verdict, once its transaction committed."""
        if bounce is not None:
            self._bounce_counted(record, bounce)
        if won:
            self._finished(record, verdict, finished_at=finished_at)

    # -- the reader's side ------------------------------------------------------------------------

    def arrived(self, record: ProbeRecord, arrival: Arrival) -> None:
        """A probe was seen in its mailbox: finalize it with its placement, store the arrival
        for the sender while it is still being sent, or count it late if it was missing."""
        fields = probe_fields(route=record.route, mailbox=record.mailbox, probe_id=record.probe_id)
        if record.outcome is None:
            if record.state is ProbeState.SENDING:
                # Seen before the sender stored its 250: the sender (or the next start) finalizes
                # the probe from the stored arrival.
                self._ledger.record_arrival(arrival)
                log.debug(
                    "probe %s seen in %s before its send result",
                    record.probe_id,
                    arrival.folder,
                    extra=fields,
                )
                return
            self.finalize(
                record,
                arrival.placement,
                finished_at=arrival.seen_at,
                latency_seconds=_latency(record, arrival),
                arrival=arrival,
            )
            return
        latency = _latency(record, arrival)
        if record.outcome is Outcome.MISSING and latency is not None:
            self.late(
                record, seen_at=arrival.seen_at, folder=arrival.folder, latency_seconds=latency
            )
        else:
            log.debug(
                "probe %s seen again in %s; already %s",
                record.probe_id,
                arrival.folder,
                record.outcome,
                extra=fields,
            )

    def settle_arrival(self, record: ProbeRecord) -> bool:
        """Finalize a probe from the arrival stored on it, if any; True when this call did."""
        arrival = record.arrival
        if record.outcome is not None or arrival is None:
            return False
        return self.finalize(
            record,
            arrival.placement,
            finished_at=arrival.seen_at,
            latency_seconds=_latency(record, arrival),
            arrival=arrival,
        )

    def interrupted(self, record: ProbeRecord, *, at: float) -> None:
        """A restart found the probe's transaction cut before its result was stored: it may have
        been accepted, so it stays open until its deadline (seen: its placement; not: error)."""
        if self._ledger.mark_interrupted(record.probe_id, at=at):
            log.info(
                "probe %s %s -> %s: its SMTP transaction was interrupted by a restart; waiting "
                "for it until its deadline",
                record.probe_id,
                record.route,
                record.mailbox,
                extra=probe_fields(
                    route=record.route, mailbox=record.mailbox, probe_id=record.probe_id
                ),
            )

    def interrupted_unseen(self, record: ProbeRecord, *, finished_at: float) -> bool:
        """An interrupted probe reached its deadline unseen: `error`, never `missing` (nobody
        knows that it was accepted). True when this call finalized it."""
        if not self.finalize(record, Outcome.ERROR, finished_at=finished_at):
            return False
        log.warning(
            "probe %s %s -> %s: error: interrupted by a restart mid-transaction and not seen by "
            "its deadline",
            record.probe_id,
            record.route,
            record.mailbox,
            extra=probe_fields(
                route=record.route, mailbox=record.mailbox, probe_id=record.probe_id
            ),
        )
        return True

    def skipped(self, mailbox: str, reason: SkipReason) -> None:
        """A message in a seed mailbox was counted and skipped (malformed or forged)."""
        self._recorder.record(MessageSkipped(mailbox, reason))

    # -- final outcomes ---------------------------------------------------------------------------

    def finalize(
        self,
        record: ProbeRecord,
        outcome: Outcome,
        *,
        finished_at: float,
        latency_seconds: float | None = None,
        arrival: Arrival | None = None,
    ) -> bool:
        """True when this call set the outcome; False when another path already had."""
        won = self._ledger.finalize(
            record.probe_id,
            outcome=outcome,
            finished_at=finished_at,
            latency_seconds=latency_seconds,
            arrival=arrival,
        )
        if not won:
            return False
        self._finished(record, outcome, finished_at, latency_seconds, arrival)
        return True

    def _finished(
        self,
        record: ProbeRecord,
        outcome: Outcome,
        finished_at: float,
        latency_seconds: float | None = None,
        arrival: Arrival | None = None,
    ) -> None:
        """Count, log and announce an outcome the ledger just stored."""
        self._recorder.record(
            ProbeFinished(
                record.route,
                record.mailbox,
                outcome,
                finished_at=finished_at,
                latency_seconds=latency_seconds,
                arrival=arrival,
            )
        )
        log.info(
            "probe %s %s -> %s: %s%s",
            record.probe_id,
            record.route,
            record.mailbox,
            outcome,
            f" in {latency_seconds:.2f} s" if latency_seconds is not None else "",
            extra=probe_fields(
                route=record.route, mailbox=record.mailbox, probe_id=record.probe_id
            ),
        )
        if arrival is not None and record.esp_delivered_at is not None:
            # The ESP's delivered event came first: the receiver's stage ends with this sighting.
            seconds = arrival.seen_at - record.esp_delivered_at
            self._recorder.record(EspReceiverStage(record.route, seconds))
        self._in_flight_changed((record.route, record.mailbox), -1)
        waiter = self._waiters.pop(record.probe_id, None)
        if waiter is not None and not waiter.done():
            folder = arrival.folder if arrival is not None else None
            waiter.set_result(FinalOutcome(record.probe_id, outcome, folder, latency_seconds))

    def late(
        self, record: ProbeRecord, *, seen_at: float, folder: str, latency_seconds: float
    ) -> bool:
        """A probe already final as `missing` showed up; counted once."""
        if not self._ledger.mark_late(
            record.probe_id, seen_at=seen_at, folder=folder, latency_seconds=latency_seconds
        ):
            return False
        self._recorder.record(ProbeLate(record.route, record.mailbox))
        log.info(
            "probe %s %s -> %s arrived late in %s after %.1f s",
            record.probe_id,
            record.route,
            record.mailbox,
            folder,
            latency_seconds,
            extra=probe_fields(
                route=record.route, mailbox=record.mailbox, probe_id=record.probe_id
            ),
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
        reason: BounceReason = BounceReason.OTHER,
        smtp_code: str | None = None,
        action: str | None = None,
        recipient: str | None = None,
        original_message_id: str | None = None,
    ) -> bool:
        """Count a bounce of the probe once per type and source; True when this call counted it."""
        bounce = _Bounce(
            bounce_type=bounce_type,
            source=source,
            status=status,
            reporting_mta=reporting_mta,
            seen_at=seen_at,
            reason=reason,
            smtp_code=smtp_code,
            action=action,
            recipient=recipient,
            original_message_id=original_message_id,
        )
        if not self._ledger.record_bounce(record.probe_id, **bounce.fields()):
            return False
        self._bounce_counted(record, bounce)
        return True

    def _bounce_counted(self, record: ProbeRecord, bounce: _Bounce) -> None:
        """Count and log a bounce the ledger just stored."""
        self._recorder.record(
            BounceCounted(record.route, bounce.bounce_type, bounce.source, bounce.reason)
        )
        log.info(
            "probe %s %s -> %s: %s bounce (%s, %s) %s from %s",
            record.probe_id,
            record.route,
            record.mailbox,
            bounce.bounce_type,
            bounce.source,
            bounce.reason,
            bounce.status or "no status code",
            bounce.reporting_mta or "unknown MTA",
            extra=probe_fields(
                route=record.route, mailbox=record.mailbox, probe_id=record.probe_id
            ),
        )

    # -- ESP event webhooks (agent.probing.esp decides which of these an event means) -------------

    def webhook_refused(self, refused: WebhookRefused) -> None:
        """A post to a webhook was refused: counted, nothing else."""
        self._recorder.record(refused)

    def esp_received(self, route: str, event_type: EspEventType, *, received_at: float) -> None:
        self._recorder.record(EspEventReceived(route, event_type, received_at))

    def esp_unmatched(self, route: str) -> None:
        self._recorder.record(EspUnmatched(route))

    def esp_delivered(self, record: ProbeRecord, *, at: float) -> bool:
        """The ESP delivered the probe: its own latency stage, once per probe."""
        if not self._ledger.mark_esp_delivered(record.probe_id, at=at):
            return False
        latency = None if record.accepted_at is None else at - record.accepted_at
        self._recorder.record(EspDelivered(record.route, latency))
        if record.arrival is not None:  # seen before the ESP's event came: the receiver's stage
            self._recorder.record(EspReceiverStage(record.route, record.arrival.seen_at - at))
        return True

    def esp_complaint(self, record: ProbeRecord, *, at: float) -> bool:
        """A complaint about the probe: a counter, once per probe, never an outcome."""
        if not self._ledger.mark_esp_complaint(record.probe_id, at=at):
            return False
        self._recorder.record(EspComplaint(record.route))
        log.warning(
            "probe %s %s -> %s: a complaint (marked as spam) reported by the ESP",
            record.probe_id,
            record.route,
            record.mailbox,
            extra=probe_fields(
                route=record.route, mailbox=record.mailbox, probe_id=record.probe_id
            ),
        )
        return True

    def esp_suppressed(
        self, record: ProbeRecord, *, at: float, recipient: str | None, diagnostic: str | None
    ) -> bool:
        """The ESP dropped the probe (suppression list): a hard bounce with the reason
        `suppressed`, counted once, and the outcome `rejected` if it had none."""
        counted = self.bounce(
            record,
            BounceType.HARD,
            BounceSource.ESP,
            status=None,
            reporting_mta=None,
            seen_at=at,
            reason=BounceReason.SUPPRESSED,
            action="dropped",
            recipient=recipient,
        )
        if counted:
            self._recorder.record(EspSuppressed(record.route))
            log.warning(
                "probe %s %s -> %s: dropped by the ESP, the address is suppressed: %s",
                record.probe_id,
                record.route,
                record.mailbox,
                diagnostic or "no reason given",
                extra=probe_fields(
                    route=record.route, mailbox=record.mailbox, probe_id=record.probe_id
                ),
            )
        if record.outcome is None:
            self.finalize(record, Outcome.REJECTED, finished_at=at)
        return counted

    def refresh_in_flight(self) -> None:
        """Recount open probes from the ledger (at start and after a reload), every pair."""
        counts = self._ledger.in_flight_counts()
        self._in_flight = collections.Counter(counts)
        self._recorder.record(InFlight(counts))

    def _in_flight_changed(self, pair: tuple[str, str], change: int) -> None:
        count = max(0, self._in_flight[pair] + change)
        if count:
            self._in_flight[pair] = count
        else:
            self._in_flight.pop(pair, None)
        self._recorder.record(PairInFlight(*pair, count))

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
