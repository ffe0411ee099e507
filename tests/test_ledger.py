"""The probe ledger: life cycle, exactly-once outcomes, durability across restarts and kill -9."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.model import (
    Arrival,
    AuthDetail,
    AuthResult,
    AuthVerdicts,
    BounceSource,
    BounceType,
    DkimSignature,
    ErrorKind,
    FoundBy,
    InboxCategory,
    Outcome,
    ProbeError,
    SendResult,
    SmtpReply,
    SpamCategory,
    SpamSource,
    SpamVerdict,
    Stage,
)
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder
from agent.probing.outcomes import Outcomes
from agent.store.ledger import (
    _SCHEMA_V1,
    LEDGER_FILENAME,
    SCHEMA_VERSION,
    Ledger,
    LedgerError,
    ProbeRecord,
    ProbeState,
    UnknownProbeError,
    transcript_json,
)

T0 = 1_700_000_000.0

ACCEPTED = SendResult(
    transcript=(
        SmtpReply(Stage.BANNER, 220, None, "mx.example ESMTP"),
        SmtpReply(Stage.EHLO, 250, None, "mx.example"),
        SmtpReply(Stage.END_OF_DATA, 250, "2.0.0", "Ok: queued as 4XYZ"),
    ),
    accepted=True,
    accepted_at=T0 + 1.0,
    duration_seconds=0.75,
    tls_version="TLSv1.3",
    tls_cert_not_after=T0 + 86_400.0,
)
REJECTED = SendResult(
    transcript=(
        SmtpReply(Stage.BANNER, 220, None, "mx.example ESMTP"),
        SmtpReply(Stage.RCPT, 550, "5.1.1", "no such user"),
    ),
    accepted=False,
    accepted_at=None,
    duration_seconds=0.25,
)
TIMED_OUT = SendResult(
    transcript=(),
    accepted=False,
    accepted_at=None,
    duration_seconds=30.0,
    error=ProbeError(Stage.CONNECT, ErrorKind.TIMEOUT, "connect to mx.example:25 timed out"),
)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / LEDGER_FILENAME) as opened:
        yield opened


def send(
    ledger: Ledger,
    probe_id: str,
    *,
    route: str = "submission",
    mailbox: str = "seed",
    created_at: float = T0,
    deadline_at: float = T0 + 600.0,
) -> None:
    ledger.record_sending(
        probe_id=probe_id,
        route=route,
        mailbox=mailbox,
        created_at=created_at,
        deadline_at=deadline_at,
    )


def record(ledger: Ledger, probe_id: str) -> ProbeRecord:
    found = ledger.get(probe_id)
    assert found is not None
    return found


def test_ledger_accepted_probe_goes_sending_awaiting_final(ledger: Ledger) -> None:
    send(ledger, "p1")
    sending = record(ledger, "p1")
    assert sending.state is ProbeState.SENDING
    assert sending.send_result is None
    assert [r.probe_id for r in ledger.unsent_interrupted()] == ["p1"]

    assert ledger.record_send_result("p1", ACCEPTED)
    awaiting = record(ledger, "p1")
    assert awaiting.state is ProbeState.AWAITING
    assert awaiting.send_result == ACCEPTED
    assert ledger.unsent_interrupted() == []
    assert [r.probe_id for r in ledger.in_flight()] == ["p1"]

    auth = AuthVerdicts(spf=AuthResult.PASS, dkim=AuthResult.PASS, dmarc=AuthResult.FAIL)
    arrival = Arrival("p1", "seed", "INBOX", Outcome.INBOX, T0 + 5.0, auth)
    assert ledger.finalize(
        "p1",
        outcome=Outcome.INBOX,
        finished_at=T0 + 5.0,
        latency_seconds=4.0,
        arrival=arrival,
    )
    final = record(ledger, "p1")
    assert final.state is ProbeState.FINAL
    assert (final.outcome, final.finished_at, final.folder, final.latency_seconds, final.auth) == (
        Outcome.INBOX,
        T0 + 5.0,
        "INBOX",
        4.0,
        auth,
    )
    assert final.arrival == arrival
    assert final.send_result == ACCEPTED
    assert ledger.in_flight() == []


def test_ledger_second_finalize_returns_false_and_changes_nothing(ledger: Ledger) -> None:
    send(ledger, "p1")
    ledger.record_send_result("p1", ACCEPTED)
    assert ledger.finalize("p1", outcome=Outcome.MISSING, finished_at=T0 + 600.0)
    before = record(ledger, "p1")

    late = Arrival("p1", "seed", "INBOX", Outcome.INBOX, T0 + 700.0)
    assert not ledger.finalize(
        "p1", outcome=Outcome.INBOX, finished_at=T0 + 700.0, latency_seconds=699.0, arrival=late
    )
    assert record(ledger, "p1") == before


@pytest.mark.parametrize(
    ("result", "outcome"), [(REJECTED, Outcome.REJECTED), (TIMED_OUT, Outcome.ERROR)]
)
def test_ledger_unaccepted_send_is_listed_for_restart_until_finalized(
    ledger: Ledger, result: SendResult, outcome: Outcome
) -> None:
    send(ledger, "p1", deadline_at=T0)
    assert ledger.record_send_result("p1", result)

    unaccepted = record(ledger, "p1")
    assert unaccepted.state is ProbeState.UNACCEPTED
    assert unaccepted.send_result == result
    assert [r.probe_id for r in ledger.unsent_interrupted()] == ["p1"]
    assert ledger.due(T0 + 1_000.0) == []  # never `missing`: it was never accepted

    assert ledger.finalize("p1", outcome=outcome, finished_at=T0 + 1.0)
    assert ledger.unsent_interrupted() == []


def test_ledger_first_send_result_stands(ledger: Ledger) -> None:
    send(ledger, "p1")
    assert ledger.record_send_result("p1", ACCEPTED)
    assert not ledger.record_send_result("p1", REJECTED)
    assert record(ledger, "p1").send_result == ACCEPTED


def test_ledger_send_result_after_finalize_is_ignored(ledger: Ledger) -> None:
    send(ledger, "p1")
    assert ledger.finalize("p1", outcome=Outcome.ERROR, finished_at=T0)
    assert not ledger.record_send_result("p1", ACCEPTED)
    assert record(ledger, "p1").send_result is None


def test_ledger_send_result_for_unknown_probe_raises(ledger: Ledger) -> None:
    with pytest.raises(UnknownProbeError, match="no probe nope"):
        ledger.record_send_result("nope", ACCEPTED)


def test_ledger_finalize_and_mark_late_of_unknown_probe_return_false(ledger: Ledger) -> None:
    assert not ledger.finalize("nope", outcome=Outcome.INBOX, finished_at=T0)
    assert not ledger.mark_late("nope", seen_at=T0, folder="INBOX", latency_seconds=1.0)
    assert ledger.get("nope") is None


def test_ledger_recording_a_probe_id_twice_raises(ledger: Ledger) -> None:
    send(ledger, "p1")
    with pytest.raises(LedgerError, match="probe p1 is already recorded"):
        send(ledger, "p1", route="other")
    assert record(ledger, "p1").route == "submission"


def test_ledger_due_lists_only_accepted_open_probes_past_deadline(ledger: Ledger) -> None:
    send(ledger, "still-sending", deadline_at=T0 + 10.0)
    send(ledger, "due-exactly", deadline_at=T0 + 60.0)
    ledger.record_send_result("due-exactly", ACCEPTED)
    send(ledger, "due-earlier", deadline_at=T0 + 20.0)
    ledger.record_send_result("due-earlier", ACCEPTED)
    send(ledger, "not-yet", deadline_at=T0 + 61.0)
    ledger.record_send_result("not-yet", ACCEPTED)
    send(ledger, "already-final", deadline_at=T0 + 10.0)
    ledger.record_send_result("already-final", ACCEPTED)
    ledger.finalize("already-final", outcome=Outcome.SPAM, finished_at=T0 + 5.0)

    assert [r.probe_id for r in ledger.due(T0 + 60.0)] == ["due-earlier", "due-exactly"]


def test_ledger_mark_late_only_for_missing_and_only_once(ledger: Ledger) -> None:
    send(ledger, "missing")
    ledger.record_send_result("missing", ACCEPTED)
    ledger.finalize("missing", outcome=Outcome.MISSING, finished_at=T0 + 600.0)
    send(ledger, "inbox")
    ledger.record_send_result("inbox", ACCEPTED)
    ledger.finalize("inbox", outcome=Outcome.INBOX, finished_at=T0 + 3.0)
    send(ledger, "open")

    assert ledger.mark_late("missing", seen_at=T0 + 900.0, folder="Junk", latency_seconds=899.0)
    assert not ledger.mark_late("missing", seen_at=T0 + 950.0, folder="INBOX", latency_seconds=1.0)
    assert not ledger.mark_late("inbox", seen_at=T0 + 900.0, folder="INBOX", latency_seconds=1.0)
    assert not ledger.mark_late("open", seen_at=T0 + 900.0, folder="INBOX", latency_seconds=1.0)

    late = record(ledger, "missing")
    assert late.outcome is Outcome.MISSING
    assert (late.late_seen_at, late.late_folder, late.late_latency_seconds) == (
        T0 + 900.0,
        "Junk",
        899.0,
    )
    assert record(ledger, "inbox").late_seen_at is None


def test_ledger_in_flight_counts_group_open_probes_by_pair(ledger: Ledger) -> None:
    send(ledger, "a1", route="a", mailbox="m1")
    send(ledger, "a2", route="a", mailbox="m1")
    send(ledger, "a3", route="a", mailbox="m2")
    send(ledger, "b1", route="b", mailbox="m1")
    ledger.finalize("b1", outcome=Outcome.ERROR, finished_at=T0)

    assert ledger.in_flight_counts() == {("a", "m1"): 2, ("a", "m2"): 1}


def test_ledger_recent_returns_newest_first_up_to_limit(ledger: Ledger) -> None:
    for i in range(5):
        send(ledger, f"p{i}", created_at=T0 + i)
    assert [r.probe_id for r in ledger.recent(3)] == ["p4", "p3", "p2"]


def test_ledger_latest_by_pair_is_newest_probe_of_each_pair(ledger: Ledger) -> None:
    send(ledger, "a-old", route="a", created_at=T0)
    send(ledger, "a-new", route="a", created_at=T0 + 10.0)
    send(ledger, "b-only", route="b", created_at=T0 + 5.0)
    ledger.finalize("a-old", outcome=Outcome.INBOX, finished_at=T0 + 20.0)

    latest = ledger.latest_by_pair()
    assert {pair: r.probe_id for pair, r in latest.items()} == {
        ("a", "seed"): "a-new",
        ("b", "seed"): "b-only",
    }


def test_ledger_last_finished_at_is_latest_per_pair_and_outcome(ledger: Ledger) -> None:
    for probe_id, outcome, finished_at in [
        ("i1", Outcome.INBOX, T0 + 1.0),
        ("i2", Outcome.INBOX, T0 + 3.0),
        ("s1", Outcome.SPAM, T0 + 2.0),
    ]:
        send(ledger, probe_id)
        ledger.finalize(probe_id, outcome=outcome, finished_at=finished_at)
    send(ledger, "open")

    assert ledger.last_finished_at() == {
        ("submission", "seed", Outcome.INBOX): T0 + 3.0,
        ("submission", "seed", Outcome.SPAM): T0 + 2.0,
    }
    send(ledger, "other", route="relay")
    ledger.finalize("other", outcome=Outcome.MISSING, finished_at=T0 + 4.0)
    # For the configured pairs only (the start's path), by index seeks: the same answer.
    assert ledger.last_finished_at([("submission", "seed"), ("gone", "seed")]) == {
        ("submission", "seed", Outcome.INBOX): T0 + 3.0,
        ("submission", "seed", Outcome.SPAM): T0 + 2.0,
    }


def test_ledger_prune_deletes_only_old_final_probes(ledger: Ledger) -> None:
    send(ledger, "old-final", created_at=T0)
    ledger.finalize("old-final", outcome=Outcome.INBOX, finished_at=T0 + 1.0)
    send(ledger, "old-open", created_at=T0)
    send(ledger, "new-final", created_at=T0 + 100.0)
    ledger.finalize("new-final", outcome=Outcome.INBOX, finished_at=T0 + 101.0)

    send(ledger, "old-finished-late", created_at=T0)
    ledger.finalize("old-finished-late", outcome=Outcome.ERROR, finished_at=T0 + 60.0)

    assert ledger.prune(T0 + 50.0) == 1
    assert ledger.get("old-final") is None
    assert ledger.get("old-open") is not None
    assert ledger.get("new-final") is not None
    assert ledger.get("old-finished-late") is not None  # age counts from when it finished
    assert ledger.prune(T0 + 50.0) == 0


def test_ledger_prune_in_batches_deletes_the_oldest_first(ledger: Ledger) -> None:
    for index in range(5):
        send(ledger, f"p{index}", created_at=T0 + index)
        ledger.finalize(f"p{index}", outcome=Outcome.INBOX, finished_at=T0 + 10.0 - index)
    assert ledger.prune(T0 + 100.0, limit=2) == 2
    # p4 and p3 finished first (T0 + 6, T0 + 7).
    assert {r.probe_id for r in ledger.recent(10)} == {"p0", "p1", "p2"}
    assert ledger.prune(T0 + 100.0, limit=2) == 2
    assert ledger.prune(T0 + 100.0, limit=2) == 1
    assert ledger.recent(10) == []


def test_ledger_reads_through_indexes_that_history_does_not_grow(ledger: Ledger) -> None:
    """A month of history must not make start or prune read every row: the last outcomes and
    prune use indexes on finished probes, the probes in flight the partial index of open ones
    (the plan, not a timing, is what is checked)."""
    conn = sqlite3.connect(ledger.path)
    try:
        plans = {
            name: " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}"))
            for name, query in (
                (
                    "last outcome",
                    "SELECT route, mailbox, outcome, max(finished_at) FROM probes"
                    " INDEXED BY probes_last_outcome WHERE outcome IS NOT NULL"
                    " GROUP BY route, mailbox, outcome",
                ),
                (
                    "prune",
                    "SELECT rowid FROM probes INDEXED BY probes_finished WHERE outcome IS NOT NULL"
                    " AND finished_at < 1 ORDER BY finished_at LIMIT 10",
                ),
                (
                    "in flight",
                    "SELECT * FROM probes INDEXED BY probes_open WHERE outcome IS NULL"
                    " ORDER BY created_at, probe_id",
                ),
            )
        }
    finally:
        conn.close()
    assert "INDEX probes_open" in plans["in flight"]  # open probes only, sorted afterwards
    assert "COVERING INDEX probes_last_outcome" in plans["last outcome"]
    assert "INDEX probes_finished (finished_at<?)" in plans["prune"]
    assert "TEMP B-TREE" not in plans["prune"]  # already in finished_at order


def test_ledger_reopen_after_close_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    with Ledger(path) as first:
        send(first, "sending", created_at=T0)
        send(first, "awaiting", created_at=T0 + 1.0)
        first.record_send_result("awaiting", ACCEPTED)
        send(first, "rejected", created_at=T0 + 2.0)
        first.record_send_result("rejected", REJECTED)
        first.finalize("rejected", outcome=Outcome.REJECTED, finished_at=T0 + 3.0)
        send(first, "late", created_at=T0 + 3.0)
        first.record_send_result("late", ACCEPTED)
        first.finalize("late", outcome=Outcome.MISSING, finished_at=T0 + 600.0)
        first.mark_late("late", seen_at=T0 + 700.0, folder="INBOX", latency_seconds=699.0)
        before = first.recent(10)
    assert len(before) == 4

    with Ledger(path) as second:
        assert second.recent(10) == before
        assert not second.finalize("rejected", outcome=Outcome.INBOX, finished_at=T0 + 9.0)


def test_ledger_finalize_race_between_two_ledgers_has_one_winner_per_probe(
    tmp_path: Path,
) -> None:
    """A watcher and the reaper finalizing the same probes at once, each with its own connection."""
    path = tmp_path / LEDGER_FILENAME
    probe_ids = [f"p{i:03d}" for i in range(200)]
    with Ledger(path) as setup:
        for probe_id in probe_ids:
            send(setup, probe_id)
            setup.record_send_result(probe_id, ACCEPTED)

    start = threading.Barrier(2)
    wins: dict[Outcome, list[str]] = {Outcome.INBOX: [], Outcome.MISSING: []}
    failures: list[BaseException] = []

    def finalize_all(outcome: Outcome) -> None:
        try:
            with Ledger(path) as mine:  # one Ledger per thread: the one-thread contract
                start.wait()
                for probe_id in probe_ids:
                    if mine.finalize(probe_id, outcome=outcome, finished_at=T0 + 1.0):
                        wins[outcome].append(probe_id)
        except BaseException as exc:  # surfaced below: a thread's exception would be lost
            failures.append(exc)

    threads = [threading.Thread(target=finalize_all, args=(o,)) for o in wins]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    winners = wins[Outcome.INBOX] + wins[Outcome.MISSING]
    assert sorted(winners) == probe_ids  # each probe won exactly once
    with Ledger(path) as check:
        for outcome, won in wins.items():
            for probe_id in won:
                assert record(check, probe_id).outcome is outcome


_CHILD = textwrap.dedent(
    """
    import sqlite3, sys
    from pathlib import Path
    from agent.store.ledger import Ledger
    from agent.model import Outcome, SendResult

    accepted = SendResult(transcript=(), accepted=True, accepted_at=1.0, duration_seconds=0.5)
    path = Path(sys.argv[1])
    ledger = Ledger(path)
    for i in range(60):
        ledger.record_sending(
            probe_id=f"p{i}", route="r", mailbox="m", created_at=float(i), deadline_at=600.0
        )
        if i % 2:
            ledger.record_send_result(f"p{i}", accepted)
        if i % 3 == 0:
            ledger.finalize(f"p{i}", outcome=Outcome.ERROR, finished_at=float(i))
    # A write transaction still open at the kill: it must vanish without wedging the file.
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute(
        "INSERT INTO probes (probe_id, route, mailbox, created_at, deadline_at)"
        " VALUES ('uncommitted', 'r', 'm', 0, 0)"
    )
    print("ready", flush=True)
    sys.stdin.read()  # block until killed
    """
)


def test_ledger_kill_9_keeps_every_committed_probe(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
    assert child.returncode == -signal.SIGKILL

    with Ledger(path) as after:
        assert after.get("uncommitted") is None
        records = {r.probe_id: r for r in after.recent(1000)}
        assert set(records) == {f"p{i}" for i in range(60)}
        for i in range(60):
            rec = records[f"p{i}"]
            assert rec.accepted is (True if i % 2 else None)
            assert rec.outcome is (Outcome.ERROR if i % 3 == 0 else None)
        send(after, "after-restart")  # the file is writable again: no lock survived the kill
        assert after.get("after-restart") is not None


def test_ledger_writes_are_durable_wal_with_full_sync(ledger: Ledger) -> None:
    conn = sqlite3.connect(ledger.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()
    # synchronous is per connection: it must be FULL (2) on the ledger's own.
    assert ledger._conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_ledger_refuses_newer_schema_version(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    Ledger(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()

    with pytest.raises(LedgerError, match=f"schema version {SCHEMA_VERSION + 1}") as caught:
        Ledger(path)
    assert str(path) in str(caught.value)


def test_ledger_refuses_a_database_that_is_not_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE unrelated (x INTEGER)")
    conn.close()

    with pytest.raises(LedgerError, match="not a probe ledger"):
        Ledger(path)


def test_ledger_corrupt_file_raises_ledger_error_naming_path(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    path.write_bytes(b"this is not an SQLite database\n" * 200)

    with pytest.raises(LedgerError) as caught:
        Ledger(path)
    assert str(path) in str(caught.value)
    assert "not a database" in str(caught.value)


def test_ledger_unopenable_path_raises_ledger_error_naming_path(tmp_path: Path) -> None:
    path = tmp_path / "a-directory"
    path.mkdir()

    with pytest.raises(LedgerError) as caught:
        Ledger(path)
    assert str(path) in str(caught.value)


def test_ledger_unreadable_row_raises_ledger_error_naming_probe(ledger: Ledger) -> None:
    send(ledger, "p1")
    conn = sqlite3.connect(ledger.path)
    conn.execute("UPDATE probes SET accepted = 1, transcript = '{broken' WHERE probe_id = 'p1'")
    conn.commit()
    conn.close()

    with pytest.raises(LedgerError, match="unreadable probe p1") as caught:
        ledger.get("p1")
    assert str(ledger.path) in str(caught.value)


def test_ledger_use_from_another_thread_raises_ledger_error(ledger: Ledger) -> None:
    caught: list[BaseException] = []

    def use() -> None:
        try:
            ledger.in_flight()
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    assert len(caught) == 1
    assert isinstance(caught[0], LedgerError)


def test_ledger_closed_by_context_manager_refuses_calls(tmp_path: Path) -> None:
    with Ledger(tmp_path / LEDGER_FILENAME) as ledger:
        send(ledger, "p1")
    with pytest.raises(LedgerError, match="closed"):
        ledger.get("p1")


def test_ledger_in_state_dir_creates_directory_and_file(tmp_path: Path) -> None:
    state_dir = tmp_path / "state" / "nested"
    with Ledger.in_state_dir(state_dir) as ledger:
        assert ledger.path == state_dir / LEDGER_FILENAME
        assert ledger.path.is_file()


def test_ledger_stores_an_arrival_seen_before_the_send_result(ledger: Ledger) -> None:
    send(ledger, "p1")
    # How it was found is kept too: the sender counts it when it finalizes the probe.
    arrival = Arrival("p1", "seed", "Junk", Outcome.SPAM, T0 + 1.0, found_by=FoundBy.CHECK)
    assert ledger.record_arrival(arrival)
    assert not ledger.record_arrival(arrival)  # the first sighting stands
    stored = record(ledger, "p1")
    assert (stored.state, stored.arrival, stored.outcome) == (ProbeState.SENDING, arrival, None)
    assert ledger.finalize("p1", outcome=Outcome.ERROR, finished_at=T0 + 2.0)
    assert not ledger.record_arrival(Arrival("p1", "seed", "INBOX", Outcome.INBOX, T0 + 3.0))
    assert record(ledger, "p1").arrival == arrival


def test_ledger_keeps_the_spam_verdicts_of_an_arrival(ledger: Ledger) -> None:
    send(ledger, "p1")
    spam = (
        SpamVerdict(SpamSource.RSPAMD, 2.0, 50.0, False, SpamCategory.HAM),
        SpamVerdict(SpamSource.MICROSOFT, None, None, True, SpamCategory.BULK, bulk_level=7),
    )
    arrival = Arrival("p1", "seed", "INBOX", Outcome.INBOX, T0 + 1.0, spam=spam)
    assert ledger.finalize("p1", outcome=Outcome.INBOX, finished_at=T0 + 2.0, arrival=arrival)
    assert record(ledger, "p1").arrival == arrival
    assert record(ledger, "p1").spam == spam


def test_ledger_reads_an_arrival_stored_before_spam_verdicts_as_having_none(
    ledger: Ledger,
) -> None:
    send(ledger, "p1")
    assert ledger.record_arrival(Arrival("p1", "seed", "INBOX", Outcome.INBOX, T0 + 1.0))
    # The form an older version wrote: no "spam" key at all.
    ledger._conn.execute(
        "UPDATE probes SET arrival = json_remove(arrival, '$.spam') WHERE probe_id = 'p1'"
    )
    stored = record(ledger, "p1")
    assert stored.arrival is not None
    assert (stored.arrival.spam, stored.spam) == ((), ())


def test_ledger_keeps_every_auth_method_detail_and_dkim_signature(ledger: Ledger) -> None:
    send(ledger, "p1")
    auth = AuthVerdicts(
        spf=AuthResult.NONE,
        dkim=AuthResult.PASS,
        dmarc=AuthResult.NONE,
        methods={"spf": AuthResult.NONE, "dkim": AuthResult.PASS, "dmarc": AuthResult.NONE},
        details=(
            AuthDetail(
                "spf",
                AuthResult.NONE,
                "none",
                None,
                None,
                "sender IP is",
                (("smtp.mailfrom", "<>"),),
            ),
            AuthDetail("dkim", AuthResult.PASS, "pass", None, properties=(("header.d", "a.test"),)),
            AuthDetail("dmarc", AuthResult.NONE, "bestguesspass", None, reason="x"),
        ),
        dkim_signatures=(DkimSignature("a.test", "s1", AuthResult.PASS, "pass"),),
    )
    arrival = Arrival("p1", "seed", "INBOX", Outcome.INBOX, T0 + 1.0, auth)
    assert ledger.record_arrival(arrival)
    assert record(ledger, "p1").arrival == arrival


def test_ledger_reads_an_arrival_stored_with_only_the_four_summaries(ledger: Ledger) -> None:
    send(ledger, "p1")
    assert ledger.record_arrival(Arrival("p1", "seed", "INBOX", Outcome.INBOX, T0 + 1.0))
    old = (
        '{"folder": "INBOX", "placement": "inbox", "seen_at": 1.0, "found_by": null,'
        ' "auth": {"spf": "pass", "dkim": null, "dmarc": "fail", "arc": null}}'
    )
    with sqlite3.connect(ledger.path) as conn:
        conn.execute("UPDATE probes SET arrival = ? WHERE probe_id = 'p1'", (old,))
    stored = record(ledger, "p1").arrival
    assert stored is not None
    assert stored.auth == AuthVerdicts(spf=AuthResult.PASS, dmarc=AuthResult.FAIL)


def test_ledger_migrates_a_version_1_file_keeping_every_verdict(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    conn = sqlite3.connect(path)
    for statement in _SCHEMA_V1:
        conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    row = (
        "INSERT INTO probes (probe_id, route, mailbox, created_at, deadline_at, accepted,"
        " accepted_at, outcome, finished_at, folder, latency_seconds, auth)"
        " VALUES (?, 'r', 'seed', ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    auth = '{"spf": "pass", "dkim": "fail", "dmarc": null, "arc": null}'
    conn.execute(row, ("inbox", T0, T0 + 600, 1, T0 + 1, "inbox", T0 + 5, "INBOX", 4.0, auth))
    conn.execute(row, ("missing", T0, T0 + 600, 1, T0 + 1, "missing", T0 + 600, None, None, None))
    conn.execute(row, ("open", T0, T0 + 600, None, None, None, None, None, None, None))
    conn.commit()
    conn.close()

    with Ledger(path) as ledger:
        inbox, missing, still_open = (record(ledger, pid) for pid in ("inbox", "missing", "open"))
    assert inbox.arrival == Arrival(
        "inbox",
        "seed",
        "INBOX",
        Outcome.INBOX,
        T0 + 5,
        AuthVerdicts(spf=AuthResult.PASS, dkim=AuthResult.FAIL),
    )
    assert (inbox.folder, inbox.latency_seconds) == ("INBOX", 4.0)
    assert (missing.outcome, missing.arrival, missing.auth) == (Outcome.MISSING, None, None)
    assert (still_open.state, still_open.arrival) == (ProbeState.SENDING, None)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = {row[1] for row in conn.execute("PRAGMA table_info(probes)")}
    finally:
        conn.close()
    assert "arrival" in columns and "auth" not in columns
    assert "interrupted_at" in columns and still_open.interrupted_at is None


def test_ledger_keeps_an_interrupted_probe_open_until_its_deadline(ledger: Ledger) -> None:
    send(ledger, "p1")
    assert ledger.mark_interrupted("p1", at=T0 + 1.0)
    interrupted = record(ledger, "p1")
    assert (interrupted.state, interrupted.interrupted_at) == (ProbeState.INTERRUPTED, T0 + 1.0)
    # Marked once: a later start neither lists it again nor marks it twice.
    assert ledger.unsent_interrupted() == []
    assert not ledger.mark_interrupted("p1", at=T0 + 2.0)
    assert [r.probe_id for r in ledger.in_flight()] == ["p1"]
    assert ledger.due(interrupted.deadline_at - 1) == []
    assert [r.probe_id for r in ledger.due(interrupted.deadline_at)] == ["p1"]


def test_ledger_marks_only_a_probe_still_being_sent_as_interrupted(ledger: Ledger) -> None:
    send(ledger, "p1")
    assert ledger.record_send_result("p1", ACCEPTED)
    assert not ledger.mark_interrupted("p1", at=T0 + 1.0)
    assert record(ledger, "p1").state is ProbeState.AWAITING
    with pytest.raises(UnknownProbeError):
        ledger.mark_interrupted("nope", at=T0)


def test_ledger_keeps_the_gmail_tab_of_an_arrival_and_reads_arrivals_stored_without_one(
    ledger: Ledger,
) -> None:
    send(ledger, "tabbed")
    send(ledger, "older")
    tabbed = Arrival(
        "tabbed", "seed", "INBOX", Outcome.INBOX, T0 + 1.0, category=InboxCategory.UPDATES
    )
    assert ledger.record_arrival(tabbed)
    assert ledger.record_arrival(Arrival("older", "seed", "INBOX", Outcome.INBOX, T0 + 1.0))
    # An arrival written before the category was recorded has no such key at all.
    conn = sqlite3.connect(ledger.path)
    try:
        with conn:
            conn.execute(
                "UPDATE probes SET arrival = json_remove(arrival, '$.category')"
                " WHERE probe_id = 'older'"
            )
    finally:
        conn.close()
    assert record(ledger, "tabbed").arrival == tabbed
    older = record(ledger, "older").arrival
    assert older is not None and older.category is None


def test_ledger_stores_transcripts_compactly_and_reads_the_named_form_of_older_rows(
    ledger: Ledger,
) -> None:
    send(ledger, "new")
    assert ledger.record_send_result("new", ACCEPTED)
    send(ledger, "old")
    named = json.dumps(
        [
            {
                "stage": r.stage.value,
                "code": r.code,
                "enhanced_code": r.enhanced_code,
                "text": r.text,
            }
            for r in ACCEPTED.transcript
        ]
    )
    conn = sqlite3.connect(ledger.path)
    try:
        stored = conn.execute("SELECT transcript FROM probes WHERE probe_id = 'new'").fetchone()[0]
        with conn:
            conn.execute(
                "UPDATE probes SET accepted = 1, accepted_at = ?, transcript = ?"
                " WHERE probe_id = 'old'",
                (ACCEPTED.accepted_at, named),
            )
    finally:
        conn.close()
    assert stored == transcript_json(ACCEPTED.transcript)
    assert len(stored) < len(named)
    assert record(ledger, "new").transcript == record(ledger, "old").transcript
    assert record(ledger, "old").transcript == ACCEPTED.transcript


def test_ledger_transaction_stores_result_bounce_and_outcome_together(ledger: Ledger) -> None:
    send(ledger, "p1")
    with ledger.transaction():
        assert ledger.record_send_result("p1", REJECTED)
        assert ledger.record_bounce(
            "p1",
            bounce_type=BounceType.HARD,
            source=BounceSource.SMTP,
            status="5.1.1",
            reporting_mta=None,
            seen_at=T0 + 2.0,
        )
        assert ledger.finalize("p1", outcome=Outcome.REJECTED, finished_at=T0 + 2.0)

    stored = record(ledger, "p1")
    assert stored.outcome is Outcome.REJECTED and stored.send_result == REJECTED
    assert [bounce.status for bounce in ledger.bounces("p1")] == ["5.1.1"]


def test_ledger_transaction_that_raises_stores_none_of_its_writes(ledger: Ledger) -> None:
    send(ledger, "p1")
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.record_send_result("p1", REJECTED)
        ledger.finalize("p1", outcome=Outcome.REJECTED, finished_at=T0 + 2.0)
        raise RuntimeError("cut between the writes and the commit")

    assert record(ledger, "p1").state is ProbeState.SENDING
    # The same writes again (what a retry does) win: nothing of the first try is left over.
    with ledger.transaction():
        assert ledger.record_send_result("p1", REJECTED)
        assert ledger.finalize("p1", outcome=Outcome.REJECTED, finished_at=T0 + 2.0)
    assert record(ledger, "p1").outcome is Outcome.REJECTED


def _transactions(ledger: Ledger) -> list[str]:
    """Every statement the ledger's connection runs, to count its commits (each write outside
    BEGIN ... COMMIT commits, and fsyncs, on its own). Reaches into the connection: commits are
    what this measures, and SQLite reports them nowhere else."""
    statements: list[str] = []
    ledger._conn.set_trace_callback(statements.append)
    return statements


def _commits(statements: list[str]) -> int:
    commits, depth = 0, 0
    for statement in statements:
        word = statement.split(None, 1)[0].upper()
        if word == "BEGIN":
            depth += 1
        elif word == "COMMIT":
            depth -= 1
            commits += 1
        elif word in {"INSERT", "UPDATE", "DELETE"} and not depth:
            commits += 1
    return commits


def test_a_refused_probe_is_stored_in_two_commits_and_counted_once(ledger: Ledger) -> None:
    registry = new_registry()
    outcomes = Outcomes(ledger, Recorder(registry))
    statements = _transactions(ledger)
    outcomes.sending(
        probe_id="p1", route="submission", mailbox="seed", created_at=T0, deadline_at=T0 + 600
    )
    outcomes.sent_with_verdict("p1", REJECTED, Outcome.REJECTED, finished_at=T0 + 2.0)
    assert _commits(statements) == 2  # the probe before its send; result, bounce and outcome
    # Called again (a retry after a failure that was not one) it stores and counts nothing.
    outcomes.sent_with_verdict("p1", REJECTED, Outcome.REJECTED, finished_at=T0 + 3.0)

    stored = record(ledger, "p1")
    assert (stored.outcome, stored.finished_at) == (Outcome.REJECTED, T0 + 2.0)
    assert len(ledger.bounces("p1")) == 1
    labels = {"route": "submission", "mailbox": "seed", "outcome": "rejected"}
    assert registry.get_sample_value("deliverability_probes_total", labels) == 1
