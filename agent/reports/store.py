"""Which reports were counted, on disk: `reports.sqlite` in the state directory.

A file of its own, not a ledger table: the ledger's schema moves by migrations, and nothing here
joins probes. Three small tables:

* `messages`: a digest of every message already read, per report mailbox. The watcher hands a
  folder over again after each restart; a message read before is skipped without a count.
* `reports`: every counted report by (mailbox, kind, reporting organisation, report id). Reporters
  resend (RFC 7489 7.2.1.1 expects it): a second message with the same id is a `duplicate`.
* `volumes`: messages (DMARC) or sessions (TLS-RPT) per source IP, organisation and domain, so a
  restart keeps the same top values as labels (`ReportStore.top`).

One transaction per message: its digest, its reports and their volumes are stored together,
before any metric moves, so a crash loses a report's counts at worst, never counts one twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.model import ReportKind

__all__ = ["FILE_NAME", "CountedReport", "ReportStore"]

FILE_NAME: Final = "reports.sqlite"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    mailbox TEXT NOT NULL, digest BLOB NOT NULL, read_at REAL NOT NULL,
    PRIMARY KEY (mailbox, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reports (
    mailbox TEXT NOT NULL, kind TEXT NOT NULL, org TEXT NOT NULL, report_id TEXT NOT NULL,
    period_end REAL NOT NULL, counted_at REAL NOT NULL,
    PRIMARY KEY (mailbox, kind, org, report_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS volumes (
    mailbox TEXT NOT NULL, label TEXT NOT NULL, value TEXT NOT NULL, amount INTEGER NOT NULL,
    PRIMARY KEY (mailbox, label, value)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class CountedReport:
    """A report to count once: its identity and what it adds to the volumes."""

    kind: ReportKind
    org: str
    report_id: str
    end: float
    volumes: tuple[tuple[str, str, int], ...]  # (label, value, amount)


class ReportStore:
    """The counted reports of every report mailbox; call from one thread (the event loop)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL").fetchone()
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> ReportStore:
        return cls(state_dir / FILE_NAME)

    def close(self) -> None:
        self._conn.close()

    def seen(self, mailbox: str, digest: bytes) -> bool:
        """Whether this message was read from this mailbox before."""
        row = self._conn.execute(
            "SELECT 1 FROM messages WHERE mailbox = ? AND digest = ?", (mailbox, digest)
        ).fetchone()
        return row is not None

    def record(
        self, mailbox: str, digest: bytes, reports: Sequence[CountedReport], *, now: float
    ) -> list[bool]:
        """Store one message and its reports in one transaction; for each report, whether it is
        new (False: the same reporter's report id was counted before, a duplicate)."""
        fresh: list[bool] = []
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(
                "INSERT OR IGNORE INTO messages VALUES (?, ?, ?)", (mailbox, digest, now)
            )
            for report in reports:
                cursor = self._conn.execute(
                    "INSERT OR IGNORE INTO reports VALUES (?, ?, ?, ?, ?, ?)",
                    (mailbox, report.kind.value, report.org, report.report_id, report.end, now),
                )
                is_new = cursor.rowcount == 1
                fresh.append(is_new)
                if is_new:
                    self._add_volumes(mailbox, report.volumes)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return fresh

    def _add_volumes(self, mailbox: str, volumes: Iterable[tuple[str, str, int]]) -> None:
        self._conn.executemany(
            "INSERT INTO volumes VALUES (?, ?, ?, ?) ON CONFLICT (mailbox, label, value) "
            "DO UPDATE SET amount = amount + excluded.amount",
            [(mailbox, label, value, amount) for label, value, amount in volumes],
        )

    def top(self, mailbox: str, label: str, limit: int) -> list[str]:
        """The `limit` values of `label` with the largest volume so far, largest first."""
        rows = self._conn.execute(
            "SELECT value FROM volumes WHERE mailbox = ? AND label = ? "
            "ORDER BY amount DESC, value LIMIT ?",
            (mailbox, label, limit),
        ).fetchall()
        return [value for (value,) in rows]

    def newest_ends(self, mailbox: str) -> dict[ReportKind, float]:
        """Per kind, the end of the period of the newest report counted from `mailbox`."""
        rows = self._conn.execute(
            "SELECT kind, MAX(period_end) FROM reports WHERE mailbox = ? GROUP BY kind",
            (mailbox,),
        ).fetchall()
        return {ReportKind(kind): float(end) for kind, end in rows}
