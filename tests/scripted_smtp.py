"""A tiny scripted SMTP server on loopback, for faults no real mail server produces on demand.

Each connection follows a `Script`: what to send at each stage (a reply, raw bytes, a slow drip, a
pause, a hang, or a dropped connection), whether STARTTLS or implicit TLS is spoken, and which one
credential AUTH PLAIN / AUTH LOGIN accepts (or which bearer token AUTH XOAUTH2 / OAUTHBEARER
accepts, answering any other with the error challenge of RFC 7628 3.2.2). The server records what
every client sent, so tests can assert on commands and message data. Real-server behaviour belongs
to the mail-system tests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from agent.model import Stage

__all__ = [
    "Action",
    "Behaviour",
    "Drip",
    "Drop",
    "Hang",
    "Pause",
    "Raw",
    "Reply",
    "Script",
    "ScriptedSmtpServer",
    "Session",
    "UntilClosed",
]


@dataclass(frozen=True)
class Reply:
    """An SMTP reply; lines are separated by newlines ("250-a\\n250 b") and sent with CRLF."""

    text: str

    @property
    def code(self) -> int:
        return int(self.text[:3])

    def wire(self) -> bytes:
        return b"".join(line.encode() + b"\r\n" for line in self.text.split("\n"))


@dataclass(frozen=True)
class Raw:
    """Bytes sent exactly as given (garbage, half a reply)."""

    data: bytes


@dataclass(frozen=True)
class Drip:
    """Bytes sent one at a time, `interval` seconds apart; forever when `repeat`."""

    data: bytes
    interval: float
    repeat: bool = False


@dataclass(frozen=True)
class Pause:
    """Wait before the next action (a slow server)."""

    seconds: float


@dataclass(frozen=True)
class UntilClosed:
    """Wait until the server's connection number `index` (0-based) has closed."""

    index: int


@dataclass(frozen=True)
class Hang:
    """Never answer: read and discard whatever arrives until the client goes away."""


@dataclass(frozen=True)
class Drop:
    """Close the connection without answering."""


Action = Reply | Raw | Drip | Pause | UntilClosed | Hang | Drop
Behaviour = Action | tuple[Action, ...]

_HANDSHAKE_TIMEOUT = 10.0

_DEFAULTS: dict[Stage, Behaviour] = {
    Stage.BANNER: Reply("220 scripted.test ESMTP"),
    Stage.STARTTLS: Reply("220 2.0.0 Ready to start TLS"),
    Stage.AUTH: Reply("235 2.7.0 Authentication successful"),
    Stage.MAIL: Reply("250 2.1.0 Ok"),
    Stage.RCPT: Reply("250 2.1.5 Ok"),
    Stage.DATA: Reply("354 End data with <CR><LF>.<CR><LF>"),
    Stage.END_OF_DATA: Reply("250 2.0.0 Ok: queued as 4XYZ"),
    Stage.QUIT: Reply("221 2.0.0 Bye"),
}


@dataclass(frozen=True)
class Script:
    """How one connection behaves.

    `replies` overrides the default behaviour per stage (EHLO's default lists the extensions below;
    AUTH's default checks `credentials`). `rcpt` overrides RCPT per recipient address.
    """

    replies: dict[Stage, Behaviour] = field(default_factory=dict)
    rcpt: dict[str, Behaviour] = field(default_factory=dict)
    tls_context: ssl.SSLContext | None = None  # server side; enables STARTTLS or implicit TLS
    implicit_tls: bool = False
    offer_starttls: bool = True  # advertised when tls_context is set and TLS is not yet active
    credentials: tuple[str, str] | None = None  # AUTH PLAIN/LOGIN advertised when set
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    # The token AUTH XOAUTH2/OAUTHBEARER accepts; AUTH is advertised with `auth_mechanisms`.
    bearer_token: str | None = None
    bearer_error: str = '{"status":"401","schemes":"bearer"}'  # the error challenge's JSON


@dataclass
class Session:
    """What one client did on one connection."""

    index: int
    commands: list[str] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)  # DATA content, un-dot-stuffed
    received: asyncio.Event = field(default_factory=asyncio.Event)  # set at each message's end
    tls: bool = False
    authenticated: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class _Stop(Exception):
    """The script ended this connection (dropped, hung up, or the client left)."""


class ScriptedSmtpServer:
    """Listens on 127.0.0.1, on a port of its own; connection i follows scripts[min(i, last)]."""

    def __init__(self, scripts: Script | Sequence[Script] = Script()) -> None:
        self._scripts = (scripts,) if isinstance(scripts, Script) else tuple(scripts)
        if not self._scripts:
            raise ValueError("at least one script is needed")
        self.sessions: list[Session] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._arrivals = asyncio.Condition()
        self.port = 0

    async def __aenter__(self) -> Self:
        # asyncio wraps every accepted socket alike, so the first script decides implicit TLS.
        first = self._scripts[0]
        self._server = await asyncio.start_server(
            self._serve,
            "127.0.0.1",
            0,
            ssl=first.tls_context if first.implicit_tls else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def wait_for_session(self, index: int) -> Session:
        """The session of connection number `index`, once that connection has arrived."""
        async with self._arrivals:
            await self._arrivals.wait_for(lambda: len(self.sessions) > index)
        return self.sessions[index]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        session = Session(index=len(self.sessions))
        async with self._arrivals:
            self.sessions.append(session)
            self._arrivals.notify_all()
        script = self._scripts[min(session.index, len(self._scripts) - 1)]
        session.tls = script.implicit_tls
        try:
            await _Conversation(self, script, session, reader, writer).run()
        except (_Stop, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only __aexit__ cancels a handler. Ending normally keeps Python 3.11's
            # StreamReaderProtocol from logging the cancellation as an error.
            pass
        finally:
            # No wait_closed(): after a failed server-side start_tls it would never finish.
            writer.close()
            session.closed.set()
            self._tasks.discard(task)


class _Conversation:
    def __init__(
        self,
        server: ScriptedSmtpServer,
        script: Script,
        session: Session,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._server = server
        self._script = script
        self._session = session
        self._reader = reader
        self._writer = writer

    async def run(self) -> None:
        await self._act(self._behaviour(Stage.BANNER))
        while True:
            line = await self._readline()
            self._session.commands.append(line)
            verb, _, argument = line.partition(" ")
            match verb.upper():
                case "EHLO" | "HELO":
                    await self._act(self._script.replies.get(Stage.EHLO) or self._ehlo_reply())
                case "STARTTLS":
                    await self._starttls()
                case "AUTH":
                    await self._auth(argument)
                case "MAIL":
                    await self._act(self._behaviour(Stage.MAIL))
                case "RCPT":
                    address = argument.partition(":")[2].strip().strip("<>")
                    await self._act(self._script.rcpt.get(address) or self._behaviour(Stage.RCPT))
                case "DATA":
                    await self._data()
                case "QUIT":
                    await self._act(self._behaviour(Stage.QUIT))
                    raise _Stop
                case "RSET" | "NOOP":
                    await self._act(Reply("250 2.0.0 Ok"))
                case _:
                    await self._act(Reply("500 5.5.2 Error: command not recognized"))

    def _behaviour(self, stage: Stage) -> Behaviour:
        return self._script.replies.get(stage) or _DEFAULTS[stage]

    def _ehlo_reply(self) -> Reply:
        lines = ["scripted.test", "PIPELINING", "SIZE 10240000"]
        if self._script.tls_context and self._script.offer_starttls and not self._session.tls:
            lines.append("STARTTLS")
        if self._script.credentials is not None or self._script.bearer_token is not None:
            lines.append("AUTH " + " ".join(self._script.auth_mechanisms))
        lines.append("8BITMIME")
        text = "\n".join(f"250-{line}" for line in lines[:-1]) + f"\n250 {lines[-1]}"
        return Reply(text)

    async def _readline(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise _Stop
        return line.rstrip(b"\r\n").decode("utf-8", "replace")

    async def _act(self, behaviour: Behaviour) -> None:
        for action in behaviour if isinstance(behaviour, tuple) else (behaviour,):
            await self._do(action)

    async def _do(self, action: Action) -> None:
        match action:
            case Reply() | Raw():
                self._writer.write(action.wire() if isinstance(action, Reply) else action.data)
                await self._writer.drain()
            case Drip(data=data, interval=interval, repeat=repeat):
                while True:
                    for byte in data:
                        self._writer.write(bytes((byte,)))
                        await self._writer.drain()
                        await asyncio.sleep(interval)
                    if not repeat:
                        break
            case Pause(seconds=seconds):
                await asyncio.sleep(seconds)
            case UntilClosed(index=index):
                await (await self._server.wait_for_session(index)).closed.wait()
            case Hang():
                while await self._reader.read(4096):
                    pass
                raise _Stop
            case Drop():
                raise _Stop

    async def _starttls(self) -> None:
        behaviour = self._behaviour(Stage.STARTTLS)
        await self._act(behaviour)
        context = self._script.tls_context
        if context is None or self._session.tls or not _is_code(behaviour, 220):
            return
        await self._writer.start_tls(context, ssl_handshake_timeout=_HANDSHAKE_TIMEOUT)
        self._session.tls = True

    async def _auth(self, argument: str) -> None:
        if Stage.AUTH in self._script.replies:
            await self._act(self._script.replies[Stage.AUTH])
            return
        mechanism, _, initial = argument.partition(" ")
        if mechanism.upper() in ("XOAUTH2", "OAUTHBEARER") and self._script.bearer_token:
            await self._bearer(mechanism.upper(), initial)
            return
        if (
            self._script.credentials is None
            or mechanism.upper() not in self._script.auth_mechanisms
        ):
            await self._act(Reply("504 5.5.4 Unrecognized authentication type"))
            return
        if mechanism.upper() == "PLAIN":
            blob = initial or await self._challenge("")
            parts = _b64(blob).split("\0")
            offered = (parts[1], parts[2]) if len(parts) == 3 else None
        else:
            user = _b64(initial) if initial else _b64(await self._challenge("VXNlcm5hbWU6"))
            offered = (user, _b64(await self._challenge("UGFzc3dvcmQ6")))
        if offered == self._script.credentials:
            self._session.authenticated = True
            await self._act(_DEFAULTS[Stage.AUTH])
        else:
            await self._act(Reply("535 5.7.8 Error: authentication failed: bad credentials"))

    async def _challenge(self, text: str) -> str:
        await self._act(Reply(f"334 {text}".rstrip() if text else "334 "))
        line = await self._readline()
        self._session.commands.append(line)  # SASL responses too, for byte-exact assertions
        return line

    async def _bearer(self, mechanism: str, initial: str) -> None:
        if mechanism not in self._script.auth_mechanisms:
            await self._act(Reply("504 5.5.4 Unrecognized authentication type"))
            return
        fields = _b64(initial or await self._challenge("")).split("\x01")
        if f"auth=Bearer {self._script.bearer_token}" in fields:
            self._session.authenticated = True
            await self._act(_DEFAULTS[Stage.AUTH])
            return
        error = base64.b64encode(self._script.bearer_error.encode()).decode()
        await self._challenge(error)
        await self._act(Reply("535 5.7.8 Username and Password not accepted"))

    async def _data(self) -> None:
        behaviour = self._behaviour(Stage.DATA)
        await self._act(behaviour)
        if not _is_code(behaviour, 354):
            return
        lines: list[bytes] = []
        while True:
            line = await self._reader.readline()
            if not line:
                raise _Stop
            if line == b".\r\n":
                break
            lines.append(line[1:] if line.startswith(b".") else line)
        self._session.messages.append(b"".join(lines))
        self._session.received.set()
        await self._act(self._behaviour(Stage.END_OF_DATA))


def _is_code(behaviour: Behaviour, code: int) -> bool:
    """Whether the last action of a behaviour is a reply with this code."""
    last = behaviour[-1] if isinstance(behaviour, tuple) else behaviour
    return isinstance(last, Reply) and last.code == code


def _b64(text: str) -> str:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return ""
