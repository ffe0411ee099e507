"""The ledger records each bounce of a probe once per type and source, and only for known probes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.model import BounceReason, BounceSource, BounceType, Outcome
from agent.store.ledger import (
    _MIGRATIONS,
    _SCHEMA_V1,
    LEDGER_FILENAME,
    SCHEMA_VERSION,
    BounceRecord,
    Ledger,
)

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


def test_a_bounce_keeps_its_reason_code_action_recipient_and_returned_message_id(
    tmp_path: Path,
) -> None:
    with _ledger(tmp_path) as ledger:
        assert ledger.record_bounce(
            PROBE,
            bounce_type=BounceType.HARD,
            source=BounceSource.DSN,
            status="5.1.1",
            reporting_mta="mta.test",
            seen_at=1010.0,
            reason=BounceReason.RECIPIENT_INVALID,
            smtp_code="550",
            action="failed",
            recipient="seed@seed.test",
            original_message_id="x@good.test",
        )
        (stored,) = ledger.bounces(PROBE)
    assert stored == BounceRecord(
        BounceType.HARD,
        BounceSource.DSN,
        "5.1.1",
        "mta.test",
        1010.0,
        BounceReason.RECIPIENT_INVALID,
        "550",
        "failed",
        "seed@seed.test",
        "x@good.test",
    )
    assert stored.recipient_invalid


def test_migrating_to_version_4_reads_each_stored_bounces_reason_from_its_status(
    tmp_path: Path,
) -> None:
    conn = sqlite3.connect(tmp_path / LEDGER_FILENAME)
    for statement in (*_SCHEMA_V1, *_MIGRATIONS[1], *_MIGRATIONS[2]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version=3")
    conn.execute(
        "INSERT INTO probes (probe_id, route, mailbox, created_at, deadline_at)"
        " VALUES (?, 'r', 'm', 1000.0, 1600.0)",
        (PROBE,),
    )
    statuses = {
        ("hard", "dsn"): "5.1.1",
        ("soft", "dsn"): "4.2.2",
        ("hard", "smtp"): "5.7.26",
        ("soft", "smtp"): None,
    }
    for seen, ((bounce_type, source), status) in enumerate(statuses.items()):
        conn.execute(
            "INSERT INTO bounces (probe_id, type, source, status, reporting_mta, seen_at)"
            " VALUES (?, ?, ?, ?, NULL, ?)",
            (PROBE, bounce_type, source, status, 1001.0 + seen),
        )
    conn.commit()
    conn.close()

    with Ledger.in_state_dir(tmp_path) as ledger:
        stored = ledger.bounces(PROBE)
    assert [(b.status, b.reason) for b in stored] == [
        ("5.1.1", BounceReason.RECIPIENT_INVALID),
        ("4.2.2", BounceReason.MAILBOX_FULL),
        ("5.7.26", BounceReason.POLICY),
        (None, BounceReason.OTHER),
    ]
    assert all(b.smtp_code is None and b.original_message_id is None for b in stored)
    conn = sqlite3.connect(tmp_path / LEDGER_FILENAME)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()
