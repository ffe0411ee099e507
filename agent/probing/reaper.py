"""Turns accepted probes that were not seen by their deadline into `missing`."""

from __future__ import annotations

from agent.model import Outcome
from agent.probing.outcomes import Outcomes
from agent.store.ledger import Ledger

__all__ = ["reap"]


def reap(ledger: Ledger, outcomes: Outcomes, *, now: float) -> int:
    """Finalize every probe past its deadline as missing; returns how many this call finalized.
    A probe whose arrival is stored (a crash came between storing and finalizing it) is
    finalized from that arrival instead."""
    finalized = 0
    for record in ledger.due(now):
        if outcomes.settle_arrival(record) or outcomes.finalize(
            record, Outcome.MISSING, finished_at=now
        ):
            finalized += 1
    return finalized
