"""The ledger under faults of its file: each failure has a kind and is reported, reads go on, writes
work again by themselves when SQLite can write; and the file is created owner-only."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.model import LedgerErrorKind, LedgerHealth, Outcome, SendResult
from agent.reading.probe_token import new_probe_id
from agent.store.ledger import (
    LEDGER_FILENAME,
    Ledger,
    LedgerError,
    UnknownProbeError,
    _kind_of,
)
from tests.full_disk import fill, free

T0 = 1_700_000_000.0
NOT_ACCEPTED = SendResult(transcript=(), accepted=False, accepted_at=None, duration_seconds=0.0)


class Reports(list[LedgerHealth]):
    """The ledger's `on_health` callback, keeping what it was told."""

    def __call__(self, health: LedgerHealth) -> None:
        self.append(health)


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def ledger(tmp_path: Path, reports: Reports) -> Iterator[Ledger]:
    with Ledger(tmp_path / LEDGER_FILENAME, on_health=reports) as opened:
        yield opened


def send(ledger: Ledger, probe_id: str | None = None) -> str:
    """Record a probe as the agent does: a fresh id, now (fillers have this shape, so a full
    ledger has no room for it)."""
    probe_id = probe_id or new_probe_id()
    now = time.time()
    ledger.record_sending(
        probe_id=probe_id, route="r", mailbox="m", created_at=now, deadline_at=now + 60.0
    )
    return probe_id


def test_a_full_disk_refuses_writes_as_disk_full_keeps_reads_and_writes_again_once_freed(
    ledger: Ledger, reports: Reports
) -> None:
    before = send(ledger)
    assert ledger.health == LedgerHealth(writable=True)

    fill(ledger, route="r", mailbox="m")
    refused = new_probe_id()
    with pytest.raises(LedgerError, match="cannot record a probe: database or disk is full") as e:
        send(ledger, refused)
    assert e.value.kind is LedgerErrorKind.DISK_FULL
    assert str(ledger.path) in str(e.value)
    full = LedgerHealth(False, LedgerErrorKind.DISK_FULL, "database or disk is full")
    assert ledger.health == full
    assert reports == [full]
    # Reading needs no space: the status page and the matcher keep working.
    assert ledger.get(before) is not None
    assert ledger.get(refused) is None
    assert reports == [full]

    free(ledger)  # no reopening: the same connection writes again
    send(ledger, refused)
    assert ledger.health == LedgerHealth(writable=True)
    assert reports == [full, LedgerHealth(writable=True)]
    send(ledger)
    assert len(reports) == 2  # only the change back is reported, not every write


def test_a_write_that_changes_nothing_does_not_claim_the_ledger_writable_again(
    ledger: Ledger, reports: Reports
) -> None:
    fill(ledger, route="r", mailbox="m")
    with pytest.raises(LedgerError):
        send(ledger)

    # Matching no row needs no space, so it proves nothing about free space.
    assert not ledger.finalize("no-such-probe", outcome=Outcome.MISSING, finished_at=T0)
    assert ledger.prune(older_than=T0) == 0
    assert not ledger.health.writable
    assert len(reports) == 1


def test_a_read_error_is_reported_and_leaves_the_write_state_alone(
    ledger: Ledger, reports: Reports
) -> None:
    send(ledger, "p1")
    conn = sqlite3.connect(ledger.path)
    conn.execute("UPDATE probes SET accepted = 1, transcript = '{broken' WHERE probe_id = 'p1'")
    conn.commit()
    conn.close()

    with pytest.raises(LedgerError, match="unreadable probe p1") as caught:
        ledger.get("p1")
    assert caught.value.kind is LedgerErrorKind.CORRUPT
    assert [(r.writable, r.error) for r in reports] == [(True, LedgerErrorKind.CORRUPT)]
    assert ledger.health == LedgerHealth(writable=True)


def test_a_refusal_is_not_a_fault_of_the_file(ledger: Ledger, reports: Reports) -> None:
    send(ledger, "p1")
    with pytest.raises(LedgerError, match="already recorded") as duplicate:
        send(ledger, "p1")
    with pytest.raises(UnknownProbeError) as unknown:
        ledger.record_send_result("nope", NOT_ACCEPTED)
    assert duplicate.value.kind is None and unknown.value.kind is None
    assert reports == []
    assert ledger.health.writable


def test_a_read_only_ledger_refuses_writes_as_read_only(ledger: Ledger, reports: Reports) -> None:
    ledger._conn.execute("PRAGMA query_only = ON")  # SQLite's own read-only refusal

    with pytest.raises(LedgerError, match="readonly") as caught:
        send(ledger, "p1")
    assert caught.value.kind is LedgerErrorKind.READ_ONLY
    assert ledger.health.error is LedgerErrorKind.READ_ONLY


def test_a_file_that_is_not_a_database_fails_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    path.write_bytes(b"this is not an SQLite database\n" * 200)
    with pytest.raises(LedgerError) as caught:
        Ledger(path)
    assert caught.value.kind is LedgerErrorKind.CORRUPT


def test_a_path_that_cannot_be_opened_fails_as_io(tmp_path: Path) -> None:
    with pytest.raises(LedgerError) as caught:
        Ledger(tmp_path)  # a directory
    assert caught.value.kind is LedgerErrorKind.IO


def test_a_closed_ledger_fails_as_other(ledger: Ledger, reports: Reports) -> None:
    ledger.close()
    with pytest.raises(LedgerError) as caught:
        send(ledger, "p1")
    assert caught.value.kind is LedgerErrorKind.OTHER
    assert [r.error for r in reports] == [LedgerErrorKind.OTHER]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (sqlite3.SQLITE_FULL, LedgerErrorKind.DISK_FULL),
        (sqlite3.SQLITE_READONLY, LedgerErrorKind.READ_ONLY),
        (sqlite3.SQLITE_READONLY_DBMOVED, LedgerErrorKind.READ_ONLY),  # extended codes too
        (sqlite3.SQLITE_PERM, LedgerErrorKind.READ_ONLY),
        (sqlite3.SQLITE_IOERR, LedgerErrorKind.IO),
        (sqlite3.SQLITE_IOERR_WRITE, LedgerErrorKind.IO),
        (sqlite3.SQLITE_IOERR_FSYNC, LedgerErrorKind.IO),
        (sqlite3.SQLITE_CANTOPEN, LedgerErrorKind.IO),
        (sqlite3.SQLITE_BUSY, LedgerErrorKind.BUSY),
        (sqlite3.SQLITE_BUSY_SNAPSHOT, LedgerErrorKind.BUSY),
        (sqlite3.SQLITE_LOCKED, LedgerErrorKind.BUSY),
        (sqlite3.SQLITE_CORRUPT, LedgerErrorKind.CORRUPT),
        (sqlite3.SQLITE_NOTADB, LedgerErrorKind.CORRUPT),
        (sqlite3.SQLITE_NOMEM, LedgerErrorKind.OTHER),
        (sqlite3.SQLITE_CONSTRAINT, LedgerErrorKind.OTHER),
    ],
)
def test_error_kinds_follow_sqlite_primary_result_codes(code: int, kind: LedgerErrorKind) -> None:
    error = sqlite3.OperationalError("any message")
    error.sqlite_errorcode = code
    assert _kind_of(error) is kind


# --- file permissions ---------------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
def test_a_fresh_ledger_its_wal_and_shm_and_its_state_directory_are_the_owner_s_only(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "var" / "state"
    with Ledger.in_state_dir(state_dir) as ledger:
        send(ledger)  # what is written goes to the -wal file first
        modes = {path.name: _mode(path) for path in state_dir.iterdir()}
    assert modes == {
        LEDGER_FILENAME: 0o600,
        f"{LEDGER_FILENAME}-wal": 0o600,
        f"{LEDGER_FILENAME}-shm": 0o600,
    }
    assert _mode(state_dir) == 0o700
    assert _mode(state_dir.parent) == 0o755  # the parents it creates are not its own


@pytest.mark.usefixtures("umask_022")
def test_an_existing_ledger_keeps_the_mode_its_owner_gave_it(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    Ledger(path).close()
    path.chmod(0o640)  # e.g. readable by a backup group
    with Ledger(path):
        assert _mode(path) == 0o640
