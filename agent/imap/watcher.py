"""Watch one folder of a seed mailbox and hand every new message to a callback, once.

One `FolderWatcher` keeps one long-lived connection per folder: LOGIN, SELECT, hand over what is
already there, then wait in IDLE (or poll) for more, and reconnect with backoff whenever the
connection is lost. The connection itself, and every library detail, is `agent.imap.connection`.

Choices worth knowing:

* IDLE is left every `idle_check_interval` (and at once on a push) for a NOOP and a UID SEARCH.
  A server whose push is slow or absent (Cyrus without idled notifies once a minute; Gmail is
  known to stall IDLE) costs at most one interval of latency, and a server that stopped answering
  fails DONE or the NOOP within the command timeout: every command is bounded
  (`agent.imap.connection`), and a timeout ends the session like any other failure.
* Each message says what found it (`FetchedMessage.found_by`): the pass after SELECT, a push, the
  periodic check or a poll; the agent counts probes by it.
* A pass searches again until nothing new was announced (`Connection.new_mail`): mail arriving
  mid-pass is not left waiting for the next check. The check and polling send NOOP first, as
  Dovecot searches the mailbox view from before the command.
* `stop()` lets a hand-over under way finish (the consumer's verdict, then the STORE \\Deleted and
  EXPUNGE it asked for) before `run()` ends: a stop between STORE and EXPUNGE would leave the
  message flagged but in the folder. Cancelling `run()` ends it at once: the caller's bound.
* Handed-over UIDs are remembered per watcher with UIDVALIDITY, not on disk: after an agent restart
  the folder is handed over again, so the consumer must be idempotent.
* A watcher of an inbox (`inbox_categories`) on a server with X-GM-EXT-1 asks each message's
  Gmail tab before handing it over (`FetchedMessage.category`; one to five searches). A refused
  search costs the message its category only (counted as an error, the session goes on); a search
  left unanswered, or a lost connection, ends the session as any command would, but only after
  the message was handed over without a category (a delete it asked for waits for the next one).
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
from agent.model import ErrorKind, FoundBy, InboxCategory

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
    found_by: FoundBy  # what started the pass that handed it over
    category: InboxCategory | None = None  # the Gmail tab, when the watcher asked for it

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

    `run()` keeps one connection open until cancelled or stopped (IDLE where the server has it,
    left for a NOOP and UID SEARCH after a push or `idle_check_interval` seconds without one; else
    a NOOP and UID SEARCH every `poll_interval`), and reconnects forever with exponential backoff;
    the backoff restarts after a session that stayed selected for `healthy_after` seconds.
    `on_state(True, None)` is called once each session is logged in and selected,
    `on_state(False, kind)` on every failure, a command left unanswered past the target's
    `command_timeout` included, and `on_state(True, kind)` when a command was refused but the
    session goes on (an inbox category search). When `on_message` returns `Disposition.DELETE`
    the message is flagged \\Deleted and expunged; when it raises, the error is logged, the
    message is kept and the watcher goes on.
    `Disposition.RETRY` keeps the message and hands it over again (with the time it was first seen)
    at the start of every later pass, until the consumer returns something else; meanwhile IDLE is
    left every `poll_interval` at the latest, so a pass comes even when no new mail does.
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
        idle_check_interval: float = 60.0,  # see agent.config's Mailbox for the default's why
        max_message_bytes: int = 1_048_576,
        backoff_initial: float = 1.0,
        backoff_max: float = 300.0,
        healthy_after: float = 60.0,
        inbox_categories: bool = False,  # the folder is the inbox: ask Gmail's tab (X-GM-EXT-1)
    ) -> None:
        for name, value in (
            ("poll_interval", poll_interval),
            ("idle_check_interval", idle_check_interval),
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
        self._idle_check_interval = idle_check_interval
        self._max_bytes = max_message_bytes
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._healthy_after = healthy_after
        self._inbox_categories = inbox_categories
        self._uidvalidity: int | None = None
        self._last_uid = 0  # the highest UID handed over under `_uidvalidity`
        self._unfinished_deletes: set[int] = set()  # DELETE answered, expunge not confirmed
        # UID -> (first seen_at, what found it), for Disposition.RETRY
        self._retries: dict[int, tuple[float, FoundBy]] = {}
        self._selected_at: float | None = None
        self._task: asyncio.Task[None] | None = None  # the task in run(), for stop()
        self._stopping = False
        self._handing_over = False  # a hand-over and its clean-up are under way: stop() waits
        self._log = MaskedLog(redactor_for(target))

    @property
    def target(self) -> ImapTarget:
        return self._target

    @property
    def folder(self) -> str:
        return self._folder

    @property
    def handing_over(self) -> bool:
        """A message is with the consumer, or being deleted as it asked: `stop()` waits."""
        return self._handing_over

    def __repr__(self) -> str:
        return f"FolderWatcher({self._target.mailbox!r}, {self._folder!r})"

    def stop(self) -> None:
        """End `run()` as if it were cancelled, but only after the hand-over under way, if any:
        the consumer's verdict on a message and the STORE \\Deleted and EXPUNGE it asked for.

        Those commands are bounded by the target's `command_timeout`; a caller that cannot wait
        that long cancels `run()` after its own bound, which abandons the clean-up (the message
        stays flagged \\Deleted and is handed over again by the next session).
        """
        self._stopping = True
        if self._task is not None and not self._handing_over:
            self._task.cancel()

    async def run(self) -> None:
        """Watch until cancelled or stopped (it then ends cancelled); never returns otherwise."""
        self._task = asyncio.current_task()
        try:
            await self._run()
        finally:
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            self._end_if_stopping()
            self._selected_at = None
            try:
                await self._session(forever=True)
            except ImapError as exc:
                self._report_down(exc)
            except Exception:  # a bug or an unforeseen reply must not end the watcher
                self._log.exception("%s/%s: unexpected error", self._target.mailbox, self._folder)
                self._report_down(ImapError(ErrorKind.PROTOCOL, "unexpected error"))
            self._end_if_stopping()
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
            await self._drain(conn, FoundBy.SELECT)
            if forever:
                await self._watch(conn)
            clean = True
        except asyncio.CancelledError:
            # Shutting down: say LOGOUT (bounded) on the way out, unless a hand-over was cut
            # short: a server that left STORE or EXPUNGE unanswered will not answer LOGOUT.
            clean = not self._handing_over
            raise
        finally:
            self._handing_over = False
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
                interval = self._idle_check_interval
                if self._retries:
                    interval = min(interval, self._poll_interval)  # a pass soon, to retry them
                if await conn.idle(interval):
                    found_by = FoundBy.PUSH
                else:
                    # No push within the interval: look for ourselves. A server that stopped
                    # answering fails here (or at DONE) within the command timeout.
                    self._log.debug(
                        "%s/%s: no push in %g s: checking the folder",
                        self._target.mailbox,
                        self._folder,
                        interval,
                    )
                    await conn.noop()  # Dovecot searches the view from before the command
                    found_by = FoundBy.CHECK
            else:
                await conn.sleep(self._poll_interval)
                await conn.noop()  # Dovecot searches the view from before the command
                found_by = FoundBy.POLL
            await self._drain(conn, found_by)

    async def _drain(self, conn: Connection, found_by: FoundBy) -> None:
        """Hand over the messages to retry once, then every message above the last UID, until a
        search announces nothing new."""
        for uid, (seen_at, first_found_by) in sorted(self._retries.items()):
            await self._hand_over(conn, uid, first_found_by, seen_at=seen_at)
        while True:
            conn.new_mail = False
            uids = await conn.search_after(self._last_uid)
            for uid in uids:
                await self._hand_over(conn, uid, found_by)
            if not uids and not conn.new_mail:
                return

    async def _hand_over(
        self, conn: Connection, uid: int, found_by: FoundBy, *, seen_at: float | None = None
    ) -> None:
        fetched = await conn.fetch(uid, self._max_bytes)
        seen_at = time.time() if seen_at is None else seen_at
        # Asked before the UID counts as handed over: a cancellation here loses nothing.
        category, broken = (None, None) if fetched is None else await self._category(conn, uid)
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
            found_by=found_by,
            category=category,
        )
        self._log.debug(
            "%s/%s: UID %d handed over (%d of %d bytes)",
            self._target.mailbox,
            self._folder,
            uid,
            len(raw),
            size,
        )
        self._handing_over = True  # from here to the EXPUNGE's answer, stop() waits
        try:
            disposition = await self._on_message(message)
        except Exception:
            self._log.exception(
                "%s/%s: on_message failed for UID %d; the message is kept",
                self._target.mailbox,
                self._folder,
                uid,
            )
            disposition = Disposition.KEEP
        if disposition is Disposition.RETRY:
            self._retries[uid] = (seen_at, found_by)
        elif disposition is Disposition.DELETE:
            self._unfinished_deletes.add(uid)
            if broken is None:  # else the next session deletes it (_finish_deletes)
                await conn.delete(uid)
                self._unfinished_deletes.discard(uid)
        self._handing_over = False
        if broken is not None:
            raise broken
        self._end_if_stopping()

    async def _category(
        self, conn: Connection, uid: int
    ) -> tuple[InboxCategory | None, ImapError | None]:
        """The Gmail tab of `uid` when this watcher asks for it, and the error that must end the
        session once the message is handed over (a timeout or a lost connection), if any."""
        if not self._inbox_categories or not conn.gmail_extensions:
            return None, None
        try:
            return await conn.inbox_category(uid), None
        except ImapError as exc:
            if exc.kind is ErrorKind.TIMEOUT or conn.failed:
                return None, exc
            # Refused or unreadable: the connection itself is fine, only the category is lost.
            self._log.warning(
                "%s/%s: no inbox category for UID %d: %s",
                self._target.mailbox,
                self._folder,
                uid,
                exc,
            )
            self._notify(True, exc.kind)
            return None, None

    async def _finish_deletes(self, conn: Connection) -> None:
        for uid in sorted(self._unfinished_deletes):
            self._handing_over = True
            await conn.delete(uid)
            self._unfinished_deletes.discard(uid)
            self._handing_over = False
            self._end_if_stopping()

    def _end_if_stopping(self) -> None:
        if self._stopping:
            # What stop() asked for, now that no hand-over is under way: end as if cancelled.
            raise asyncio.CancelledError

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
