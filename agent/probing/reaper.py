"""Turns accepted probes that were not seen by their deadline into `missing`, and probes a
restart cut mid-transaction into `error` (interrupted)."""

from __future__ import annotations

from agent.model import Outcome
from agent.probing.outcomes import Outcomes
from agent.store.ledger import Ledger, ProbeState

__all__ = ["reap"]


def reap(ledger: Ledger, outcomes: Outcomes, *, now: float) -> int:
    """Finalize every probe past its deadline as missing (or, if a restart cut its transaction,
    as error); returns how many this call finalized. A probe whose arrival is stored (a crash
    came between storing and finalizing it) is finalized from that arrival instead."""
    finalized = 0
    for record in ledger.due(now):
        if outcomes.settle_arrival(record):
            finalized += 1
        elif record.state is ProbeState.INTERRUPTED:
            finalized += outcomes.interrupted_unseen(record, finished_at=now)
        elif outcomes.finalize(record, Outcome.MISSING, finished_at=now):
            finalized += 1
    return finalized
