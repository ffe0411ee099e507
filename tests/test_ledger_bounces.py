"""The ledger records each bounce of a probe once per type and source, and only for known probes."""

from __future__ import annotations

from pathlib import Path

from agent.model import BounceSource, BounceType, Outcome
from agent.store.ledger import Ledger

PROBE = "01m8h9j127ya08stfwvwzdepnt"


def _ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger.in_state_dir(tmp_path)
    ledger.record_sending(
        probe_id=PROBE, route="r", mailbox="m", created_at=1000.0, deadline_at=1600.0
    )
    return ledger


def test_a_bounce_is_recorded_once_per_type_and_source(tmp_path: Path) -> None:
    with _ledger(tmp_path) as ledger:
        first = ledger.record_bounce(
            PROBE,
            bounce_type=BounceType.SOFT,
            source=BounceSource.DSN,
            status="4.7.1",
            reporting_mta="mta.test",
            seen_at=1010.0,
        )
        again = ledger.record_bounce(
            PROBE,
            bounce_type=BounceType.SOFT,
            source=BounceSource.DSN,
            status="4.7.1",
            reporting_mta="mta.test",
            seen_at=1020.0,
        )
        hard = ledger.record_bounce(
            PROBE,
            bounce_type=BounceType.HARD,
            source=BounceSource.DSN,
            status="5.1.1",
            reporting_mta="mta.test",
            seen_at=1030.0,
        )
        assert (first, again, hard) == (True, False, True)
        assert [(b.bounce_type, b.status, b.seen_at) for b in ledger.bounces(PROBE)] == [
            (BounceType.SOFT, "4.7.1", 1010.0),
            (BounceType.HARD, "5.1.1", 1030.0),
        ]


def test_a_bounce_of_an_unknown_probe_is_not_recorded(tmp_path: Path) -> None:
    with _ledger(tmp_path) as ledger:
        assert not ledger.record_bounce(
            "01m8h9j127ya08stfwvwzdepnz",
            bounce_type=BounceType.HARD,
            source=BounceSource.DSN,
            status=None,
            reporting_mta=None,
            seen_at=1.0,
        )


def test_bounces_survive_a_reopen_and_go_with_their_pruned_probe(tmp_path: Path) -> None:
    with _ledger(tmp_path) as ledger:
        ledger.record_bounce(
            PROBE,
            bounce_type=BounceType.HARD,
            source=BounceSource.SMTP,
            status="5.7.1",
            reporting_mta=None,
            seen_at=1001.0,
        )
    with Ledger.in_state_dir(tmp_path) as ledger:
        assert len(ledger.bounces(PROBE)) == 1
        assert ledger.finalize(PROBE, outcome=Outcome.REJECTED, finished_at=1001.0)
        assert ledger.prune(older_than=2000.0) == 1
        assert ledger.bounces(PROBE) == []
