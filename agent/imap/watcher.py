"""Watch one folder of a seed mailbox and hand every new message to a callback, once.

One `FolderWatcher` keeps one long-lived connection per folder: LOGIN, SELECT, hand over what is
already there, then wait in IDLE (or poll) for more, and reconnect with backoff whenever the
connection is lost. The connection itself, and every library detail, is `agent.imap.connection`.

Choices worth knowing:

* A pass searches again until nothing new was announced (`Connection.new_mail`): mail arriving
  mid-pass is not left waiting for the next IDLE renewal. Polling sends NOOP first, as Dovecot
  searches the mailbox view from before the command.
* Handed-over UIDs are remembered per watcher with UIDVALIDITY, not on disk: after an agent restart
  the folder is handed over again, so the consumer must be idempotent.
* Every log line masks the mailbox's secrets (`ImapTarget.password` and `ImapTarget.secrets`).
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.imap.connection import Connection, redactor_for
from agent.imap.errors import ImapError
from agent.imap.log import MaskedLog
from agent.imap.target import ImapTarget
from agent.model import ErrorKind

__all__ = [
    "Disposition",
    "FetchedMessage",
    "FolderWatcher",
    "OnMessage",
    "OnState",
    "backoff_delay",
]


@dataclass(frozen=True)
class FetchedMessage:
    """One message as a watcher got it; `raw` is cut at the watcher's `max_message_bytes`."""

    mailbox: str
    folder: str
    uid: int
    raw: bytes = field(repr=False)
    seen_at: float  # time.time() when the watcher got the message
    size: int  # the full size the server reports (RFC822.SIZE)

    @property
    def truncated(self) -> bool:
        return self.size > len(self.raw)


class Disposition(enum.Enum):
    """What the watcher does with a message once the consumer has seen it."""

    DELETE = "delete"
    KEEP = "keep"
    RETRY = "retry"  # not accounted for yet (the ledger is full): keep it, hand it over again


OnMessage = Callable[[FetchedMessage], Awaitable[Disposition]]
OnState = Callable[[bool, ErrorKind | None], None]


def backoff_delay(
    attempt: int,
    *,
    initial: float,
    maximum: float,
    rng: Callable[[], float] = random.random,
) -> float:
    """Delay before reconnect `attempt` (0-based): a random point in [d/2, d], d = initial * 2^n
    capped at `maximum`, so watchers of one server do not reconnect in step."""
    ceiling = min(maximum, initial * 2.0 ** min(attempt, 60))
    return ceiling * (0.5 + 0.5 * rng())


class FolderWatcher:
    """Hands every message that appears in one folder to `on_message`, once.

    `run()` keeps one connection open until cancelled (IDLE where the server has it, else a NOOP
    and UID SEARCH every `poll_interval`), and reconnects forever with exponential backoff; the
    backoff restarts after a session that stayed selected for `healthy_after` seconds.
    `on_state(True, None)` is called once each session is logged in and selected,
    `on_state(False, kind)` on every failure. When `on_message` returns `Disposition.DELETE` the
    message is flagged \\Deleted and expunged; when it raises, the error is logged, the message is
    kept and the watcher goes on. `Disposition.RETRY` keeps the message and hands it over again
    (with the time it was first seen) at the start of every later pass, until the consumer
    returns something else; meanwhile IDLE is renewed every `poll_interval`, so a pass comes
    even when no new mail does.
    """

    def __init__(
        self,
        target: ImapTarget,
        folder: str,
        *,
        on_message: OnMessage,
        on_state: OnState,
        use_idle: bool = True,
        poll_interval: float = 15.0,
        idle_renew: float = 25 * 60,  # servers may end an IDLE after 30 min (RFC 2177)
        max_message_bytes: int = 1_048_576,
        backoff_initial: float = 1.0,
        backoff_max: float = 300.0,
        healthy_after: float = 60.0,
    ) -> None:
        for name, value in (
            ("poll_interval", poll_interval),
            ("idle_renew", idle_renew),
            ("max_message_bytes", max_message_bytes),
            ("backoff_initial", backoff_initial),
            ("backoff_max", backoff_max),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self._target = target
        self._folder = folder
        self._on_message = on_message
        self._on_state = on_state
        self._use_idle = use_idle
        self._poll_interval = poll_interval
        self._idle_renew = idle_renew
        self._max_bytes = max_message_bytes
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._healthy_after = healthy_after
        self._uidvalidity: int | None = None
        self._last_uid = 0  # the highest UID handed over under `_uidvalidity`
        self._unfinished_deletes: set[int] = set()  # DELETE answered, expunge not confirmed
        self._retries: dict[int, float] = {}  # UID -> first seen_at, for Disposition.RETRY
        self._selected_at: float | None = None
        self._log = MaskedLog(redactor_for(target))

    @property
    def target(self) -> ImapTarget:
        return self._target

    @property
    def folder(self) -> str:
        return self._folder

    def __repr__(self) -> str:
        return f"FolderWatcher({self._target.mailbox!r}, {self._folder!r})"

    async def run(self) -> None:
        """Watch until cancelled; never returns otherwise."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            self._selected_at = None
            try:
                await self._session(forever=True)
            except ImapError as exc:
                self._report_down(exc)
            except Exception:  # a bug or an unforeseen reply must not end the watcher
                self._log.exception("%s/%s: unexpected error", self._target.mailbox, self._folder)
                self._report_down(ImapError(ErrorKind.PROTOCOL, "unexpected error"))
            selected_at = self._selected_at
            if selected_at is not None and loop.time() - selected_at >= self._healthy_after:
                attempt = 0
            delay = backoff_delay(attempt, initial=self._backoff_initial, maximum=self._backoff_max)
            attempt += 1
            self._log.info(
                "%s/%s: reconnecting in %.2f s", self._target.mailbox, self._folder, delay
            )
            await asyncio.sleep(delay)

    async def check_once(self) -> None:
        """Connect, select, hand over what is new, log out; raises `ImapError` on failure."""
        try:
            await self._session(forever=False)
        except ImapError as exc:
            self._report_down(exc)
            raise

    async def _session(self, *, forever: bool) -> None:
        conn = await Connection.open(self._target)
        clean = False
        try:
            await conn.login()
            self._adopt(await conn.select(self._folder))
            self._selected_at = asyncio.get_running_loop().time()
            self._log.info(
                "%s/%s: selected (UIDVALIDITY %d, handed over up to UID %d)",
                self._target.mailbox,
                self._folder,
                self._uidvalidity,
                self._last_uid,
            )
            self._report_up()
            await self._finish_deletes(conn)
            await self._drain(conn)
            if forever:
                await self._watch(conn)
            clean = True
        except asyncio.CancelledError:
            clean = True  # shutting down: say LOGOUT (bounded) on the way out
            raise
        finally:
            await conn.close(logout=clean)

    def _adopt(self, uidvalidity: int) -> None:
        if uidvalidity == self._uidvalidity:
            return
        if self._uidvalidity is not None:
            self._log.warning(
                "%s/%s: UIDVALIDITY changed (%d -> %d): handing over the whole folder again",
                self._target.mailbox,
                self._folder,
                self._uidvalidity,
                uidvalidity,
            )
        self._uidvalidity = uidvalidity
        self._last_uid = 0
        self._unfinished_deletes.clear()
        self._retries.clear()  # the whole folder is handed over again anyway

    async def _watch(self, conn: Connection) -> None:
        idle = self._use_idle and conn.has_capability("IDLE")
        if self._use_idle and not idle:
            self._log.info(
                "%s/%s: server has no IDLE, polling every %g s",
                self._target.mailbox,
                self._folder,
                self._poll_interval,
            )
        while True:
            if idle:
                self._log.debug("%s/%s: waiting in IDLE", self._target.mailbox, self._folder)
                renew = self._idle_renew
                if self._retries:
                    renew = min(renew, self._poll_interval)  # a pass soon, to retry them
                await conn.idle(renew)
            else:
                await conn.sleep(self._poll_interval)
                await conn.noop()  # Dovecot searches the view from before the command
            await self._drain(conn)

    async def _drain(self, conn: Connection) -> None:
        """Hand over the messages to retry once, then every message above the last UID, until a
        search announces nothing new."""
        for uid, seen_at in sorted(self._retries.items()):
            await self._hand_over(conn, uid, seen_at=seen_at)
        while True:
            conn.new_mail = False
            uids = await conn.search_after(self._last_uid)
            for uid in uids:
                await self._hand_over(conn, uid)
            if not uids and not conn.new_mail:
                return

    async def _hand_over(self, conn: Connection, uid: int, *, seen_at: float | None = None) -> None:
        fetched = await conn.fetch(uid, self._max_bytes)
        seen_at = time.time() if seen_at is None else seen_at
        self._last_uid = max(self._last_uid, uid)
        self._retries.pop(uid, None)  # fetched (or gone): handed over now, or not at all
        if fetched is None:
            self._log.debug(
                "%s/%s: UID %d vanished before FETCH", self._target.mailbox, self._folder, uid
            )
            return
        raw, size = fetched
        message = FetchedMessage(
            mailbox=self._target.mailbox,
            folder=self._folder,
            uid=uid,
            raw=raw,
            seen_at=seen_at,
            size=size,
        )
        self._log.debug(
            "%s/%s: UID %d handed over (%d of %d bytes)",
            self._target.mailbox,
            self._folder,
            uid,
            len(raw),
            size,
        )
        try:
            disposition = await self._on_message(message)
        except Exception:
            self._log.exception(
                "%s/%s: on_message failed for UID %d; the message is kept",
                self._target.mailbox,
                self._folder,
                uid,
            )
            return
        if disposition is Disposition.RETRY:
            self._retries[uid] = seen_at
        elif disposition is Disposition.DELETE:
            self._unfinished_deletes.add(uid)
            await conn.delete(uid)
            self._unfinished_deletes.discard(uid)

    async def _finish_deletes(self, conn: Connection) -> None:
        for uid in sorted(self._unfinished_deletes):
            await conn.delete(uid)
            self._unfinished_deletes.discard(uid)

    def _report_up(self) -> None:
        self._notify(True, None)

    def _report_down(self, exc: ImapError) -> None:
        self._log.warning("%s/%s: %s", self._target.mailbox, self._folder, exc)
        self._notify(False, exc.kind)

    def _notify(self, up: bool, kind: ErrorKind | None) -> None:
        try:
            self._on_state(up, kind)
        except Exception:
            self._log.exception("%s/%s: on_state failed", self._target.mailbox, self._folder)
