"""IMAP adapter: watch one folder of a seed mailbox and hand every new message to a callback.

The only module that imports aioimaplib. One `FolderWatcher` keeps one long-lived connection per
folder: LOGIN, SELECT, hand over what is already there, then wait in IDLE (or poll) for more, and
reconnect with backoff whenever the connection is lost. `detect_folders` finds the inbox and the
junk folder. Library exceptions and NO/BAD replies become `ImapError` with an `ErrorKind`.

Choices worth knowing:

* aioimaplib 2.x never fails a pending command when the connection drops (idle_start hangs too,
  aioimaplib#110), and an unusable greeting leaves `wait_hello_from_server` hanging. A protocol
  subclass turns both into a `failure` future that every call is raced against, and every call is
  bounded by `asyncio.timeout`, so a dead connection is noticed at once. IDLE is started by hand:
  `idle_start`'s inner task can send IDLE after a cancellation and block the LOGOUT after it.
* Dovecot runs a command on the mailbox view from before the command and announces new mail
  (`* n EXISTS`) at its end, which aioimaplib drops unless a NOOP is pending. The protocol notes
  every EXISTS/RECENT it sees, and a pass searches again until nothing new was announced: mail
  arriving mid-pass is not left waiting for the next IDLE renewal. Polling sends NOOP first.
* Each message is fetched alone with `BODY.PEEK[]<0.N>` (never sets \\Seen, bounded memory) and
  RFC822.SIZE, so a consumer knows when `raw` was truncated.
* Handed-over UIDs are remembered per watcher with UIDVALIDITY, not on disk: after an agent restart
  the folder is handed over again, so the consumer must be idempotent.
* A plain client on an implicit-TLS port gets no greeting (the server waits for a ClientHello).
  With `tls: none` and no byte received after a short while, a second connection sends a TLS
  ClientHello; a TLS record in answer fails fast with kind `tls` (same check as the SMTP sender).
* No STARTTLS: aioimaplib has none, so only `implicit` and `none` are accepted.
* aioimaplib parses recursively, one frame per line (aioimaplib#118): a LIST of ~900+ folders in
  one read fails as `protocol`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import logging
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import aioimaplib

from agent.errors import AgentError, ErrorCategory
from agent.model import ErrorKind, TlsMode
from agent.tls_sniff import answers_tls

__all__ = [
    "JUNK_FOLDER_NAMES",
    "Disposition",
    "FetchedMessage",
    "FolderNotFound",
    "FolderSet",
    "FolderWatcher",
    "ImapError",
    "ImapTarget",
    "ListedFolder",
    "OnMessage",
    "OnState",
    "backoff_delay",
    "choose_folders",
    "decode_modified_utf7",
    "detect_folders",
    "encode_modified_utf7",
    "parse_list_response",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Well-known junk folder names, in order of preference, for servers without SPECIAL-USE.
JUNK_FOLDER_NAMES: Final = (
    "Junk",
    "Spam",
    "[Gmail]/Spam",
    "[Google Mail]/Spam",
    "Junk Email",
    "Junk E-mail",
    "Junk Mail",
    "Bulk Mail",
    "Bulk",
    "INBOX.Junk",
    "INBOX.Spam",
    "INBOX/Junk",
    "INBOX/Spam",
    "INBOX.Junk E-mail",
    "INBOX.Junk Email",
)

_SUPPORTED_TLS: Final = (TlsMode.IMPLICIT, TlsMode.NONE)
_LOGOUT_TIMEOUT: Final = 2.0  # a polite goodbye, never a reason to hang on shutdown
_TLS_SNIFF_AFTER: Final = 2.0  # seconds without a byte on a plain connection before the TLS check
_TLS_SNIFF_TIMEOUT: Final = 3.0
_TEXT_MAX: Final = 200  # server text quoted in errors is cut here

_NEW_MAIL_RE: Final = re.compile(rb"^\*\s+\d+\s+(?:EXISTS|RECENT)\b", re.IGNORECASE)
_UIDVALIDITY_RE: Final = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.IGNORECASE)
_FETCH_RE: Final = re.compile(rb"^\d+ FETCH \(", re.IGNORECASE)
_FETCH_BODY_RE: Final = re.compile(rb"BODY\[\](?:<\d+>)? \{(\d+)\}$", re.IGNORECASE)
_FETCH_UID_RE: Final = re.compile(rb"\bUID (\d+)", re.IGNORECASE)
_FETCH_SIZE_RE: Final = re.compile(rb"\bRFC822\.SIZE (\d+)", re.IGNORECASE)
_LIST_RE: Final = re.compile(
    rb'^\((?P<flags>[^)]*)\) (?P<delim>NIL|"(?:[^"\\]|\\.)*") (?P<name>.+)$',
    re.IGNORECASE | re.DOTALL,
)
_LITERAL_RE: Final = re.compile(rb"^\{(\d+)\+?\}$")


class _HideLoginCommand(logging.Filter):
    """Drops aioimaplib's DEBUG line for the LOGIN it sends.

    aioimaplib masks the password in that line, but IMAP quoting changes a password that holds a
    quote or a backslash, and the mask then misses it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return " LOGIN " not in record.getMessage()


logging.getLogger("aioimaplib.aioimaplib").addFilter(_HideLoginCommand())


# --- public types ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ImapTarget:
    """Where and how to reach one seed mailbox; `mailbox` is its configured name (for logs)."""

    mailbox: str
    host: str
    port: int
    tls: TlsMode
    username: str
    password: str = field(repr=False)
    tls_verify: bool = True
    ca_file: Path | None = None
    connect_timeout: float = 15.0  # TCP connect, TLS handshake, greeting and CAPABILITY
    command_timeout: float = 30.0  # each command after that
    secrets: tuple[str, ...] = field(default=(), repr=False)  # more values to mask in reports

    def __post_init__(self) -> None:
        if self.tls not in _SUPPORTED_TLS:
            raise ValueError(
                f"IMAP supports tls 'implicit' or 'none' (no STARTTLS), got {self.tls.value!r}"
            )
        if self.connect_timeout <= 0 or self.command_timeout <= 0:
            raise ValueError("IMAP timeouts must be positive")


class ImapError(AgentError):
    """An IMAP connection or command failed; `message` never contains the password."""

    category = ErrorCategory.PEER

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"


class FolderNotFound(ImapError):
    """A configured folder is not in the server's LIST."""


@dataclass(frozen=True)
class ListedFolder:
    """One LIST entry: the decoded name, lower-cased attributes, and the hierarchy delimiter."""

    name: str
    flags: frozenset[str]
    delimiter: str | None

    @property
    def selectable(self) -> bool:
        return not self.flags & {"\\noselect", "\\nonexistent"}


@dataclass(frozen=True)
class FolderSet:
    """The folders of one mailbox: the inbox, the junk folder if any, every selectable name."""

    inbox: str
    junk: str | None
    names: tuple[str, ...]


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


OnMessage = Callable[[FetchedMessage], Awaitable[Disposition]]
OnState = Callable[[bool, ErrorKind | None], None]


# --- folder names ---------------------------------------------------------------------------------


def decode_modified_utf7(name: str) -> str:
    """A mailbox name as sent on the wire (RFC 3501 modified UTF-7) to text; bad runs kept as is."""
    out: list[str] = []
    i = 0
    while i < len(name):
        start = name.find("&", i)
        if start < 0:
            out.append(name[i:])
            break
        out.append(name[i:start])
        end = name.find("-", start + 1)
        if end < 0:
            out.append(name[start:])
            break
        chunk = name[start + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            try:
                padded = b64 + "=" * (-len(b64) % 4)
                out.append(base64.b64decode(padded, validate=True).decode("utf-16-be"))
            except (binascii.Error, UnicodeDecodeError):
                out.append(name[start : end + 1])
        i = end + 1
    return "".join(out)


def encode_modified_utf7(name: str) -> str:
    """Text to a mailbox name for the wire (RFC 3501 modified UTF-7)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def parse_list_response(lines: Sequence[bytes | bytearray]) -> list[ListedFolder]:
    """LIST entries from aioimaplib's untagged lines (without `* LIST`); a literal name follows its
    `{n}` line as a separate item. Lines that do not parse are skipped with a warning."""
    folders: list[ListedFolder] = []
    i = 0
    while i < len(lines):
        line = bytes(lines[i])
        i += 1
        match = _LIST_RE.match(line)
        if match is None:
            log.warning("ignoring a LIST line that does not parse: %s", _printable(line))
            continue
        raw_name = match["name"]
        literal = _LITERAL_RE.match(raw_name)
        if literal is not None:
            if i >= len(lines) or not isinstance(lines[i], bytearray):
                log.warning("ignoring a LIST line without its literal: %s", _printable(line))
                continue
            name_bytes = bytes(lines[i])
            i += 1
        elif raw_name.startswith(b'"'):
            name_bytes = _unquote(raw_name)
        else:
            name_bytes = raw_name.split(b" ", 1)[0]
        delim = match["delim"]
        folders.append(
            ListedFolder(
                name=decode_modified_utf7(name_bytes.decode("utf-8", "replace")),
                flags=frozenset(
                    flag.decode("ascii", "replace").lower() for flag in match["flags"].split()
                ),
                delimiter=None
                if delim.upper() == b"NIL"
                else _unquote(delim).decode("utf-8", "replace"),
            )
        )
    return folders


def _unquote(quoted: bytes) -> bytes:
    """The content of a quoted string that starts `quoted` (anything after it is ignored)."""
    out = bytearray()
    i = 1
    while i < len(quoted):
        char = quoted[i]
        if char == 0x5C and i + 1 < len(quoted):  # backslash escapes the next byte
            out.append(quoted[i + 1])
            i += 2
            continue
        if char == 0x22:
            break
        out.append(char)
        i += 1
    return bytes(out)


def choose_folders(
    folders: Iterable[ListedFolder], *, junk_override: str | None = None
) -> FolderSet:
    """The inbox and junk folder among LIST entries.

    Junk is the override when given (exact name, else case-insensitive), else the first selectable
    folder with the SPECIAL-USE attribute \\Junk, else the first of `JUNK_FOLDER_NAMES` present
    (case-insensitive), else None. Raises `FolderNotFound` when the override is not listed.
    """
    selectable = [folder for folder in folders if folder.selectable]
    names = tuple(folder.name for folder in selectable)
    inbox = _find_name(names, "INBOX") or "INBOX"
    if junk_override is not None:
        junk = _find_name(names, junk_override)
        if junk is None:
            listed = ", ".join(repr(name) for name in names) or "nothing"
            raise FolderNotFound(
                ErrorKind.PROTOCOL,
                f"junk folder {junk_override!r} not found; the server lists {listed}",
            )
        return FolderSet(inbox=inbox, junk=junk, names=names)
    junk = next((folder.name for folder in selectable if "\\junk" in folder.flags), None)
    if junk is None:
        junk = next(filter(None, (_find_name(names, known) for known in JUNK_FOLDER_NAMES)), None)
    return FolderSet(inbox=inbox, junk=junk, names=names)


def _find_name(names: Sequence[str], wanted: str) -> str | None:
    if wanted in names:
        return wanted
    folded = wanted.casefold()
    return next((name for name in names if name.casefold() == folded), None)


async def detect_folders(target: ImapTarget, *, junk_override: str | None = None) -> FolderSet:
    """LOGIN and LIST once, and pick the inbox and junk folder (see `choose_folders`)."""
    conn = await _Connection.open(target)
    clean = False
    try:
        await conn.login()
        listing = await conn.list_folders()
        clean = True
    finally:
        await conn.close(logout=clean)
    return choose_folders(listing, junk_override=junk_override)


# --- the watcher ----------------------------------------------------------------------------------


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
    kept and the watcher goes on.
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
        self._selected_at: float | None = None

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
                log.exception("%s/%s: unexpected error", self._target.mailbox, self._folder)
                self._report_down(ImapError(ErrorKind.PROTOCOL, "unexpected error"))
            selected_at = self._selected_at
            if selected_at is not None and loop.time() - selected_at >= self._healthy_after:
                attempt = 0
            delay = backoff_delay(attempt, initial=self._backoff_initial, maximum=self._backoff_max)
            attempt += 1
            log.info("%s/%s: reconnecting in %.2f s", self._target.mailbox, self._folder, delay)
            await asyncio.sleep(delay)

    async def check_once(self) -> None:
        """Connect, select, hand over what is new, log out; raises `ImapError` on failure."""
        try:
            await self._session(forever=False)
        except ImapError as exc:
            self._report_down(exc)
            raise

    async def _session(self, *, forever: bool) -> None:
        conn = await _Connection.open(self._target)
        clean = False
        try:
            await conn.login()
            self._adopt(await conn.select(self._folder))
            self._selected_at = asyncio.get_running_loop().time()
            log.info(
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
            log.warning(
                "%s/%s: UIDVALIDITY changed (%d -> %d): handing over the whole folder again",
                self._target.mailbox,
                self._folder,
                self._uidvalidity,
                uidvalidity,
            )
        self._uidvalidity = uidvalidity
        self._last_uid = 0
        self._unfinished_deletes.clear()

    async def _watch(self, conn: _Connection) -> None:
        idle = self._use_idle and conn.has_capability("IDLE")
        if self._use_idle and not idle:
            log.info(
                "%s/%s: server has no IDLE, polling every %g s",
                self._target.mailbox,
                self._folder,
                self._poll_interval,
            )
        while True:
            if idle:
                log.debug("%s/%s: waiting in IDLE", self._target.mailbox, self._folder)
                await conn.idle(self._idle_renew)
            else:
                await conn.sleep(self._poll_interval)
                await conn.noop()  # Dovecot searches the view from before the command
            await self._drain(conn)

    async def _drain(self, conn: _Connection) -> None:
        """Hand over every message above the last UID, until a search announces nothing new."""
        while True:
            conn.new_mail = False
            uids = await conn.search_after(self._last_uid)
            for uid in uids:
                await self._hand_over(conn, uid)
            if not uids and not conn.new_mail:
                return

    async def _hand_over(self, conn: _Connection, uid: int) -> None:
        fetched = await conn.fetch(uid, self._max_bytes)
        seen_at = time.time()
        self._last_uid = max(self._last_uid, uid)
        if fetched is None:
            log.debug(
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
        log.debug(
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
            log.exception(
                "%s/%s: on_message failed for UID %d; the message is kept",
                self._target.mailbox,
                self._folder,
                uid,
            )
            return
        if disposition is Disposition.DELETE:
            self._unfinished_deletes.add(uid)
            await conn.delete(uid)
            self._unfinished_deletes.discard(uid)

    async def _finish_deletes(self, conn: _Connection) -> None:
        for uid in sorted(self._unfinished_deletes):
            await conn.delete(uid)
            self._unfinished_deletes.discard(uid)

    def _report_up(self) -> None:
        self._notify(True, None)

    def _report_down(self, exc: ImapError) -> None:
        log.warning("%s/%s: %s", self._target.mailbox, self._folder, exc)
        self._notify(False, exc.kind)

    def _notify(self, up: bool, kind: ErrorKind | None) -> None:
        try:
            self._on_state(up, kind)
        except Exception:
            log.exception("%s/%s: on_state failed", self._target.mailbox, self._folder)


# --- the aioimaplib edge --------------------------------------------------------------------------


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]  # aioimaplib is untyped
    """aioimaplib's protocol, plus a `failure` future and a note of new-mail announcements."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.failure: asyncio.Future[ImapError] = loop.create_future()
        self.received_any = False
        self.new_mail = False

    def _set_failure(self, kind: ErrorKind, message: str) -> None:
        if not self.failure.done():
            self.failure.set_result(ImapError(kind, message))

    def _give_up(self, kind: ErrorKind, message: str) -> None:
        self._set_failure(kind, message)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, d: bytes) -> None:
        self.received_any = True
        try:
            super().data_received(d)
        except Exception as exc:  # an unexpected tag, or deep recursion on a long response
            # The exception text may quote our LOGIN command: only its type is kept.
            self._give_up(ErrorKind.PROTOCOL, f"unparseable server response ({type(exc).__name__})")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if exc is None:
            self._set_failure(ErrorKind.CLOSED, "the server closed the connection")
        else:
            self._set_failure(ErrorKind.CLOSED, f"connection lost ({_describe(exc)})")

    async def welcome(self, command: bytes) -> None:
        # aioimaplib raises into a task nobody awaits and leaves the greeting wait hanging.
        try:
            await super().welcome(command)
        except Exception:
            self._give_up(ErrorKind.PROTOCOL, f"unusable greeting {_printable(bytes(command))!r}")

    def _untagged_response(self, line: bytes) -> Any:
        if _NEW_MAIL_RE.match(line):
            self.new_mail = True
        return super()._untagged_response(line)


class _Client(aioimaplib.IMAP4):  # type: ignore[misc]  # aioimaplib is untyped
    """aioimaplib's client speaking through `_Protocol` (TLS when given an SSL context)."""

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Any = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        running = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = _Protocol(running)
        self._client_task = running.create_task(
            running.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )


class _Connection:
    """One IMAP connection: every call bounded, raced against the failure future, translated."""

    def __init__(self, target: ImapTarget, client: _Client) -> None:
        self._target = target
        self._client = client
        self._protocol: _Protocol = client.protocol
        self._closed = False
        self._idling: asyncio.Future[Any] | None = None

    @classmethod
    async def open(cls, target: ImapTarget) -> _Connection:
        context = _tls_context(target) if target.tls is TlsMode.IMPLICIT else None
        # The library's own timeouts are backstops only: ours fire first and say what timed out.
        backstop = max(target.connect_timeout, target.command_timeout) + 5.0
        conn = cls(
            target,
            _Client(host=target.host, port=target.port, timeout=backstop, ssl_context=context),
        )
        try:
            await conn._greeting()
        except BaseException:
            await conn.close(logout=False)
            raise
        return conn

    async def _greeting(self) -> None:
        target, client, protocol = self._target, self._client, self._protocol
        hello: asyncio.Future[Any] = asyncio.ensure_future(client.wait_hello_from_server())
        try:
            async with asyncio.timeout(target.connect_timeout):
                if target.tls is TlsMode.NONE:
                    await asyncio.wait(
                        {hello, protocol.failure},
                        timeout=min(_TLS_SNIFF_AFTER, target.connect_timeout / 3),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if (
                        not hello.done()
                        and not protocol.failure.done()
                        and not protocol.received_any
                    ):
                        await self._sniff_implicit_tls(hello)
                await self._race("connect", hello)
        except TimeoutError:
            if not client._client_task.done():
                raise self._error(
                    ErrorKind.TIMEOUT,
                    f"connect to {target.host}:{target.port}: no connection within "
                    f"{target.connect_timeout:g} s",
                ) from None
            raise self._error(
                ErrorKind.TIMEOUT,
                f"connect to {target.host}:{target.port}: no greeting within "
                f"{target.connect_timeout:g} s",
            ) from None
        finally:
            _discard(hello)

    async def _sniff_implicit_tls(self, hello: asyncio.Future[Any]) -> None:
        """While still waiting for a greeting, ask a second connection whether TLS is spoken."""
        target = self._target
        sniff = asyncio.ensure_future(_sniff_tls(target.host, target.port))
        try:
            done, _ = await asyncio.wait(
                {hello, self._protocol.failure, sniff}, return_when=asyncio.FIRST_COMPLETED
            )
            if sniff not in done or not sniff.result():
                return
        finally:
            _discard(sniff)
        raise self._error(
            ErrorKind.TLS,
            f"connect to {target.host}:{target.port}: no greeting, and the port answers a TLS "
            "ClientHello: it expects implicit TLS (tls: implicit)",
        )

    # --- commands ---

    @property
    def new_mail(self) -> bool:
        return self._protocol.new_mail

    @new_mail.setter
    def new_mail(self, value: bool) -> None:
        self._protocol.new_mail = value

    def has_capability(self, name: str) -> bool:
        return bool(self._client.has_capability(name))

    async def login(self) -> None:
        target = self._target
        response = await self._call(
            "LOGIN", self._client.login(aioimaplib.quoted(target.username), target.password)
        )
        if response.result == "NO":
            raise self._error(ErrorKind.AUTH, f"LOGIN refused: {_text(response)}")
        self._check("LOGIN", response)
        # Servers may advertise more (IDLE, UIDPLUS) once logged in. aioimaplib mangles a
        # capability list in the tagged OK ("[CAPABILITY ... IDLE]"): ask unless one came untagged.
        if not any(
            _is_line(line) and line.startswith(b"CAPABILITY ") for line in response.lines[:-1]
        ):
            await self._call("CAPABILITY", self._protocol.capability())

    async def select(self, folder: str) -> int:
        """SELECT `folder`; returns its UIDVALIDITY (0 when the server sends none)."""
        response = await self._call("SELECT", self._client.select(_mailbox_arg(folder)))
        self._check(f"SELECT {folder!r}", response)
        for line in response.lines:
            match = _UIDVALIDITY_RE.search(bytes(line))
            if match:
                return int(match[1])
        log.warning("%s/%s: SELECT sent no UIDVALIDITY", self._target.mailbox, folder)
        return 0

    async def list_folders(self) -> list[ListedFolder]:
        args = ['""', '"*"']
        if self.has_capability("SPECIAL-USE") and self.has_capability("LIST-EXTENDED"):
            args += ["RETURN", "(SPECIAL-USE)"]
        response = await self._call("LIST", self._protocol.simple_command("LIST", *args))
        self._check("LIST", response)
        return parse_list_response(response.lines[:-1])

    async def search_after(self, last_uid: int) -> list[int]:
        """UIDs above `last_uid`, ascending."""
        response = await self._call(
            "UID SEARCH", self._client.uid_search("UID", f"{last_uid + 1}:*", charset=None)
        )
        self._check("UID SEARCH", response)
        uids: set[int] = set()
        for line in response.lines[:-1]:
            for token in bytes(line).split():
                if not token.isdigit():
                    raise self._error(
                        ErrorKind.PROTOCOL,
                        f"UID SEARCH: unexpected {_printable(bytes(line))!r}",
                    )
                # `n:*` always matches the highest UID, even one below n.
                if int(token) > last_uid:
                    uids.add(int(token))
        return sorted(uids)

    async def fetch(self, uid: int, max_bytes: int) -> tuple[bytes, int] | None:
        """The first `max_bytes` of message `uid` and its full size; None if it is gone."""
        response = await self._call(
            "UID FETCH",
            self._client.uid("fetch", str(uid), f"(UID RFC822.SIZE BODY.PEEK[]<0.{max_bytes}>)"),
        )
        self._check("UID FETCH", response)
        return _parse_fetch(response.lines[:-1], uid)

    async def delete(self, uid: int) -> None:
        response = await self._call(
            "UID STORE", self._client.uid("store", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
        )
        self._check("UID STORE", response)
        if self.has_capability("UIDPLUS"):
            response = await self._call("UID EXPUNGE", self._client.uid("expunge", str(uid)))
        else:  # expunges every \Deleted message of the folder, not only ours
            response = await self._call("EXPUNGE", self._client.expunge())
        self._check("EXPUNGE", response)

    async def noop(self) -> None:
        self._check("NOOP", await self._call("NOOP", self._client.noop()))

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`, but raise as soon as the connection fails."""
        await asyncio.wait({self._protocol.failure}, timeout=seconds)
        self._raise_failure()

    async def idle(self, renew_after: float) -> None:
        """IDLE until the server announces new mail or `renew_after` seconds pass, then DONE.

        IDLE is started here rather than with aioimaplib's `idle_start`, whose inner task may
        send IDLE after a cancellation and then block the LOGOUT that follows.
        """
        protocol = self._protocol
        queue: asyncio.Queue[Any] = protocol.idle_queue
        while not queue.empty():  # pushes left over from an earlier IDLE
            queue.get_nowait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + renew_after
        idling: asyncio.Future[Any] = asyncio.ensure_future(protocol.idle())
        self._idling = idling
        acked: asyncio.Future[Any] = asyncio.ensure_future(protocol.wait_for_idle_response())
        try:
            either: set[asyncio.Future[Any]] = {idling, acked}
            await self._call("IDLE", asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED))
        finally:
            _discard(acked)
        if not protocol.has_pending_idle_command():  # the server refused IDLE
            self._check("IDLE", await self._race("IDLE", idling))
            raise self._error(ErrorKind.PROTOCOL, "IDLE: ended at once")
        while not protocol.new_mail:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            get: asyncio.Future[Any] = asyncio.ensure_future(queue.get())
            try:
                await asyncio.wait(
                    {get, protocol.failure}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                _discard(get)
            self._raise_failure()
            if not get.done():
                break
        protocol.idle_done()
        self._check("IDLE", await self._call("DONE", idling))

    def _settle_idle(self, *, end: bool) -> None:
        """Cancel an IDLE not yet sent; send DONE to one the server is in, when `end`."""
        idling = self._idling
        if idling is None or idling.done():
            return
        if not self._protocol.has_pending_idle_command():
            idling.cancel()  # not sent yet, and now never will be
        elif end:
            self._protocol.idle_done()

    async def close(self, *, logout: bool) -> None:
        """LOGOUT (bounded, errors ignored) when `logout`, then drop the connection."""
        if self._closed:
            return
        self._closed = True
        client, protocol = self._client, self._protocol
        alive = not protocol.failure.done() and protocol.transport is not None
        try:
            self._settle_idle(end=logout and alive)
            if logout and alive:
                bye: asyncio.Future[Any] | None = None
                try:
                    async with asyncio.timeout(_LOGOUT_TIMEOUT):
                        bye = asyncio.ensure_future(client.logout())
                        await self._race("LOGOUT", bye)
                except Exception as exc:  # a goodbye that fails changes nothing
                    log.debug("%s: LOGOUT failed: %s", self._target.mailbox, exc)
                finally:
                    if bye is not None:
                        _discard(bye)
        finally:
            if protocol.transport is not None:
                protocol.transport.abort()
            _discard(client._client_task)
            if self._idling is not None:
                _discard(self._idling)
            for task in (*client.tasks, *protocol.tasks):
                _discard(task)

    # --- plumbing ---

    async def _call(self, what: str, awaitable: Awaitable[T]) -> T:
        """Run one aioimaplib call within command_timeout, racing the connection's failure."""
        future: asyncio.Future[T] = asyncio.ensure_future(awaitable)
        timeout = self._target.command_timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._race(what, future)
        except TimeoutError:
            raise self._error(
                ErrorKind.TIMEOUT, f"{what}: no answer within {timeout:g} s"
            ) from None
        finally:
            _discard(future)

    async def _race(self, what: str, future: asyncio.Future[T]) -> T:
        either: set[asyncio.Future[Any]] = {future, self._protocol.failure}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not future.done():
            self._raise_failure()
        try:
            return future.result()
        except ImapError:
            raise
        except (TimeoutError, aioimaplib.CommandTimeout):
            raise self._error(ErrorKind.TIMEOUT, f"{what}: no answer in time") from None
        except ssl.SSLError as exc:
            raise self._error(ErrorKind.TLS, f"{what}: {_describe(exc)}") from None
        except OSError as exc:
            raise self._error(self._os_error_kind(what, exc), f"{what}: {_describe(exc)}") from None
        except (aioimaplib.AioImapException, ValueError) as exc:
            # Abort texts may quote the command sent; _error masks the password.
            raise self._error(ErrorKind.PROTOCOL, f"{what}: {exc}") from None

    def _os_error_kind(self, what: str, exc: OSError) -> ErrorKind:
        if what != "connect":
            return ErrorKind.CLOSED
        handshake = isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError)
        if handshake and self._target.tls is TlsMode.IMPLICIT:
            return ErrorKind.TLS  # the peer hung up during the TLS handshake
        return ErrorKind.CONNECT

    def _raise_failure(self) -> None:
        if self._protocol.failure.done():
            failure = self._protocol.failure.result()
            raise self._error(failure.kind, failure.message)

    def _check(self, what: str, response: Any) -> None:
        if response.result != "OK":
            raise self._error(ErrorKind.PROTOCOL, f"{what}: {response.result} {_text(response)}")

    def _error(self, kind: ErrorKind, message: str) -> ImapError:
        password = self._target.password
        if password:
            message = message.replace(password, "***")
            message = message.replace(aioimaplib.quoted(password)[1:-1], "***")
        return ImapError(kind, message)


def _parse_fetch(lines: Sequence[Any], uid: int) -> tuple[bytes, int] | None:
    """The body literal and RFC822.SIZE of `uid` among aioimaplib's FETCH lines.

    aioimaplib gives [b'n FETCH (UID u RFC822.SIZE s BODY[]<0> {k}', bytearray(literal), b')'];
    items after the literal land in the line that follows it, and unsolicited FETCH lines (flag
    changes) may be mixed in.
    """
    for i, line in enumerate(lines):
        if not _is_line(line) or not _FETCH_RE.match(line):
            continue
        body = _FETCH_BODY_RE.search(line)
        if body is None or i + 1 >= len(lines) or _is_line(lines[i + 1]):
            continue
        literal = bytes(lines[i + 1])
        items = line + (lines[i + 2] if i + 2 < len(lines) and _is_line(lines[i + 2]) else b"")
        found = _FETCH_UID_RE.search(items)
        if found is None or int(found[1]) != uid:
            continue
        size = _FETCH_SIZE_RE.search(items)
        return literal, int(size[1]) if size else len(literal)
    return None


def _is_line(item: Any) -> bool:
    # aioimaplib keeps response lines as bytes and literals as bytearray.
    return isinstance(item, bytes)


def _mailbox_arg(name: str) -> str:
    return str(aioimaplib.quoted(encode_modified_utf7(name)))


def _tls_context(target: ImapTarget) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(
            cafile=str(target.ca_file) if target.ca_file is not None else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ImapError(
            ErrorKind.TLS, f"cannot load CA file {target.ca_file}: {_describe(exc)}"
        ) from None
    if not target.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def _sniff_tls(host: str, port: int) -> bool:
    try:
        async with asyncio.timeout(_TLS_SNIFF_TIMEOUT):
            return await answers_tls(host, port, server_hostname=host)
    except TimeoutError:
        return False


def _discard(future: asyncio.Future[Any]) -> None:
    """Cancel a pending future, or mark a finished one's exception as retrieved."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    text = str(exc) or type(exc).__name__
    return text[:_TEXT_MAX]


def _text(response: Any) -> str:
    """The text of a tagged reply (aioimaplib puts it last)."""
    return _printable(bytes(response.lines[-1])) if response.lines else ""


def _printable(data: bytes) -> str:
    text = data[:_TEXT_MAX].decode("ascii", "backslashreplace")
    return "".join(char if char.isprintable() else f"\\x{ord(char):02x}" for char in text)
