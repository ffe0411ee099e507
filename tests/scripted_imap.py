"""A tiny scripted IMAP server on loopback, for faults no real IMAP server produces on demand.

Every connection plays the same script: send lines (with the tag of the last command read), wait
for a command, hang, or drop the connection. The server counts connections and keeps every line
clients sent. Real-server behaviour belongs to the tests against the mail system's Dovecot.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from types import TracebackType
from typing import Self

__all__ = [
    "CAPABILITY_EXCHANGE",
    "GREETING",
    "Close",
    "Expect",
    "Hang",
    "Raw",
    "ScriptedImapServer",
    "Send",
    "Step",
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
    keep its tag."""

    command: str


@dataclass(frozen=True)
class Hang:
    """Say nothing more; read and keep whatever the client sends until it hangs up."""


@dataclass(frozen=True)
class Close:
    """Drop the connection."""


Step = Send | Raw | Expect | Hang | Close

GREETING = Send("* OK scripted IMAP server ready")
CAPABILITY_EXCHANGE: tuple[Step, ...] = (
    Expect("CAPABILITY"),
    Send("* CAPABILITY IMAP4rev1 IDLE UIDPLUS\n{tag} OK CAPABILITY completed"),
)


class ScriptedImapServer:
    """`async with ScriptedImapServer(*steps) as server:` listens on 127.0.0.1:`server.port`."""

    def __init__(self, *steps: Step) -> None:
        self.steps = steps
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
            self._changed.notify_all()
        try:
            await self._play(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _play(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tag = "*"
        for step in self.steps:
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
                    tag = await self._read_until(reader, command)
                case Hang():
                    while received := await reader.readline():
                        self.received.append(received)
                    return
                case Close():
                    return

    async def _read_until(self, reader: asyncio.StreamReader, command: str) -> str:
        while line := await reader.readline():
            self.received.append(line)
            tag, _, rest = line.decode("utf-8", "replace").strip().partition(" ")
            if f"{rest.upper()} ".startswith(f"{command.upper()} "):
                return tag
        raise ConnectionError("the client hung up")
