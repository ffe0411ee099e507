"""Watch one folder of a seed mailbox and hand every new message to a callback, once.

One `FolderWatcher` keeps one long-lived connection per folder: LOGIN, SELECT, hand over what is
already there, then wait in IDLE (or poll) for more, and reconnect with backoff whenever the
connection is lost. The connection itself, and every library detail, is `agent.imap.connection`.

Choices worth knowing:

* IDLE is left every `idle_check_interval` (and at once on a push) for a NOOP and a UID SEARCH.
  A server whose push is slow or absent (Cyrus without idled notifies once a minute; Gmail is
  known to stall IDLE) costs at most one interval of latency; so does one that does not announce,
  when IDLE starts, mail that came since the last command (pymap did; the sandbox's now does):
  searching once more after IDLE's acknowledgement would only move that round trip, not close it.
  A server that stopped answering fails DONE or the NOOP within the command timeout: every
  command is bounded (`agent.imap.connection`), and a timeout ends the session like any other
  failure.
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
* Calibration (`on_calibration` given; `agent.imap.calibration`): at the first IDLE of every
  session and then every `calibrate_every` seconds, a second, short-lived connection APPENDs a
  marker once the watcher's IDLE is acknowledged; the time from the APPEND's OK to the push is the
  server's notification delay, kept only when the pass after that push finds the marker and
  nothing else (another message's push would time the wrong thing: then it is tried again
  10 s later). Messages found by the first search after a push carry the delay
  (`FetchedMessage.arrived_at`). The marker is deleted at once (`Connection.delete_if_alone`),
  and no marker, ours or not, is ever handed to the consumer.
* Every log line masks the mailbox's secrets (`ImapTarget.password` and `ImapTarget.secrets`).
"""

from __future__ import annotations

import asyncio
import enum
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.imap.calibration import (
    CalibrationFailure,
    arrived_at,
    build_marker,
    marker_token,
    notification_delay,
)
from agent.imap.connection import Connection, redactor_for
from agent.imap.errors import ImapError
from agent.imap.log import MaskedLog
from agent.imap.target import ImapTarget
from agent.model import ErrorKind, FoundBy, InboxCategory

__all__ = [
    "Disposition",
    "FetchedMessage",
    "FolderWatcher",
    "OnCalibration",
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
    # The folder's calibrated notification delay, when a push found the message and the folder
    # is calibrated: the message arrived about that long before `seen_at`.
    notification_delay: float | None = None

    @property
    def truncated(self) -> bool:
        return self.size > len(self.raw)

    @property
    def arrived_at(self) -> float:
        """`seen_at` with the server's notification delay taken off (itself when uncalibrated)."""
        return arrived_at(self.seen_at, self.notification_delay)


class Disposition(enum.Enum):
    """What the watcher does with a message once the consumer has seen it."""

    DELETE = "delete"
    KEEP = "keep"
    RETRY = "retry"  # not accounted for yet (the ledger is full): keep it, hand it over again


OnMessage = Callable[[FetchedMessage], Awaitable[Disposition]]
OnState = Callable[[bool, ErrorKind | None], None]
# A calibration's result: the delay in seconds, or None and why the folder is uncalibrated.
OnCalibration = Callable[[float | None, CalibrationFailure | None], None]

_MARKER_FROM = "deliverability-agent@calibration.invalid"  # RFC 2606: never a real address
_RETRY_INCONCLUSIVE = 10.0  # seconds before another marker when other mail shared the push


@dataclass
class _Attempt:
    """One calibration under way: the marker's token and the loop times that measure it."""

    token: str
    idle_at: float | None = None  # the server acknowledged IDLE
    appended_at: float | None = None  # APPEND's tagged OK was read
    failure: CalibrationFailure | None = None
    task: asyncio.Task[None] | None = None


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
        on_calibration: OnCalibration | None = None,  # None: never calibrate
        calibrate_every: float = 3600.0,
    ) -> None:
        for name, value in (
            ("poll_interval", poll_interval),
            ("idle_check_interval", idle_check_interval),
            ("max_message_bytes", max_message_bytes),
            ("backoff_initial", backoff_initial),
            ("backoff_max", backoff_max),
            ("calibrate_every", calibrate_every),
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
        self._on_calibration = on_calibration
        self._calibrate_every = calibrate_every
        self._delay: float | None = None  # the calibrated notification delay in force
        self._calibrate_at = 0.0  # loop time the next calibration is due
        self._own_markers: set[str] = set()  # tokens appended and not deleted yet
        self._attempt: _Attempt | None = None  # evaluated by the pass after its IDLE
        self._uidvalidity: int | None = None
        self._last_uid = 0  # the highest UID handed over under `_uidvalidity`
        self._unfinished_deletes: set[int] = set()  # DELETE answered, expunge not confirmed
        # UID -> (first seen_at, what found it, notification delay), for Disposition.RETRY
        self._retries: dict[int, tuple[float, FoundBy, float | None]] = {}
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
            self._calibrate_at = 0.0  # after every (re)connect
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
        if not idle:
            self._calibrated(None, CalibrationFailure.NO_IDLE)
        while True:
            if idle:
                self._log.debug("%s/%s: waiting in IDLE", self._target.mailbox, self._folder)
                interval = self._idle_check_interval
                if self._retries:
                    interval = min(interval, self._poll_interval)  # a pass soon, to retry them
                attempt = self._start_attempt()
                try:
                    pushed = await conn.idle(
                        interval, on_idle=None if attempt is None else self._append_soon(attempt)
                    )
                    if attempt is not None and attempt.task is not None:
                        await attempt.task  # bounded by the target's timeouts; never raises
                finally:
                    if attempt is not None and attempt.task is not None:
                        attempt.task.cancel()
                self._attempt = attempt
                if attempt is not None:
                    self._end_attempt_early(attempt, pushed)
                if pushed:
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
        for uid, (seen_at, first_found_by, delay) in sorted(self._retries.items()):
            await self._hand_over(conn, uid, first_found_by, seen_at=seen_at, delay=delay)
        pushed_at = conn.pushed_at if found_by is FoundBy.PUSH else None
        attempt, self._attempt = self._attempt, None
        # Only what the push announced waited for it; mail found by a later search of the same
        # pass arrived while the watcher was busy and was not held back by the server.
        delay = self._delay if found_by is FoundBy.PUSH else None
        first = True
        while True:
            conn.new_mail = False
            uids = await conn.search_after(self._last_uid)
            markers: list[str] = []
            for uid in uids:
                token = await self._hand_over(conn, uid, found_by, delay=delay)
                if token is not None:
                    markers.append(token)
            if first and attempt is not None:
                self._evaluate(attempt, pushed_at, others=len(uids) - len(markers), found=markers)
            first, delay = False, None
            if not uids and not conn.new_mail:
                return

    # --- calibration ---

    def _start_attempt(self) -> _Attempt | None:
        if self._on_calibration is None:
            return None
        if asyncio.get_running_loop().time() < self._calibrate_at:
            return None
        return _Attempt(secrets.token_hex(8))

    def _append_soon(self, attempt: _Attempt) -> Callable[[], None]:
        def on_idle() -> None:
            attempt.idle_at = asyncio.get_running_loop().time()
            attempt.task = asyncio.get_running_loop().create_task(self._append_marker(attempt))

        return on_idle

    async def _append_marker(self, attempt: _Attempt) -> None:
        """APPEND the marker over a connection of its own: the watcher's own is in IDLE."""
        loop = asyncio.get_running_loop()
        marker = build_marker(attempt.token, address=_MARKER_FROM)
        self._own_markers.add(attempt.token)  # before sending: a cut APPEND may still land
        conn: Connection | None = None
        try:
            conn = await Connection.open(self._target)
            await conn.login()
            refusal = await conn.append(self._folder, marker)
            attempt.appended_at = loop.time()
            if refusal is not None:
                attempt.failure = CalibrationFailure.APPEND_REFUSED
                self._own_markers.discard(attempt.token)
                self._log.warning(
                    "%s/%s: calibration marker refused (%s): latency stays uncalibrated",
                    self._target.mailbox,
                    self._folder,
                    refusal,
                )
        except ImapError as exc:
            attempt.failure = CalibrationFailure.ERROR
            self._log.warning(
                "%s/%s: calibration connection failed: %s", self._target.mailbox, self._folder, exc
            )
        finally:
            if conn is not None:
                await conn.close(logout=True)

    def _end_attempt_early(self, attempt: _Attempt, pushed: bool) -> None:
        """An attempt that cannot be measured ends here; the pass after it still finds the
        marker (if any) and deletes it."""
        if attempt.failure is None and attempt.appended_at is not None and not pushed:
            attempt.failure = CalibrationFailure.NO_PUSH
        if attempt.failure is not None:
            self._attempt = None
            self._calibrated(None, attempt.failure)

    def _evaluate(
        self, attempt: _Attempt, pushed_at: float | None, *, others: int, found: list[str]
    ) -> None:
        """Keep the measurement when the push announced the marker alone; else try again in
        `_RETRY_INCONCLUSIVE` seconds (the marker, found later, is deleted all the same)."""
        if (
            attempt.appended_at is None
            or attempt.idle_at is None
            or pushed_at is None
            or pushed_at < attempt.idle_at
            or others
            or found != [attempt.token]
        ):
            self._log.debug(
                "%s/%s: calibration inconclusive (other mail in the push): trying again",
                self._target.mailbox,
                self._folder,
            )
            # Not at once: on a busy folder every push may bring other mail too.
            retry_in = min(_RETRY_INCONCLUSIVE, self._calibrate_every)
            self._calibrate_at = asyncio.get_running_loop().time() + retry_in
            return
        self._calibrated(notification_delay(attempt.appended_at, pushed_at), None)

    def _calibrated(self, delay: float | None, failure: CalibrationFailure | None) -> None:
        self._delay = delay
        self._calibrate_at = asyncio.get_running_loop().time() + self._calibrate_every
        if self._on_calibration is None:
            return
        if delay is not None:
            self._log.info(
                "%s/%s: IDLE notification delay %.3f s",
                self._target.mailbox,
                self._folder,
                delay,
            )
        try:
            self._on_calibration(delay, failure)
        except Exception:
            self._log.exception("%s/%s: on_calibration failed", self._target.mailbox, self._folder)

    async def _marker_found(self, conn: Connection, uid: int, token: str) -> None:
        """Delete our own marker; leave anyone else's (another agent's calibration) alone."""
        if token not in self._own_markers:
            self._log.debug(
                "%s/%s: UID %d is a calibration marker not ours: skipped",
                self._target.mailbox,
                self._folder,
                uid,
            )
            return
        self._own_markers.discard(token)
        if not await conn.delete_if_alone(uid):
            self._log.info(
                "%s/%s: calibration marker UID %d left flagged \\Deleted: the server has no "
                "UIDPLUS and other messages are flagged \\Deleted (a plain EXPUNGE would take "
                "them too)",
                self._target.mailbox,
                self._folder,
                uid,
            )

    async def _hand_over(
        self,
        conn: Connection,
        uid: int,
        found_by: FoundBy,
        *,
        seen_at: float | None = None,
        delay: float | None = None,
    ) -> str | None:
        """Hand one message over; a calibration marker is not: its token is returned instead."""
        fetched = await conn.fetch(uid, self._max_bytes)
        token = None if fetched is None else marker_token(fetched[0])
        if token is not None:
            self._last_uid = max(self._last_uid, uid)
            self._retries.pop(uid, None)
            await self._marker_found(conn, uid, token)
            self._end_if_stopping()
            return token
        seen_at = time.time() if seen_at is None else seen_at
        # Asked before the UID counts as handed over: a cancellation here loses nothing.
        category, broken = (None, None) if fetched is None else await self._category(conn, uid)
        self._last_uid = max(self._last_uid, uid)
        self._retries.pop(uid, None)  # fetched (or gone): handed over now, or not at all
        if fetched is None:
            self._log.debug(
                "%s/%s: UID %d vanished before FETCH", self._target.mailbox, self._folder, uid
            )
            return None
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
            notification_delay=delay,
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
            self._retries[uid] = (seen_at, found_by, delay)
        elif disposition is Disposition.DELETE:
            self._unfinished_deletes.add(uid)
            if broken is None:  # else the next session deletes it (_finish_deletes)
                await conn.delete(uid)
                self._unfinished_deletes.discard(uid)
        self._handing_over = False
        if broken is not None:
            raise broken
        self._end_if_stopping()
        return None

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
