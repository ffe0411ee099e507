"""The on-disk record of every probe: sent, awaited, finalized exactly once, kept across restarts.

One SQLite file under the state directory, in WAL mode with `synchronous=FULL`: every committed
write is fsynced before the call returns, so a crash (even `kill -9` or a power cut) loses nothing
that was committed. Each public call is one short transaction, or part of one `transaction()`
when several writes settle one event (a refused probe's result, bounce and outcome: one fsync
instead of three); the final outcome is set with
`UPDATE ... WHERE outcome IS NULL`, so exactly one finalizer wins even across two processes.

Life cycle of a probe (its `state`):

    record_sending -> SENDING -record_send_result-> AWAITING (accepted) -finalize-> FINAL
                                                 `-> UNACCEPTED (not accepted) -finalize-> FINAL

A probe FINAL as `missing` that shows up later is marked late (`mark_late`); its outcome stays.

The ledger is the only place where the sender and the mailbox watchers meet. A probe can be seen
in its mailbox before its sender stored the 250 reply (a fast server delivers before our QUIT
ends): the watcher then stores the arrival (`record_arrival`) on the probe still SENDING, and the
sender, once it stored its result, finalizes the probe from that arrival. A restart in between
loses nothing: the next start finalizes every probe that has an arrival from it.

After a restart, before starting the reaper, the service resolves what the crash interrupted:
`unsent_interrupted()` lists the probes still SENDING and the probes UNACCEPTED but never
finalized (finalize them with the outcome their stored `send_result` implies; it was committed, so
it is not lost). A SENDING probe may or may not have reached the server's 250, so it is marked
INTERRUPTED (`mark_interrupted`) and stays open until its deadline: if it arrives it gets its real
placement, otherwise the reaper makes it `error` ("interrupted"), never `missing`. `due()` lists
AWAITING and INTERRUPTED probes past their deadline, because `missing` means "accepted and never
seen": a probe still being sent is the sender's to finish, not the reaper's.

A fault of the file (a full disk, a read-only mount, an I/O error, a lock held too long, a
corrupt page) is raised as a `LedgerError` with a `kind` (`LedgerErrorKind`), and reported to the
`on_health` callback: every failed operation, and the first write that succeeds after a failed
one. `health` says whether the last write succeeded. Nothing is retried here: callers decide, and
the ledger is usable again as soon as SQLite is, without reopening it.

The file (and so its -wal and -shm files, which SQLite creates with the database file's mode) is
created readable by its owner only: it holds SMTP transcripts.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agent.errors import AgentError, ErrorCategory
from agent.model import (
    Arrival,
    AuthDetail,
    AuthResult,
    AuthVerdicts,
    BounceReason,
    BounceSource,
    BounceType,
    DkimSignature,
    ErrorKind,
    EspEvent,
    EspEventType,
    FoundBy,
    InboxCategory,
    LedgerErrorKind,
    LedgerHealth,
    Outcome,
    ProbeError,
    SendResult,
    SmtpReply,
    SpamCategory,
    SpamSource,
    SpamVerdict,
    Stage,
)
from agent.server_text import valid_text

__all__ = [
    "LEDGER_FILENAME",
    "LEDGER_FILE_MODE",
    "SCHEMA_VERSION",
    "STATE_DIR_MODE",
    "BounceRecord",
    "Ledger",
    "LedgerError",
    "ProbeRecord",
    "ProbeState",
    "UnknownProbeError",
    "esp_event_from_json",
    "esp_event_json",
    "spam_verdict_json",
    "transcript_json",
]

LEDGER_FILENAME = "ledger.sqlite3"
SCHEMA_VERSION = 6

# Seconds a writer waits for another connection's write lock before failing; writes are tiny, so
# hitting this means something is badly wrong, not that the other side is slow.
_BUSY_TIMEOUT_SECONDS = 10.0

# The state directory and the ledger file: the owner's only (the file holds SMTP transcripts).
STATE_DIR_MODE = 0o700
LEDGER_FILE_MODE = 0o600

# SQLite's primary result codes (the low byte of an extended code) and what they mean here.
_ERROR_KINDS: dict[int, LedgerErrorKind] = {
    sqlite3.SQLITE_FULL: LedgerErrorKind.DISK_FULL,
    sqlite3.SQLITE_READONLY: LedgerErrorKind.READ_ONLY,
    sqlite3.SQLITE_PERM: LedgerErrorKind.READ_ONLY,
    sqlite3.SQLITE_IOERR: LedgerErrorKind.IO,
    sqlite3.SQLITE_CANTOPEN: LedgerErrorKind.IO,
    sqlite3.SQLITE_BUSY: LedgerErrorKind.BUSY,
    sqlite3.SQLITE_LOCKED: LedgerErrorKind.BUSY,
    sqlite3.SQLITE_CORRUPT: LedgerErrorKind.CORRUPT,
    sqlite3.SQLITE_NOTADB: LedgerErrorKind.CORRUPT,
}

_SCHEMA_V1 = (
    """
CREATE TABLE probes (
    probe_id             TEXT PRIMARY KEY,
    route                TEXT NOT NULL,
    mailbox              TEXT NOT NULL,
    created_at           REAL NOT NULL,
    deadline_at          REAL NOT NULL,
    -- send result; accepted IS NULL until record_send_result
    accepted             INTEGER,
    accepted_at          REAL,
    send_duration_seconds REAL,
    transcript           TEXT,  -- JSON list of replies
    send_error           TEXT,  -- JSON object or NULL
    tls_version          TEXT,
    tls_cert_not_after   REAL,
    -- final outcome; set once
    outcome              TEXT,
    finished_at          REAL,
    folder               TEXT,
    latency_seconds      REAL,
    auth                 TEXT,  -- JSON object or NULL
    -- seen after being finalized as missing; set once
    late_seen_at         REAL,
    late_folder          TEXT,
    late_latency_seconds REAL
) STRICT
""",
    """
CREATE TABLE bounces (
    probe_id      TEXT NOT NULL REFERENCES probes (probe_id) ON DELETE CASCADE,
    type          TEXT NOT NULL,  -- hard | soft
    source        TEXT NOT NULL,  -- smtp | dsn
    status        TEXT,           -- enhanced status code, e.g. 5.1.1
    reporting_mta TEXT,
    seen_at       REAL NOT NULL,
    PRIMARY KEY (probe_id, type, source)
) STRICT
""",
    "CREATE INDEX probes_open ON probes (deadline_at) WHERE outcome IS NULL",
    "CREATE INDEX probes_created ON probes (created_at)",
    "CREATE INDEX probes_pair ON probes (route, mailbox, created_at)",
)

# Version 2: the arrival (where a probe landed and every verdict read from it) is stored whole as
# JSON, also while the probe is still being sent; the v1 `auth` column becomes part of it.
_MIGRATE_V1_TO_V2 = (
    "ALTER TABLE probes ADD COLUMN arrival TEXT",  # a JSON object, or NULL until seen
    """
UPDATE probes SET arrival = json_object(
    'folder', folder, 'placement', outcome, 'seen_at', finished_at, 'auth', json(auth))
WHERE outcome IN ('inbox', 'spam', 'other') AND folder IS NOT NULL
""",
    "ALTER TABLE probes DROP COLUMN auth",
)

# Version 3: when a restart found a probe cut mid-transaction (it stays open until its deadline).
_MIGRATE_V2_TO_V3 = ("ALTER TABLE probes ADD COLUMN interrupted_at REAL",)

# Version 4: what a bounce said beyond its type and status: why it failed (a bounded reason, set
# from the stored status for older rows), the reply code, the DSN's action, the recipient it was
# about and the returned message's Message-ID.
_MIGRATE_V3_TO_V4 = (
    "ALTER TABLE bounces ADD COLUMN reason TEXT NOT NULL DEFAULT 'other'",
    "ALTER TABLE bounces ADD COLUMN smtp_code TEXT",
    "ALTER TABLE bounces ADD COLUMN action TEXT",
    "ALTER TABLE bounces ADD COLUMN recipient TEXT",
    "ALTER TABLE bounces ADD COLUMN original_message_id TEXT",
    """
UPDATE bounces SET reason = CASE
    WHEN status GLOB '[45].2.2' THEN 'mailbox_full'
    WHEN status IN ('5.1.1', '5.1.2', '5.1.3', '5.1.6', '5.1.10') THEN 'recipient_invalid'
    WHEN status GLOB '[45].7.*' THEN 'policy'
    ELSE 'other' END
""",
)

# Version 5: indexes for the paths that read finished probes, so a month of history costs them
# little: prune (by finished_at) and the last outcome per pair read at start (covering index).
_MIGRATE_V4_TO_V5 = (
    "CREATE INDEX probes_finished ON probes (finished_at) WHERE outcome IS NOT NULL",
    "CREATE INDEX probes_last_outcome ON probes (route, mailbox, outcome, finished_at)"
    " WHERE outcome IS NOT NULL",
)

# Version 6: ESP event webhooks (agent.webhooks). The ESP's message id from the 250 reply, indexed
# per route for matching its events; when the ESP delivered the probe and when a complaint came
# (each set once); and events that came before the probe's 250 was stored (the id was not known
# yet), kept a bounded while in esp_pending until the send result names them.
_MIGRATE_V5_TO_V6 = (
    "ALTER TABLE probes ADD COLUMN esp_message_id TEXT",
    "ALTER TABLE probes ADD COLUMN esp_delivered_at REAL",
    "ALTER TABLE probes ADD COLUMN esp_complained_at REAL",
    "CREATE INDEX probes_esp_message_id ON probes (route, esp_message_id)"
    " WHERE esp_message_id IS NOT NULL",
    """
CREATE TABLE esp_pending (
    route       TEXT NOT NULL,
    key         TEXT NOT NULL,  -- m:<ESP message id> or p:<probe id>
    received_at REAL NOT NULL,
    event       TEXT NOT NULL   -- JSON object
) STRICT
""",
    "CREATE INDEX esp_pending_key ON esp_pending (route, key)",
    "CREATE INDEX esp_pending_received ON esp_pending (received_at)",
)

# Each step takes the schema from version N to N + 1; a new file runs v1, then every step, so the
# migrations are exercised on every start of a fresh agent.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: _MIGRATE_V1_TO_V2,
    2: _MIGRATE_V2_TO_V3,
    3: _MIGRATE_V3_TO_V4,
    4: _MIGRATE_V4_TO_V5,
    5: _MIGRATE_V5_TO_V6,
}

_COLUMNS = (
    "probe_id, route, mailbox, created_at, deadline_at, accepted, accepted_at,"
    " send_duration_seconds, transcript, send_error, tls_version, tls_cert_not_after,"
    " outcome, finished_at, folder, latency_seconds, arrival,"
    " late_seen_at, late_folder, late_latency_seconds, interrupted_at,"
    " esp_message_id, esp_delivered_at, esp_complained_at"
)


def _bounce_reason(value: str) -> BounceReason:
    """A stored reason; one this agent does not know (a newer agent wrote it) reads as other."""
    try:
        return BounceReason(value)
    except ValueError:
        return BounceReason.OTHER


class LedgerError(AgentError):
    """The ledger file cannot be opened, read or written; the message names the file. `kind` says
    why the file failed; it is None when the ledger refused a call (an unknown probe, a schema
    from a newer agent) rather than failed."""

    category = ErrorCategory.STATE

    def __init__(self, message: str, *, kind: LedgerErrorKind | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class UnknownProbeError(LedgerError):
    """A call named a probe id the ledger has never recorded (a caller bug)."""


@dataclass(frozen=True, slots=True)
class BounceRecord:
    """One bounce of a probe: hard or soft, from the SMTP reply or a DSN."""

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

    @property
    def recipient_invalid(self) -> bool:
        """The address or its domain does not exist."""
        return self.reason is BounceReason.RECIPIENT_INVALID


class ProbeState(enum.StrEnum):
    """Where a probe is in its life cycle; derived from which columns are set."""

    SENDING = "sending"  # recorded before the SMTP transaction; no result yet
    INTERRUPTED = "interrupted"  # a restart cut the transaction; open until seen or its deadline
    AWAITING = "awaiting"  # accepted by the server; waiting for arrival or the deadline
    UNACCEPTED = "unaccepted"  # send result stored, not accepted, outcome not yet recorded
    FINAL = "final"


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """One row of the ledger, decoded."""

    probe_id: str
    route: str
    mailbox: str
    created_at: float
    deadline_at: float
    accepted: bool | None  # None until the send result is recorded
    accepted_at: float | None
    send_duration_seconds: float | None
    transcript: tuple[SmtpReply, ...]
    send_error: ProbeError | None
    tls_version: str | None
    tls_cert_not_after: float | None
    outcome: Outcome | None
    finished_at: float | None
    folder: str | None
    latency_seconds: float | None
    arrival: Arrival | None  # stored when seen, even before the send result
    late_seen_at: float | None
    late_folder: str | None
    late_latency_seconds: float | None
    interrupted_at: float | None = None  # set when a restart found the transaction cut
    esp_message_id: str | None = None  # the ESP's id from the 250 reply (routes with an esp)
    esp_delivered_at: float | None = None  # when the ESP says it delivered the probe
    esp_complained_at: float | None = None  # when a complaint about the probe came

    @property
    def state(self) -> ProbeState:
        if self.outcome is not None:
            return ProbeState.FINAL
        if self.accepted is None:
            return ProbeState.SENDING if self.interrupted_at is None else ProbeState.INTERRUPTED
        return ProbeState.AWAITING if self.accepted else ProbeState.UNACCEPTED

    @property
    def auth(self) -> AuthVerdicts | None:
        """The authentication verdicts of the probe's arrival, if it arrived."""
        return self.arrival.auth if self.arrival is not None else None

    @property
    def spam(self) -> tuple[SpamVerdict, ...]:
        """The spam-filter verdicts of the probe's arrival; empty if none or not arrived."""
        return self.arrival.spam if self.arrival is not None else ()

    @property
    def send_result(self) -> SendResult | None:
        """The stored SendResult, rebuilt; None while the probe is still being sent."""
        if self.accepted is None:
            return None
        return SendResult(
            transcript=self.transcript,
            accepted=self.accepted,
            accepted_at=self.accepted_at,
            duration_seconds=self.send_duration_seconds or 0.0,
            error=self.send_error,
            tls_version=self.tls_version,
            tls_cert_not_after=self.tls_cert_not_after,
        )


class Ledger:
    """The probe ledger in one SQLite file. Use from one thread; each call commits on return.

    `on_health` is called (on that thread) with every failed operation, and with the first write
    that succeeds after a failed one; it must not raise.
    """

    def __init__(
        self, path: Path, *, on_health: Callable[[LedgerHealth], None] | None = None
    ) -> None:
        self._path = Path(path)
        self._on_health = on_health
        self._health = LedgerHealth(writable=True)
        _create_private(self._path)
        with self._translate("open"):
            self._conn = sqlite3.connect(
                self._path,
                timeout=_BUSY_TIMEOUT_SECONDS,
                isolation_level=None,  # autocommit; multi-statement work uses explicit BEGIN
                check_same_thread=True,  # the "one thread" contract is enforced, not hoped for
            )
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def in_state_dir(
        cls, state_dir: Path, *, on_health: Callable[[LedgerHealth], None] | None = None
    ) -> Ledger:
        """Open (creating if needed, owner-only) the ledger file in `state_dir`."""
        try:
            Path(state_dir).mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create state directory {state_dir}: {exc}") from exc
        return cls(Path(state_dir) / LEDGER_FILENAME, on_health=on_health)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def health(self) -> LedgerHealth:
        """Whether the last write succeeded and, if not, why it failed (safe to read from any
        thread: it is replaced, never changed)."""
        return self._health

    def cap_pages(self, pages: int) -> int:
        """Fault injection for tests: cap the file at `pages` pages on this connection (SQLite's
        `max_page_count`, never below the pages in use: 1 caps it at its current size). A write
        that needs one more page then fails with SQLITE_FULL, as on a full disk; a higher cap
        frees the space again. Returns the cap in force. The agent never calls it, and no
        setting reaches it; the cap ends with the connection."""
        if pages < 1:
            raise ValueError(f"pages must be at least 1, got {pages}")  # 0 only asks SQLite
        with self._translate("cap its size"):
            row = self._conn.execute(f"PRAGMA max_page_count = {int(pages)}").fetchone()
        return int(row[0])

    def __repr__(self) -> str:
        return f"Ledger({str(self._path)!r})"

    # -- opening ----------------------------------------------------------------------------------

    def _setup(self) -> None:
        with self._translate("open"):
            # Reading the header first turns "not a database" into an error here, not later.
            self._conn.execute("PRAGMA journal_mode=WAL").fetchone()
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            # BEGIN IMMEDIATE: two processes opening a new file at once must not both create it.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._check_or_create_schema()
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[None]:
        """Several statements as one transaction (the connection autocommits otherwise)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def _check_or_create_schema(self) -> None:
        version: int = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self._path} has schema version {version}, newer than this agent's "
                f"{SCHEMA_VERSION}; upgrade the agent or move the file away"
            )
        if version == 0:
            tables = self._conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
            if tables:
                raise LedgerError(f"{self._path} is an SQLite database but not a probe ledger")
            for statement in _SCHEMA_V1:
                self._conn.execute(statement)
            version = 1
        while version < SCHEMA_VERSION:
            steps = _MIGRATIONS.get(version)
            if steps is None:
                raise LedgerError(f"ledger {self._path} has unsupported schema version {version}")
            for statement in steps:
                self._conn.execute(statement)
            version += 1
        self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _translate(self, action: str, *, write: bool = False) -> Iterator[None]:
        """Translate sqlite3 errors at the edge into LedgerError naming the file, and report each
        one. A `write` that changed a row after a failed write reports the ledger writable again
        (a write that changed nothing proves nothing about free space)."""
        try:
            changes = self._conn.total_changes if write else 0
            yield
            # Inside a transaction nothing is on disk before its commit, which reports instead.
            if (
                write
                and not self._health.writable
                and not self._conn.in_transaction
                and self._conn.total_changes > changes
            ):
                self._report(LedgerHealth(writable=True), write=True)
        except sqlite3.Error as exc:
            kind = _kind_of(exc)
            failed = LedgerHealth(self._health.writable and not write, kind, str(exc))
            self._report(failed, write=write)
            raise LedgerError(f"ledger {self._path}: cannot {action}: {exc}", kind=kind) from exc

    def _report(self, health: LedgerHealth, *, write: bool) -> None:
        if write:
            self._health = health  # a failed read says nothing about writes
        if self._on_health is not None:
            self._on_health(health)

    def _corrupt(self, message: str) -> LedgerError:
        """A row or value SQLite returned that this agent cannot decode, reported as `corrupt`."""
        self._report(
            LedgerHealth(self._health.writable, LedgerErrorKind.CORRUPT, message), write=False
        )
        return LedgerError(f"ledger {self._path}: {message}", kind=LedgerErrorKind.CORRUPT)

    def close(self) -> None:
        with self._translate("close"):
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writes -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """The writes inside as one transaction: all or none, and one commit (one fsync)
        instead of one each. What they returned holds only once this block exits without
        raising: count nothing inside it. A failure rolls everything back, so callers retry the
        whole block (each write is idempotent)."""
        with self._translate("begin a transaction", write=True):
            self._conn.execute("BEGIN IMMEDIATE")
        changes = self._conn.total_changes
        try:
            yield
            with self._translate("commit", write=True):
                self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            raise
        if not self._health.writable and self._conn.total_changes > changes:
            self._report(LedgerHealth(writable=True), write=True)

    def record_sending(
        self, *, probe_id: str, route: str, mailbox: str, created_at: float, deadline_at: float
    ) -> None:
        """Record a probe before its SMTP transaction starts, so a crash mid-send is known."""
        with self._translate("record a probe", write=True):
            try:
                self._conn.execute(
                    "INSERT INTO probes (probe_id, route, mailbox, created_at, deadline_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (probe_id, route, mailbox, created_at, deadline_at),
                )
            except sqlite3.IntegrityError as exc:
                raise LedgerError(
                    f"ledger {self._path}: probe {probe_id} is already recorded"
                ) from exc

    def record_send_result(
        self, probe_id: str, result: SendResult, *, esp_message_id: str | None = None
    ) -> bool:
        """Store what the sender learned (and the ESP's message id from its 250, for a route
        with an ESP). Returns False if a result or outcome was already stored (the first result
        stands). Raises UnknownProbeError for a probe never recorded."""
        with self._translate("record a send result", write=True):
            cursor = self._conn.execute(
                "UPDATE probes SET accepted = ?, accepted_at = ?, send_duration_seconds = ?,"
                " transcript = ?, send_error = ?, tls_version = ?, tls_cert_not_after = ?,"
                " esp_message_id = ? WHERE probe_id = ? AND accepted IS NULL AND outcome IS NULL",
                (
                    int(result.accepted),
                    result.accepted_at,
                    result.duration_seconds,
                    transcript_json(result.transcript),
                    None if result.error is None else json.dumps(_error_to_json(result.error)),
                    result.tls_version,
                    result.tls_cert_not_after,
                    esp_message_id,
                    probe_id,
                ),
            )
        if cursor.rowcount:
            return True
        self._require_known(probe_id)
        return False

    def finalize(
        self,
        probe_id: str,
        *,
        outcome: Outcome,
        finished_at: float,
        latency_seconds: float | None = None,
        arrival: Arrival | None = None,
    ) -> bool:
        """Set the probe's one final outcome (with its arrival, for a probe that was seen). True
        only for the call that set it; False if it was already final (or is unknown: an arrival
        for a pruned or forged id is not a caller bug)."""
        with self._translate("finalize a probe", write=True):
            cursor = self._conn.execute(
                "UPDATE probes SET outcome = ?, finished_at = ?, folder = ?, latency_seconds = ?,"
                " arrival = coalesce(?, arrival) WHERE probe_id = ? AND outcome IS NULL",
                (
                    outcome.value,
                    finished_at,
                    None if arrival is None else arrival.folder,
                    latency_seconds,
                    None if arrival is None else json.dumps(_arrival_to_json(arrival)),
                    probe_id,
                ),
            )
        return cursor.rowcount == 1

    def record_arrival(self, arrival: Arrival) -> bool:
        """Store where a probe was seen before it can be finalized (its send result is not stored
        yet). True the first time; False if it is final, unknown, or already has an arrival.
        Durable like every write: the sender, or the next start, finalizes it from here."""
        with self._translate("record an arrival", write=True):
            cursor = self._conn.execute(
                "UPDATE probes SET arrival = ? WHERE probe_id = ? AND outcome IS NULL"
                " AND arrival IS NULL",
                (json.dumps(_arrival_to_json(arrival)), arrival.probe_id),
            )
        return cursor.rowcount == 1

    def mark_late(
        self, probe_id: str, *, seen_at: float, folder: str, latency_seconds: float
    ) -> bool:
        """Record that a probe already final as `missing` arrived after all; True the first time."""
        with self._translate("mark a probe late", write=True):
            cursor = self._conn.execute(
                "UPDATE probes SET late_seen_at = ?, late_folder = ?, late_latency_seconds = ?"
                " WHERE probe_id = ? AND outcome = ? AND late_seen_at IS NULL",
                (seen_at, folder, latency_seconds, probe_id, Outcome.MISSING.value),
            )
        return cursor.rowcount == 1

    def record_bounce(
        self,
        probe_id: str,
        *,
        bounce_type: BounceType,
        source: BounceSource,
        status: str | None,
        reporting_mta: str | None,
        seen_at: float,
        reason: BounceReason = BounceReason.OTHER,
        smtp_code: str | None = None,
        action: str | None = None,
        recipient: str | None = None,
        original_message_id: str | None = None,
    ) -> bool:
        """Record a bounce of the probe; True only the first time for this type and source, so a
        DSN seen again (after a restart, or sent twice) is counted once."""
        with self._translate("record a bounce", write=True):
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO bounces (probe_id, type, source, status, reporting_mta,"
                " seen_at, reason, smtp_code, action, recipient, original_message_id)"
                " SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS"
                " (SELECT 1 FROM probes WHERE probe_id = ?)",
                (
                    probe_id,
                    bounce_type.value,
                    source.value,
                    status,
                    reporting_mta,
                    seen_at,
                    reason.value,
                    smtp_code,
                    action,
                    recipient,
                    original_message_id,
                    probe_id,
                ),
            )
        return cursor.rowcount == 1

    def bounces(self, probe_id: str) -> list[BounceRecord]:
        """The bounces recorded for a probe, in the order they were seen."""
        with self._translate("read bounces"):
            rows = self._conn.execute(
                "SELECT type, source, status, reporting_mta, seen_at, reason, smtp_code, action,"
                " recipient, original_message_id FROM bounces WHERE probe_id = ? ORDER BY seen_at",
                (probe_id,),
            ).fetchall()
        return [
            BounceRecord(
                BounceType(row[0]),
                BounceSource(row[1]),
                status=row[2],
                reporting_mta=row[3],
                seen_at=row[4],
                reason=_bounce_reason(row[5]),
                smtp_code=row[6],
                action=row[7],
                recipient=row[8],
                original_message_id=row[9],
            )
            for row in rows
        ]

    def prune(self, older_than: float, *, limit: int | None = None) -> int:
        """Delete probes that finished before `older_than`, the oldest first and at most `limit`
        of them (so a caller on the event loop can prune in batches); probes still in flight are
        kept. Returns how many were deleted."""
        with self._translate("prune", write=True):
            cursor = self._conn.execute(
                "DELETE FROM probes WHERE rowid IN (SELECT rowid FROM probes INDEXED BY"
                " probes_finished WHERE outcome IS NOT NULL AND finished_at < ?"
                " ORDER BY finished_at LIMIT ?)",
                (older_than, -1 if limit is None else limit),
            )
        return cursor.rowcount

    def mark_esp_delivered(self, probe_id: str, *, at: float) -> bool:
        """Record when the ESP delivered the probe; True only the first time."""
        with self._translate("record an ESP delivery", write=True):
            cursor = self._conn.execute(
                "UPDATE probes SET esp_delivered_at = ? WHERE probe_id = ?"
                " AND esp_delivered_at IS NULL",
                (at, probe_id),
            )
        return cursor.rowcount == 1

    def mark_esp_complaint(self, probe_id: str, *, at: float) -> bool:
        """Record a complaint about the probe; True only the first time."""
        with self._translate("record an ESP complaint", write=True):
            cursor = self._conn.execute(
                "UPDATE probes SET esp_complained_at = ? WHERE probe_id = ?"
                " AND esp_complained_at IS NULL",
                (at, probe_id),
            )
        return cursor.rowcount == 1

    def keep_esp_event(
        self, route: str, key: str, event: EspEvent, *, received_at: float, cap: int
    ) -> None:
        """Keep an event whose probe is not known yet (its 250 is not stored); at most `cap`
        events are kept, the oldest dropped first."""
        with self._translate("keep an early ESP event", write=True), self._atomic():
            self._conn.execute(
                "INSERT INTO esp_pending (route, key, received_at, event) VALUES (?, ?, ?, ?)",
                (route, key, received_at, json.dumps(esp_event_json(event))),
            )
            self._conn.execute(
                "DELETE FROM esp_pending WHERE rowid IN (SELECT rowid FROM esp_pending"
                " ORDER BY received_at DESC LIMIT -1 OFFSET ?)",
                (cap,),
            )

    def take_esp_events(self, route: str, keys: Iterable[str]) -> list[EspEvent]:
        """The kept events of `route` under any of `keys`, oldest first, removed from the ledger."""
        wanted = list(keys)
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        with self._translate("take early ESP events", write=True), self._atomic():
            rows = self._conn.execute(
                f"SELECT rowid, event FROM esp_pending WHERE route = ? AND key IN ({marks})"
                " ORDER BY received_at, rowid",
                (route, *wanted),
            ).fetchall()
            self._conn.executemany(
                "DELETE FROM esp_pending WHERE rowid = ?", [(row[0],) for row in rows]
            )
        events: list[EspEvent] = []
        for _, text in rows:
            try:
                events.append(esp_event_from_json(json.loads(text)))
            except (ValueError, TypeError, KeyError):
                continue  # written by a newer agent: dropped, as it would expire anyway
        return events

    def expire_esp_events(self, older_than: float) -> int:
        """Drop kept events received before `older_than`; how many were dropped."""
        with self._translate("expire early ESP events", write=True):
            cursor = self._conn.execute(
                "DELETE FROM esp_pending WHERE received_at < ?", (older_than,)
            )
        return cursor.rowcount

    def pending_esp_events(self) -> int:
        with self._translate("count early ESP events"):
            row = self._conn.execute("SELECT count(*) FROM esp_pending").fetchone()
        return int(row[0])

    # -- reads ------------------------------------------------------------------------------------

    def by_esp_message_id(self, route: str, message_id: str) -> ProbeRecord | None:
        """The probe of `route` whose 250 reply carried this ESP message id."""
        rows = self._select(
            "WHERE route = ? AND esp_message_id = ? ORDER BY created_at DESC LIMIT 1",
            (route, message_id),
        )
        return rows[0] if rows else None

    def get(self, probe_id: str) -> ProbeRecord | None:
        rows = self._select("WHERE probe_id = ?", (probe_id,))
        return rows[0] if rows else None

    def in_flight(self) -> list[ProbeRecord]:
        """Every probe without a final outcome, oldest first."""
        # The partial index holds only open probes; without INDEXED BY the planner walks
        # probes_created for the ORDER BY, reading every probe ever sent.
        return self._select(
            "INDEXED BY probes_open WHERE outcome IS NULL ORDER BY created_at, probe_id", ()
        )

    def due(self, now: float) -> list[ProbeRecord]:
        """Accepted or interrupted probes past their deadline and not final: the reaper makes
        them `missing` (accepted) or `error` (interrupted)."""
        return self._select(
            "INDEXED BY probes_open"
            " WHERE outcome IS NULL AND (accepted = 1 OR interrupted_at IS NOT NULL)"
            " AND deadline_at <= ? ORDER BY deadline_at, probe_id",
            (now,),
        )

    def unsent_interrupted(self) -> list[ProbeRecord]:
        """Probes whose send never reached AWAITING and were never finalized: after a restart,
        SENDING ones were interrupted mid-transaction, UNACCEPTED ones between send and finalize.
        Probes already marked INTERRUPTED by an earlier start are not listed again."""
        return self._select(
            "INDEXED BY probes_open"
            " WHERE outcome IS NULL AND ((accepted IS NULL AND interrupted_at IS NULL)"
            " OR accepted = 0) ORDER BY created_at, probe_id",
            (),
        )

    def mark_interrupted(self, probe_id: str, *, at: float) -> bool:
        """Mark a SENDING probe as cut mid-transaction by a restart; False when it is not
        SENDING (it has a send result, an outcome, or was marked already)."""
        with self._translate("mark a probe interrupted", write=True):
            cursor = self._conn.execute(
                "UPDATE probes SET interrupted_at = ? WHERE probe_id = ? AND accepted IS NULL"
                " AND outcome IS NULL AND interrupted_at IS NULL",
                (at, probe_id),
            )
        if cursor.rowcount == 0:
            self._require_known(probe_id)
            return False
        return True

    def in_flight_counts(self) -> dict[tuple[str, str], int]:
        with self._translate("count probes in flight"):
            rows = self._conn.execute(
                # The partial index holds only open probes; without INDEXED BY the planner walks
                # probes_pair for the GROUP BY, reading every probe ever sent.
                "SELECT route, mailbox, count(*) FROM probes INDEXED BY probes_open"
                " WHERE outcome IS NULL GROUP BY route, mailbox ORDER BY route, mailbox"
            ).fetchall()
        return {(route, mailbox): count for route, mailbox, count in rows}

    def recent(self, limit: int) -> list[ProbeRecord]:
        """The `limit` most recently created probes, newest first."""
        return self._select("ORDER BY created_at DESC, probe_id DESC LIMIT ?", (limit,))

    def latest_by_pair(
        self, pairs: Iterable[tuple[str, str]] | None = None
    ) -> dict[tuple[str, str], ProbeRecord]:
        """The most recently created probe of each (route, mailbox), in any state.

        With `pairs`, only those pairs, each found with two index seeks: the cost no longer grows
        with the number of probes stored (the status page's path). Without, every pair ever seen.
        """
        if pairs is not None:
            found: dict[tuple[str, str], ProbeRecord] = {}
            for route, mailbox in dict.fromkeys(pairs):
                rows = self._select(
                    "WHERE route = ?1 AND mailbox = ?2 AND created_at = (SELECT max(created_at)"
                    " FROM probes WHERE route = ?1 AND mailbox = ?2)"
                    " ORDER BY probe_id DESC LIMIT 1",
                    (route, mailbox),
                )
                if rows:
                    found[route, mailbox] = rows[0]
            return found
        records = self._select(
            "WHERE rowid IN (SELECT rowid FROM probes AS p WHERE p.route = probes.route"
            " AND p.mailbox = probes.mailbox ORDER BY p.created_at DESC, p.probe_id DESC LIMIT 1)"
            " ORDER BY route, mailbox",
            (),
        )
        return {(r.route, r.mailbox): r for r in records}

    def latest_outcomes(
        self, pairs: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[Outcome | None, float]]:
        """The outcome (None while in flight) and `created_at` of each pair's latest probe: what
        ranks the status page's pairs. One statement for every pair (the pairs as one JSON
        parameter), two index seeks a pair inside SQLite and nothing decoded: about half the time
        of one query a pair from Python at 10,000 pairs."""
        wanted = json.dumps(list(dict.fromkeys(pairs)))
        with self._translate("read latest outcomes"):
            rows = self._conn.execute(
                "SELECT json_extract(p.value, '$[0]'), json_extract(p.value, '$[1]'),"
                " probes.outcome, probes.created_at FROM json_each(?1) AS p"
                " JOIN probes ON probes.rowid = (SELECT rowid FROM probes AS q"
                " WHERE q.route = json_extract(p.value, '$[0]')"
                " AND q.mailbox = json_extract(p.value, '$[1]')"
                # max() first, as in latest_by_pair: the probe_id tie-break then sorts the few
                # probes of that instant, not the pair's whole history.
                " AND q.created_at = (SELECT max(created_at) FROM probes AS m"
                " WHERE m.route = json_extract(p.value, '$[0]')"
                " AND m.mailbox = json_extract(p.value, '$[1]'))"
                " ORDER BY q.probe_id DESC LIMIT 1)",
                (wanted,),
            ).fetchall()
        found: dict[tuple[str, str], tuple[Outcome | None, float]] = {}
        for route, mailbox, outcome, created_at in rows:
            try:
                found[route, mailbox] = (
                    None if outcome is None else Outcome(outcome),
                    float(created_at),
                )
            except ValueError as exc:
                raise self._corrupt(f"unreadable outcome of {route}/{mailbox}") from exc
        return found

    def last_finished_at(
        self, pairs: Iterable[tuple[str, str]] | None = None
    ) -> dict[tuple[str, str, Outcome], float]:
        """Latest `finished_at` per (route, mailbox, outcome): restores the last-outcome gauges
        after a restart, so "no inbox delivery for N hours" alerts do not fire on every restart.

        With `pairs`, only those, each outcome found by one seek in the covering index: the cost
        follows the pairs, not the history (the start's path). Without, every pair ever seen, by
        one scan of that index."""
        if pairs is None:
            with self._translate("read last outcomes"):
                rows = self._conn.execute(
                    "SELECT route, mailbox, outcome, max(finished_at) FROM probes"
                    " INDEXED BY probes_last_outcome"
                    " WHERE outcome IS NOT NULL GROUP BY route, mailbox, outcome"
                    " ORDER BY route, mailbox, outcome"
                ).fetchall()
        else:
            rows = []
            with self._translate("read last outcomes"):
                for route, mailbox in dict.fromkeys(pairs):
                    for outcome in Outcome:
                        (latest,) = self._conn.execute(
                            "SELECT max(finished_at) FROM probes INDEXED BY probes_last_outcome"
                            " WHERE route = ? AND mailbox = ? AND outcome = ?",
                            (route, mailbox, outcome.value),
                        ).fetchone()
                        if latest is not None:
                            rows.append((route, mailbox, outcome.value, latest))
        try:
            return {(r, m, Outcome(o)): float(t) for r, m, o, t in rows}
        except (ValueError, TypeError) as exc:
            raise self._corrupt(f"unreadable outcome: {exc}") from exc

    # -- helpers ----------------------------------------------------------------------------------

    def _require_known(self, probe_id: str) -> None:
        with self._translate("read a probe"):
            row = self._conn.execute(
                "SELECT 1 FROM probes WHERE probe_id = ?", (probe_id,)
            ).fetchone()
        if row is None:
            raise UnknownProbeError(f"ledger {self._path}: no probe {probe_id}")

    def _select(self, clause: str, params: tuple[Any, ...]) -> list[ProbeRecord]:
        with self._translate("read probes"):
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM probes {clause}", params).fetchall()
        return [self._decode(row) for row in rows]

    def _decode(self, row: tuple[Any, ...]) -> ProbeRecord:
        try:
            return _record_from_row(row)
        except (ValueError, TypeError, KeyError) as exc:
            # json.JSONDecodeError is a ValueError; so is an enum value this agent does not know.
            raise self._corrupt(f"unreadable probe {row[0]}: {exc}") from exc


def _kind_of(exc: sqlite3.Error) -> LedgerErrorKind:
    # Errors the sqlite3 module raises itself (a closed connection, the wrong thread) have no code.
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return LedgerErrorKind.OTHER
    return _ERROR_KINDS.get(code & 0xFF, LedgerErrorKind.OTHER)


def _create_private(path: Path) -> None:
    """Create the ledger file owner-only before SQLite opens it: SQLite would create it with the
    umask's mode (0644 under the usual 022), and gives the -wal and -shm files the mode of the
    database file. An existing file keeps its mode."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, LEDGER_FILE_MODE)
    except OSError:
        return  # it exists, or cannot be created: SQLite opens it or says why it cannot
    try:
        os.fchmod(descriptor, LEDGER_FILE_MODE)  # exactly 0600, whatever the umask took away
    finally:
        os.close(descriptor)


# -- JSON encoding of the structured columns ------------------------------------------------------


def esp_event_json(event: EspEvent) -> dict[str, Any]:
    return {
        "type": event.event_type.value,
        "at": event.at,
        "message_id": event.message_id,
        "probe_id": event.probe_id,
        "status": event.status,
        "smtp_code": event.smtp_code,
        "diagnostic": event.diagnostic,
        "recipient": event.recipient,
    }


def esp_event_from_json(data: dict[str, Any]) -> EspEvent:
    return EspEvent(
        EspEventType(data["type"]),
        data.get("at"),
        message_id=data.get("message_id"),
        probe_id=data.get("probe_id"),
        status=data.get("status"),
        smtp_code=data.get("smtp_code"),
        diagnostic=data.get("diagnostic"),
        recipient=data.get("recipient"),
    )


def transcript_json(transcript: Iterable[SmtpReply]) -> str:
    """A transcript as stored: one `[stage, code, enhanced code, text]` array per reply, without
    spaces. The transcript is most of a row; naming every field in every reply (the form before
    this one, still read) cost about a third more."""
    return json.dumps(
        [[reply.stage.value, reply.code, reply.enhanced_code, reply.text] for reply in transcript],
        separators=(",", ":"),
    )


def _reply_from_json(data: list[Any] | dict[str, Any]) -> SmtpReply:
    if isinstance(data, dict):  # the named form of rows written by earlier versions
        data = [data["stage"], data["code"], data["enhanced_code"], data["text"]]
    stage, code, enhanced_code, text = data
    return SmtpReply(
        stage=Stage(stage),
        code=int(code),
        enhanced_code=enhanced_code,
        # Rows written before the sender made server text valid may hold lone surrogates.
        text=valid_text(str(text)),
    )


def _error_to_json(error: ProbeError) -> dict[str, Any]:
    return {"stage": error.stage.value, "kind": error.kind.value, "message": error.message}


def _error_from_json(data: dict[str, Any]) -> ProbeError:
    return ProbeError(
        stage=Stage(data["stage"]),
        kind=ErrorKind(data["kind"]),
        message=valid_text(str(data["message"])),
    )


def _arrival_to_json(arrival: Arrival) -> dict[str, Any]:
    """probe_id and mailbox are columns of the row; the rest is the arrival's own."""
    return {
        "folder": arrival.folder,
        "placement": arrival.placement.value,
        "seen_at": arrival.seen_at,
        "auth": _auth_to_json(arrival.auth),
        "found_by": None if arrival.found_by is None else arrival.found_by.value,
        "category": None if arrival.category is None else arrival.category.value,
        "spam": [spam_verdict_json(verdict) for verdict in arrival.spam],
    }


def _arrival_from_json(probe_id: str, mailbox: str, data: dict[str, Any]) -> Arrival:
    auth = data.get("auth")
    found_by = data.get("found_by")  # absent from arrivals stored before it was recorded
    category = data.get("category")  # likewise
    spam = data.get("spam") or ()  # likewise
    return Arrival(
        probe_id=probe_id,
        mailbox=mailbox,
        folder=str(data["folder"]),
        placement=Outcome(data["placement"]),
        seen_at=float(data["seen_at"]),
        auth=AuthVerdicts() if auth is None else _auth_from_json(auth),
        found_by=None if found_by is None else FoundBy(found_by),
        category=None if category is None else InboxCategory(category),
        spam=tuple(_spam_from_json(verdict) for verdict in spam),
    )


def spam_verdict_json(verdict: SpamVerdict) -> dict[str, Any]:
    """One spam verdict as JSON: the ledger's form, also `once --json`'s (docs/cli.md)."""
    return {
        "source": verdict.source.value,
        "score": verdict.score,
        "threshold": verdict.threshold,
        "is_spam": verdict.is_spam,
        "category": verdict.category.value,
        "bulk_level": verdict.bulk_level,
    }


def _spam_from_json(data: dict[str, Any]) -> SpamVerdict:
    def number(key: str) -> float | None:
        value = data.get(key)
        return None if value is None else float(value)

    is_spam = data.get("is_spam")
    bulk_level = data.get("bulk_level")
    return SpamVerdict(
        source=SpamSource(data["source"]),
        score=number("score"),
        threshold=number("threshold"),
        is_spam=None if is_spam is None else bool(is_spam),
        category=SpamCategory(data["category"]),
        bulk_level=None if bulk_level is None else int(bulk_level),
    )


def _auth_to_json(auth: AuthVerdicts) -> dict[str, Any]:
    data: dict[str, Any] = {
        method.value: None if result is None else result.value for method, result in auth.items()
    }
    data["methods"] = {name: result.value for name, result in auth.methods.items()}
    data["details"] = [
        {
            "method": detail.method,
            "result": detail.result.value,
            "raw_result": detail.raw_result,
            "authserv_id": detail.authserv_id,
            "reason": detail.reason,
            "comment": detail.comment,
            "properties": [list(pair) for pair in detail.properties],
        }
        for detail in auth.details
    ]
    data["dkim_signatures"] = [
        {
            "domain": signature.domain,
            "selector": signature.selector,
            "result": signature.result.value,
            "raw_result": signature.raw_result,
        }
        for signature in auth.dkim_signatures
    ]
    return data


def _auth_from_json(data: dict[str, Any]) -> AuthVerdicts:
    """Arrivals stored before methods, details and signatures were recorded have only the four
    summaries; they read back with the rest empty."""

    def result(key: str) -> AuthResult | None:
        value = data.get(key)
        return None if value is None else AuthResult(value)

    def optional(value: object) -> str | None:
        return None if value is None else str(value)

    return AuthVerdicts(
        spf=result("spf"),
        dkim=result("dkim"),
        dmarc=result("dmarc"),
        arc=result("arc"),
        methods={
            str(name): AuthResult(value) for name, value in (data.get("methods") or {}).items()
        },
        details=tuple(
            AuthDetail(
                method=str(item["method"]),
                result=AuthResult(item["result"]),
                raw_result=str(item["raw_result"]),
                authserv_id=optional(item.get("authserv_id")),
                reason=optional(item.get("reason")),
                comment=optional(item.get("comment")),
                properties=tuple((str(key), str(value)) for key, value in item["properties"]),
            )
            for item in data.get("details") or ()
        ),
        dkim_signatures=tuple(
            DkimSignature(
                domain=optional(item.get("domain")),
                selector=optional(item.get("selector")),
                result=AuthResult(item["result"]),
                raw_result=str(item["raw_result"]),
            )
            for item in data.get("dkim_signatures") or ()
        ),
    )


def _record_from_row(row: tuple[Any, ...]) -> ProbeRecord:
    (
        probe_id,
        route,
        mailbox,
        created_at,
        deadline_at,
        accepted,
        accepted_at,
        send_duration_seconds,
        transcript,
        send_error,
        tls_version,
        tls_cert_not_after,
        outcome,
        finished_at,
        folder,
        latency_seconds,
        arrival,
        late_seen_at,
        late_folder,
        late_latency_seconds,
        interrupted_at,
        esp_message_id,
        esp_delivered_at,
        esp_complained_at,
    ) = row
    return ProbeRecord(
        probe_id=probe_id,
        route=route,
        mailbox=mailbox,
        created_at=created_at,
        deadline_at=deadline_at,
        accepted=None if accepted is None else bool(accepted),
        accepted_at=accepted_at,
        send_duration_seconds=send_duration_seconds,
        transcript=tuple(_reply_from_json(r) for r in json.loads(transcript or "[]")),
        send_error=None if send_error is None else _error_from_json(json.loads(send_error)),
        tls_version=tls_version,
        tls_cert_not_after=tls_cert_not_after,
        outcome=None if outcome is None else Outcome(outcome),
        finished_at=finished_at,
        folder=folder,
        latency_seconds=latency_seconds,
        arrival=(
            None if arrival is None else _arrival_from_json(probe_id, mailbox, json.loads(arrival))
        ),
        late_seen_at=late_seen_at,
        late_folder=late_folder,
        late_latency_seconds=late_latency_seconds,
        interrupted_at=interrupted_at,
        esp_message_id=esp_message_id,
        esp_delivered_at=esp_delivered_at,
        esp_complained_at=esp_complained_at,
    )
