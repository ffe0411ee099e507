"""Decides what a message found in a seed mailbox means for the probes in the ledger.

A watcher hands over every message it sees; the matcher triages it (probe, forged, bounce,
auto-reply, unrelated, malformed), turns a probe into one `Arrival` (where it landed, with every
verdict read from it) for `Outcomes` to store and record, and tells the watcher whether to delete
the message. It keeps no state of its own beyond the signing keys: the ledger is where it meets
the sender.
"""

from __future__ import annotations

import logging

from agent.config import Cleanup, Config, Mailbox
from agent.log_fields import probe_fields
from agent.model import (
    Arrival,
    BounceReason,
    BounceSource,
    BounceType,
    FoundBy,
    InboxCategory,
    Outcome,
    SkipReason,
)
from agent.probing.outcomes import Outcomes
from agent.reading.bounces import BounceFields, read_bounce
from agent.reading.probe_token import KeyRing
from agent.reading.triage import TriageKind, placement_of, triage_message
from agent.store.ledger import Ledger

__all__ = ["Matcher"]

log = logging.getLogger(__name__)


class Matcher:
    """Matches arrivals to probes; one instance serves every mailbox."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        outcomes: Outcomes,
        keys: KeyRing,
        cleanup: Cleanup,
        sharded: bool = False,
    ) -> None:
        self._sharded = sharded  # other replicas' probes and bounces are expected here
        self._ledger = ledger
        self._outcomes = outcomes
        self._keys = keys
        self._cleanup = cleanup

    def reconfigure(self, *, secret: bytes, cleanup: Cleanup) -> None:
        """A reloaded config: probes in flight signed with an earlier secret still match."""
        self._keys = self._keys.rotated(secret)
        self._cleanup = cleanup

    def handle(
        self,
        mailbox: Mailbox,
        folder: str,
        raw: bytes,
        *,
        seen_at: float,
        junk: str | None,
        found_by: FoundBy | None = None,
        category: InboxCategory | None = None,
    ) -> bool:
        """Account for one message; True when the watcher should delete it. `found_by`: what
        made the watcher find it, counted with the probe's outcome; `category`: the Gmail tab
        the watcher read, kept for an inbox placement only."""
        triage = triage_message(raw, keys=self._keys, trusted_authserv_ids=mailbox.trust_rules)
        if triage.kind is TriageKind.MALFORMED:
            self._outcomes.skipped(mailbox.name, SkipReason.MALFORMED)
            log.warning(
                "skipped a malformed message in %s/%s: %s",
                mailbox.name,
                folder,
                triage.reason,
                extra=probe_fields(mailbox=mailbox.name),
            )
            return False
        if triage.kind is TriageKind.FORGED:
            self._outcomes.skipped(mailbox.name, SkipReason.FORGED)
            log.warning(
                "ignored a forged probe in %s/%s: %s",
                mailbox.name,
                folder,
                triage.reason,
                extra=probe_fields(mailbox=mailbox.name),
            )
            return False
        if triage.kind is not TriageKind.PROBE or triage.probe_id is None:
            log.debug(
                "not a probe in %s/%s: %s (%s)", mailbox.name, folder, triage.kind, triage.reason
            )
            return False
        fields = probe_fields(mailbox=mailbox.name, probe_id=triage.probe_id)
        if triage.auth_unparseable:
            log.info(
                "%d unreadable Authentication-Results field(s) or resinfo(s) on probe %s",
                triage.auth_unparseable,
                triage.probe_id,
                extra=fields,
            )

        record = self._ledger.get(triage.probe_id)
        if record is None or record.mailbox != mailbox.name:
            # Signed with our secret but not in this ledger (another replica's, or another agent
            # sharing the secret, or a probe pruned long ago): not ours to finish or delete, and
            # not forged either; its sender's watcher finishes it.
            self._outcomes.skipped(mailbox.name, SkipReason.FOREIGN)
            log.info(
                "probe %s in %s/%s is not in the ledger for this mailbox",
                triage.probe_id,
                mailbox.name,
                folder,
                extra=fields,
            )
            return False
        placement = placement_of(folder, inbox=mailbox.folders.inbox, junk=junk)
        arrival = Arrival(
            probe_id=record.probe_id,
            mailbox=mailbox.name,
            folder=folder,
            placement=placement,
            seen_at=seen_at,
            auth=triage.auth,
            found_by=found_by,
            category=category if placement is Outcome.INBOX else None,
            spam=triage.spam,
        )
        self._outcomes.arrived(record, arrival)
        return self._cleanup is Cleanup.DELETE

    def handle_bounce(
        self, config: Config, bounce_mailbox: Mailbox, raw: bytes, *, seen_at: float
    ) -> bool:
        """Account for one message in a bounce mailbox; True when the watcher should delete it."""
        report = read_bounce(raw, keys=self._keys)
        if report.bounce_type is None or report.probe_id is None:
            log.debug("%s: not a bounce of a probe: %s", bounce_mailbox.name, report.reason)
            return False
        record = self._ledger.get(report.probe_id)
        if report.forgery is not None and (record is not None or not self._sharded):
            self._forged_bounce(bounce_mailbox, report.probe_id, report.forgery)
            return False
        if record is None:
            # Sharded, every replica watches every bounce mailbox: a bounce of a probe this
            # ledger does not hold is another replica's (or forged: only the sender can tell),
            # counted as foreign here and left for its sender.
            self._outcomes.skipped(bounce_mailbox.name, SkipReason.FOREIGN)
            log.info(
                "%s: bounce names probe %s, which is not in the ledger",
                bounce_mailbox.name,
                report.probe_id,
                extra=probe_fields(mailbox=bounce_mailbox.name, probe_id=report.probe_id),
            )
            return False
        try:
            recipient = config.mailbox(record.mailbox).address.lower()
        except KeyError:
            recipient = None
        if report.recipients and recipient is not None and recipient not in report.recipients:
            # The probe had one recipient: a proven bounce that blames another is not its bounce.
            self._forged_bounce(
                bounce_mailbox,
                record.probe_id,
                f"it reports {', '.join(report.recipients)}, not the probe's recipient {recipient}",
            )
            return False
        # A DSN about several recipients: the probe recipient's block, not the first one; a
        # bounce without per-recipient blocks says only what the report as a whole says.
        fields = report.fields_for(recipient) or BounceFields(
            bounce_type=report.bounce_type,
            status=report.status,
            smtp_code=None,
            recipient=None,
            reason=BounceReason.OTHER,
            action=None,
            reporting_mta=report.reporting_mta,
            original_message_id=None,
        )
        bounce_type = fields.bounce_type
        self._outcomes.bounce(
            record,
            bounce_type,
            BounceSource.DSN,
            status=fields.status,
            reporting_mta=report.reporting_mta,
            seen_at=seen_at,
            reason=fields.reason,
            smtp_code=fields.smtp_code,
            action=fields.action,
            recipient=fields.recipient,
            original_message_id=fields.original_message_id,
        )
        # Every hard bounce ends the probe as `bounced`, a policy block (5.7.x) included: the
        # probe was not delivered, which is what the outcome says; `reason` says why.
        if bounce_type is BounceType.HARD and record.outcome is None:
            self._outcomes.finalize(record, Outcome.BOUNCED, finished_at=seen_at)
        return self._cleanup is Cleanup.DELETE

    def _forged_bounce(self, bounce_mailbox: Mailbox, probe_id: str, why: str) -> None:
        """Count a bounce that names a probe without proving it; it changes no outcome and stays
        in the mailbox for a human to look at."""
        self._outcomes.skipped(bounce_mailbox.name, SkipReason.FORGED)
        log.warning(
            "%s: ignored a forged bounce naming probe %s: %s",
            bounce_mailbox.name,
            probe_id,
            why,
            extra=probe_fields(mailbox=bounce_mailbox.name, probe_id=probe_id),
        )
