"""Decides what a message found in a seed mailbox means for the probes in the ledger.

A watcher hands over every message it sees; the matcher triages it (probe, forged, bounce,
auto-reply, unrelated, malformed), finalizes the probe it belongs to with its placement, latency
and authentication verdicts, and tells the watcher whether to delete it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.config import Cleanup, Config, Mailbox
from agent.model import AuthVerdicts, BounceSource, BounceType, Outcome
from agent.monitoring.recorder import Recorder
from agent.probing.outcomes import Outcomes
from agent.reading.bounces import read_bounce
from agent.reading.triage import Triage, TriageKind, placement_of, triage_message
from agent.store.ledger import Ledger, ProbeRecord

__all__ = ["Matcher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Sighting:
    folder: str
    placement: Outcome
    seen_at: float
    auth: AuthVerdicts


class Matcher:
    """Matches arrivals to probes; one instance serves every mailbox."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        recorder: Recorder,
        outcomes: Outcomes,
        secret: bytes,
        cleanup: Cleanup,
    ) -> None:
        self._ledger = ledger
        self._recorder = recorder
        self._outcomes = outcomes
        self._secret = secret
        self._earlier_secrets: tuple[bytes, ...] = ()
        self._cleanup = cleanup
        # Probes seen before their sender recorded the 250 reply (a fast server can deliver
        # before our QUIT completes); settled by `settle_early` once the send result is stored.
        self._early: dict[str, _Sighting] = {}

    def reconfigure(self, *, secret: bytes, cleanup: Cleanup) -> None:
        """A reloaded config: probes in flight signed with an earlier secret still match."""
        if secret != self._secret:
            self._earlier_secrets = (self._secret, *self._earlier_secrets)[:4]
            self._secret = secret
        self._cleanup = cleanup

    def _triage(self, raw: bytes, mailbox: Mailbox) -> Triage:
        triage = triage_message(
            raw, secret=self._secret, trusted_authserv_ids=mailbox.trusted_authserv_ids
        )
        for earlier in self._earlier_secrets:
            if triage.kind is not TriageKind.FORGED:
                break
            triage = triage_message(
                raw, secret=earlier, trusted_authserv_ids=mailbox.trusted_authserv_ids
            )
        return triage

    def handle(
        self, mailbox: Mailbox, folder: str, raw: bytes, *, seen_at: float, junk: str | None
    ) -> bool:
        """Account for one message; True when the watcher should delete it."""
        triage = self._triage(raw, mailbox)
        if triage.kind is TriageKind.MALFORMED:
            self._recorder.malformed_message(mailbox.name)
            log.warning(
                "skipped a malformed message in %s/%s: %s", mailbox.name, folder, triage.reason
            )
            return False
        if triage.kind is TriageKind.FORGED:
            self._recorder.forged_message(mailbox.name)
            log.warning("ignored a forged probe in %s/%s: %s", mailbox.name, folder, triage.reason)
            return False
        if triage.kind is not TriageKind.PROBE or triage.probe_id is None:
            log.debug(
                "not a probe in %s/%s: %s (%s)", mailbox.name, folder, triage.kind, triage.reason
            )
            return False
        if triage.auth_unparseable:
            log.info(
                "%d unreadable Authentication-Results header(s) on probe %s",
                triage.auth_unparseable,
                triage.probe_id,
            )

        record = self._ledger.get(triage.probe_id)
        if record is None or record.mailbox != mailbox.name:
            # Signed with our secret but not in this ledger (another agent sharing the secret,
            # or a probe pruned long ago): not ours to count or delete.
            log.info(
                "probe %s in %s/%s is not in the ledger for this mailbox",
                triage.probe_id,
                mailbox.name,
                folder,
            )
            return False
        sighting = _Sighting(
            folder=folder,
            placement=placement_of(folder, inbox=mailbox.folders.inbox, junk=junk),
            seen_at=seen_at,
            auth=triage.auth,
        )
        if record.outcome is None and record.accepted is None:
            self._early[record.probe_id] = sighting
            return self._cleanup is Cleanup.DELETE
        self._settle(record, sighting)
        return self._cleanup is Cleanup.DELETE

    def handle_bounce(
        self, config: Config, bounce_mailbox: Mailbox, raw: bytes, *, seen_at: float
    ) -> bool:
        """Account for one message in a bounce mailbox; True when the watcher should delete it."""
        report = read_bounce(raw, secret=self._secret)
        for earlier in self._earlier_secrets:
            if report.probe_id is not None:
                break
            report = read_bounce(raw, secret=earlier)
        if report.bounce_type is None or report.probe_id is None:
            log.debug("%s: not a bounce of a probe: %s", bounce_mailbox.name, report.reason)
            return False
        record = self._ledger.get(report.probe_id)
        if record is None:
            log.info(
                "%s: bounce names probe %s, which is not in the ledger",
                bounce_mailbox.name,
                report.probe_id,
            )
            return False
        try:
            recipient = config.mailbox(record.mailbox).address.lower()
        except KeyError:
            recipient = None
        if report.recipients and recipient is not None and recipient not in report.recipients:
            # A bounce for another recipient of a message with our envelope: not this probe's.
            log.info(
                "%s: bounce for %s does not concern probe %s (sent to %s)",
                bounce_mailbox.name,
                ", ".join(report.recipients),
                record.probe_id,
                recipient,
            )
            return False
        self._outcomes.bounce(
            record,
            report.bounce_type,
            BounceSource.DSN,
            status=report.status,
            reporting_mta=report.reporting_mta,
            seen_at=seen_at,
        )
        if report.bounce_type is BounceType.HARD and record.outcome is None:
            self._outcomes.finalize(record, Outcome.BOUNCED, finished_at=seen_at)
        return self._cleanup is Cleanup.DELETE

    def settle_early(self, probe_id: str) -> None:
        """Called once the sender stored the send result of `probe_id`."""
        sighting = self._early.pop(probe_id, None)
        if sighting is None:
            return
        record = self._ledger.get(probe_id)
        if record is not None:
            self._settle(record, sighting)

    def _settle(self, record: ProbeRecord, sighting: _Sighting) -> None:
        latency = (
            max(0.0, sighting.seen_at - record.accepted_at)
            if record.accepted_at is not None
            else None
        )
        if record.outcome is None:
            self._outcomes.finalize(
                record,
                sighting.placement,
                finished_at=sighting.seen_at,
                folder=sighting.folder,
                latency_seconds=latency,
                auth=sighting.auth,
            )
        elif record.outcome is Outcome.MISSING and latency is not None:
            self._outcomes.late(
                record, seen_at=sighting.seen_at, folder=sighting.folder, latency_seconds=latency
            )
        else:
            log.debug(
                "probe %s seen again in %s; already %s",
                record.probe_id,
                sighting.folder,
                record.outcome,
            )
