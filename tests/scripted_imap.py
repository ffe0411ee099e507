"""A tiny scripted IMAP server on loopback, for faults no real IMAP server produces on demand.

Every connection plays the same script (or the first one script and every later one another):
send lines (with the tag of the last command read), wait for a command or for any bytes, start
TLS, pause until the test says go on, hang, or drop the connection. The server counts connections
and keeps every line clients sent. Real-server behaviour belongs to the tests against the mail
system's Dovecot.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Self

__all__ = [
    "CAPABILITY_EXCHANGE",
    "GREETING",
    "LOGGED_IN",
    "Close",
    "Expect",
    "Hang",
    "Pause",
    "Raw",
    "ReadLine",
    "Receive",
    "ScriptedImapServer",
    "Send",
    "StartTls",
    "Step",
    "fetch_response",
    "gmail_category_search",
    "logged_in",
]


@dataclass(frozen=True)
class Send:
    """Lines separated by newlines, each sent with CRLF; `{tag}` is the last command's tag.

    Sent as UTF-8; a lone surrogate "\\udcNN" sends the single byte NN (surrogateescape), for
    text that is not UTF-8."""

    text: str


@dataclass(frozen=True)
class Raw:
    """Bytes sent exactly as given."""

    data: bytes


@dataclass(frozen=True)
class Expect:
    """Read client lines until one carries this command ("LOGIN", "UID FETCH"; any case) and
    keep its tag. "DONE", which ends an IDLE, has no tag: the IDLE's is kept."""

    command: str


@dataclass(frozen=True)
class Pause:
    """Set `reached`, then say nothing until the test sets `go_on` (closing the server does)."""

    reached: asyncio.Event
    go_on: asyncio.Event


@dataclass(frozen=True)
class Hang:
    """Say nothing more; read and keep whatever the client sends until it hangs up."""


@dataclass(frozen=True)
class Close:
    """Drop the connection."""


@dataclass(frozen=True)
class Receive:
    """Wait for the client's next bytes, whatever they are (a TLS ClientHello has no lines)."""


@dataclass(frozen=True)
class ReadLine:
    """Read one client line and keep it: a SASL response, which has no tag."""


@dataclass(frozen=True)
class StartTls:
    """Do the server side of a TLS handshake (after answering STARTTLS); later steps speak TLS."""

    context: ssl.SSLContext


Step = Send | Raw | Expect | Receive | ReadLine | Pause | Hang | Close | StartTls

GREETING = Send("* OK scripted IMAP server ready")
CAPABILITIES = "IMAP4rev1 IDLE UIDPLUS"
CAPABILITY_EXCHANGE: tuple[Step, ...] = (
    Expect("CAPABILITY"),
    Send(f"* CAPABILITY {CAPABILITIES}\n{{tag}} OK CAPABILITY completed"),
)


def logged_in(capabilities: str = CAPABILITIES) -> tuple[Step, ...]:
    """Greeting, capabilities, LOGIN accepted, capabilities again: what precedes SELECT or LIST.
    A server that advertises more once logged in (Gmail's X-GM-EXT-1) passes `capabilities`."""
    return (
        GREETING,
        *CAPABILITY_EXCHANGE,
        Expect("LOGIN"),
        Send("{tag} OK Logged in"),
        Expect("CAPABILITY"),
        Send(f"* CAPABILITY {capabilities}\n{{tag}} OK CAPABILITY completed"),
    )


LOGGED_IN: tuple[Step, ...] = logged_in()


def fetch_response(uid: int, body: bytes) -> Raw:
    """The untagged answer to the watcher's UID FETCH of message `uid` (sequence number too)."""
    return Raw(
        b"* %d FETCH (UID %d RFC822.SIZE %d BODY[]<0> {%d}\r\n%s)\r\n"
        % (uid, uid, len(body), len(body), body)
    )


def gmail_category_search(uid: int, category: str, *, found: bool) -> tuple[Step, Step]:
    """Gmail's answer to the search for one inbox tab of message `uid`: the UID when the message
    is in that tab, an empty SEARCH when not (Google's IMAP extensions document, X-GM-RAW)."""
    answer = f"* SEARCH {uid}" if found else "* SEARCH"
    return (
        Expect(f'UID SEARCH UID {uid} X-GM-RAW "category:{category}"'),
        Send(f"{answer}\n{{tag}} OK SEARCH completed (Success)"),
    )


class ScriptedImapServer:
    """`async with ScriptedImapServer(*steps) as server:` listens on 127.0.0.1:`server.port`.

    With `then`, the first connection plays `steps` and every later one plays `then` (an agent
    lists folders on a first connection, then watches on others)."""

    def __init__(self, *steps: Step, then: tuple[Step, ...] | None = None) -> None:
        self.steps = steps
        self.then = steps if then is None else then
        self.received: list[bytes] = []
        self.connections = 0
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for step in (*self.steps, *self.then):
            if isinstance(step, Pause):
                step.go_on.set()  # a paused handler goes on, and meets the closed connection
        # Closing the connections ends every handler (a read sees EOF). Python 3.11's streams log
        # an error for a handler task that is cancelled instead, so that is only the fallback.
        for writer in list(self._writers):
            writer.close()
        handlers = list(self._handlers)
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=5.0)
            for task in pending:
                task.cancel()
        await self._server.wait_closed()

    async def wait_for_connections(self, count: int) -> None:
        """Return once `count` connections have been accepted in all."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.connections >= count)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        async with self._changed:
            self.connections += 1
            steps = self.steps if self.connections == 1 else self.then
            self._changed.notify_all()
        try:
            await self._play(reader, writer, steps)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _play(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, steps: tuple[Step, ...]
    ) -> None:
        tag = "*"
        for step in steps:
            match step:
                case Send(text):
                    for line in text.split("\n"):
                        writer.write(
                            line.replace("{tag}", tag).encode("utf-8", "surrogateescape") + b"\r\n"
                        )
                    await writer.drain()
                case Raw(data):
                    writer.write(data)
                    await writer.drain()
                case Expect(command):
                    tag = await self._read_until(reader, command, tag)
                case Pause(reached, go_on):
                    reached.set()
                    await go_on.wait()
                case Hang():
                    while received := await reader.readline():
                        self.received.append(received)
                    return
                case Close():
                    return
                case Receive():
                    if not await reader.read(65536):
                        return
                case ReadLine():
                    if not (response := await reader.readline()):
                        return
                    self.received.append(response)
                case StartTls(context):
                    await writer.start_tls(context)

    async def _read_until(self, reader: asyncio.StreamReader, command: str, tag: str) -> str:
        while line := await reader.readline():
            self.received.append(line)
            text = line.decode("utf-8", "replace").strip()
            if text.upper() == command.upper() == "DONE":
                return tag
            tag_read, _, rest = text.partition(" ")
            if f"{rest.upper()} ".startswith(f"{command.upper()} "):
                return tag_read
        raise ConnectionError("the client hung up")
