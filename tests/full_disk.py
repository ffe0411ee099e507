"""A full disk for the probe ledger, for real: SQLite's own SQLITE_FULL, from a page cap.

SQLite's page cap (`Ledger.cap_pages`, `PRAGMA max_page_count`) belongs to one connection. `fill`
caps the agent's own connection at the file's current size, then records probes shaped like the
agent's (same pair, same kinds of values) through a connection of its own, capped alike, until one
does not fit. Every page is then as full as it gets: the agent's next probe does not fit either,
nor does the result of a probe it sent before. The fillers stay in the ledger as probes still being
sent. `free` lifts the agent's cap: space has come back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from agent.model import LedgerErrorKind, LedgerHealth
from agent.monitoring.recorder import Recorder, Result
from agent.reading.probe_token import new_probe_id
from agent.store.ledger import Ledger, LedgerError
from tests.agent_process import WAIT

__all__ = ["ResultLog", "fill", "free"]

_NO_CAP = 1_073_741_823  # SQLite's default max_page_count before 3.45


def fill(ledger: Ledger, *, route: str, mailbox: str, deadline: float = 60.0) -> int:
    """Fill `ledger`'s file for `ledger`'s connection; returns how many fillers fit."""
    cap = ledger.cap_pages(1)
    fitted = 0
    with Ledger(ledger.path) as filler:
        filler.cap_pages(cap)
        while True:
            now = time.time()
            try:
                filler.record_sending(
                    probe_id=new_probe_id(),
                    route=route,
                    mailbox=mailbox,
                    created_at=now,
                    deadline_at=now + deadline,
                )
            except LedgerError as exc:
                assert exc.kind is LedgerErrorKind.DISK_FULL, exc
                return fitted
            fitted += 1


def free(ledger: Ledger) -> None:
    ledger.cap_pages(_NO_CAP)


class ResultLog(Recorder):
    """A Recorder that keeps every result, so tests await one instead of polling for it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.results: list[Result] = []
        self._changed = asyncio.Event()

    def record(self, result: Result) -> None:
        super().record(result)
        self.results.append(result)
        self._changed.set()

    async def wait_for(self, wanted: Callable[[Result], bool], *, after: int = 0) -> Result:
        """The first result from index `after` on that is `wanted`, once it is recorded."""
        async with asyncio.timeout(WAIT):
            while True:
                for result in self.results[after:]:
                    if wanted(result):
                        return result
                self._changed.clear()
                await self._changed.wait()

    async def ledger_failed(self, *, after: int = 0) -> LedgerHealth:
        """The first ledger failure from index `after` on."""
        found = await self.wait_for(
            lambda r: isinstance(r, LedgerHealth) and r.error is not None, after=after
        )
        assert isinstance(found, LedgerHealth)
        return found
