"""The aioimaplib edge: one IMAP connection whose every call is bounded and whose every failure
is an `ImapError` with an `ErrorKind`.

The only module that imports aioimaplib: library exceptions and NO/BAD replies are translated
here, and nothing above sees an aioimaplib type. Choices worth knowing:

* aioimaplib 2.x never fails a pending command when the connection drops (idle_start hangs too,
  aioimaplib#110), and an unusable greeting leaves `wait_hello_from_server` hanging. A protocol
  subclass turns both into a `failure` future that every call is raced against, and every call is
  bounded by `asyncio.timeout`, so a dead connection is noticed at once. IDLE is started by hand:
  `idle_start`'s inner task can send IDLE after a cancellation and block the LOGOUT after it.
* Dovecot runs a command on the mailbox view from before the command and announces new mail
  (`* n EXISTS`) at its end, which aioimaplib drops unless a NOOP is pending. The protocol notes
  every EXISTS/RECENT it sees in `new_mail`, for the watcher to search again.
* Each message is fetched alone with `BODY.PEEK[]<0.N>` (never sets \\Seen, bounded memory) and
  RFC822.SIZE, so a consumer knows when `raw` was truncated.
* `tls: starttls` (aioimaplib has none): greeting and CAPABILITY in plain text, `STARTTLS`, then
  the transport is upgraded in place with `loop.start_tls` (the context and verification of
  implicit TLS), and CAPABILITY is asked again before LOGIN: what the server said in plain text is
  not trusted (RFC 9051 6.2.1). No STARTTLS advertised, a refusal, or a failed handshake is a `tls`
  error and nothing more is sent: never a fall back to plain text. The whole of it, greeting to
  the second CAPABILITY, is bounded by the connect timeout.
* A plain client on an implicit-TLS port gets no greeting (the server waits for a ClientHello).
  With `tls: none` or `starttls` and no byte received after a short while, a second connection
  sends a TLS ClientHello; a TLS record in answer fails fast with kind `tls` (same check as the
  SMTP sender).
* aioimaplib parses recursively, one frame per line (aioimaplib#118): a LIST of ~900+ folders in
  one read fails as `protocol`.
* Every error message and log line masks the target's secrets (`redactor_for`), and aioimaplib's
  own DEBUG line for LOGIN is dropped.
* OAuth 2.0 (`ImapTarget.oauth`): AUTHENTICATE XOAUTH2 or OAUTHBEARER, the configured one or else
  the first the server advertises of OAUTHBEARER, XOAUTH2; the initial response on the command
  line when the server advertises SASL-IR, else after the server's empty `+`. aioimaplib's
  `xoauth2()` never answers the error challenge a refused token gets (`+ <base64 JSON>`), so the
  command hangs until its timeout: `_Protocol` answers it (empty line, or ^A for OAUTHBEARER) and
  the server's tagged NO ends the command at once, the connection still usable. The refusal is an
  `auth` error quoting the decoded JSON; the token source hears `refused()`; a TokenError is kind
  `token`. The token and the initial response are masked like the password, and aioimaplib's
  DEBUG line for the AUTHENTICATE it sends is dropped.
* On a server advertising X-GM-EXT-1 (Gmail), `inbox_category` asks which inbox tab a message
  is in with one `UID SEARCH UID <uid> X-GM-RAW "category:<tab>"` per tab, primary first.
* IDLE calibration (`agent.imap.calibration`): `idle(on_idle=...)` calls back once the server
  acknowledged IDLE, `pushed_at` is the loop time the push was read, `append` adds the marker
  over a second connection and `delete_if_alone` removes it without expunging anyone else's
  \\Deleted messages.
* Where aioimaplib has no public API, its private names are used in one place only: the section
  "aioimaplib gaps" below.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import aioimaplib

from agent import sasl
from agent.imap.errors import ImapError
from agent.imap.log import MaskedLog
from agent.imap.names import mailbox_arg, quote
from agent.imap.responses import (
    TEXT_MAX,
    ListedFolder,
    announces_new_mail,
    lists_capabilities,
    parse_fetch,
    parse_list_response,
    parse_search,
    parse_uidvalidity,
    printable,
)
from agent.imap.target import ImapTarget
from agent.model import ErrorKind, InboxCategory, TlsMode
from agent.oauth import AccessToken, OAuthSignIn, SaslMechanism, TokenError
from agent.secrets import Redactor, credential_forms
from agent.tls_contexts import cached_client_context, load_client_context
from agent.tls_sniff import answers_tls

__all__ = ["GMAIL_EXTENSIONS", "Connection", "redactor_for"]

T = TypeVar("T")

_LOGOUT_TIMEOUT: Final = 2.0  # a polite goodbye, never a reason to hang on shutdown
_TLS_SNIFF_AFTER: Final = 2.0  # seconds without a byte on a plain connection before the TLS check
_TLS_SNIFF_TIMEOUT: Final = 3.0
_INJECTED: Final = "plain text after STARTTLS's OK, before the TLS handshake: refusing to go on"
# Gmail's IMAP extensions (X-GM-RAW among them) are there when this capability is advertised.
GMAIL_EXTENSIONS: Final = "X-GM-EXT-1"
# The order the tabs are asked in: primary first, where a probe should land, so the usual case
# costs one command. Primary is asked, not inferred from four misses: a server that advertises
# X-GM-EXT-1 but knows no categories then yields no category rather than a made-up "primary".
_CATEGORY_ORDER: Final = (
    InboxCategory.PRIMARY,
    InboxCategory.PROMOTIONS,
    InboxCategory.SOCIAL,
    InboxCategory.UPDATES,
    InboxCategory.FORUMS,
)


class _HideLoginCommand(logging.Filter):
    """Drops aioimaplib's DEBUG line for the LOGIN or AUTHENTICATE it sends.

    aioimaplib masks the password in that line, but IMAP quoting changes a password that holds a
    quote or a backslash, and the mask then misses it; an AUTHENTICATE line carries the token in
    base64, which no mask of the token itself finds.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return " LOGIN " not in message and " AUTHENTICATE " not in message


logging.getLogger("aioimaplib.aioimaplib").addFilter(_HideLoginCommand())


def redactor_for(target: ImapTarget) -> Redactor:
    """Masks `target`'s secrets: the password as a server may echo it (plain, base64, and quoted
    as aioimaplib's LOGIN sends it), and every value of `target.secrets`."""
    password = target.password
    quoted = aioimaplib.quoted(password)[1:-1] if password else ""
    return Redactor((*credential_forms(target.username, password), quoted, *target.secrets))


# --- aioimaplib gaps ------------------------------------------------------------------------------
# The only uses of aioimaplib's private names (read against aioimaplib 2.0.3). An upgrade that
# renames them breaks here and nowhere else:
# * `IMAP4` takes no protocol class, so `_Client` replaces `create_client`, which must set
#   `_client_task`: the connection task `wait_hello_from_server` awaits. Everything else here uses
#   the same task as `_Client.connecting`.
# * The protocol has no hook for untagged responses, and drops `* n EXISTS` unless a NOOP is
#   pending: `_Protocol` extends `_untagged_response` to note new-mail announcements.
# * No STARTTLS: `_Protocol.upgrade` swaps its own `transport` for the one `loop.start_tls` returns
#   (aioimaplib writes through `self.transport` only). Plain text after STARTTLS's tagged OK could
#   have been injected by a man in the middle (CVE-2011-0411's kind): `_handle_line` fails the
#   connection on any line after it, and `upgrade` on a partial one left in `incomplete_line`.
# * No generic AUTHENTICATE, and continuation lines of a command other than APPEND and IDLE are
#   only appended to its response: `_Protocol.authenticate` sends AUTHENTICATE as a sync command
#   and `_continuation` answers its `+` lines (the initial response; the error challenge); the
#   state becomes aioimaplib's AUTH on OK, under `state_condition` as its own login does.


class _SaslExchange:
    """One AUTHENTICATE in progress: what to answer to the server's `+` lines."""

    def __init__(self, command: Any, initial: bytes | None, abort: bytes) -> None:
        self.command = command
        self.initial = initial  # still to send after the first "+" (no SASL-IR)
        self.abort = abort
        self.challenge: bytes | None = None  # the error challenge, once received


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]  # aioimaplib is untyped
    """aioimaplib's protocol, plus a `failure` future and a note of new-mail announcements."""

    transport: Any  # set by aioimaplib's connection_made; replaced by `upgrade`

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.failure: asyncio.Future[ImapError] = loop.create_future()
        self.received_any = False
        self.new_mail = False
        self.new_mail_at: float | None = None  # loop time of the first announcement since reset
        self.starttls_tag: bytes | None = None  # while STARTTLS is pending or being acted on
        self.sasl: _SaslExchange | None = None  # while AUTHENTICATE is pending
        self._plain_text_over = False  # STARTTLS's OK came: nothing more may arrive before TLS

    def note_failure(self, kind: ErrorKind, message: str) -> None:
        if not self.failure.done():
            self.failure.set_result(ImapError(kind, message))

    def give_up(self, kind: ErrorKind, message: str) -> None:
        self.note_failure(kind, message)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, d: bytes) -> None:
        self.received_any = True
        try:
            super().data_received(d)
        except Exception as exc:  # an unexpected tag, or deep recursion on a long response
            # The exception text may quote our LOGIN command: only its type is kept.
            self.give_up(ErrorKind.PROTOCOL, f"unparseable server response ({type(exc).__name__})")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if exc is None:
            self.note_failure(ErrorKind.CLOSED, "the server closed the connection")
        else:
            self.note_failure(ErrorKind.CLOSED, f"connection lost ({_describe(exc)})")

    async def welcome(self, command: bytes) -> None:
        # aioimaplib raises into a task nobody awaits and leaves the greeting wait hanging.
        try:
            await super().welcome(command)
        except Exception:
            self.give_up(ErrorKind.PROTOCOL, f"unusable greeting {printable(bytes(command))!r}")

    async def upgrade(
        self, context: ssl.SSLContext, server_hostname: str, handshake_timeout: float
    ) -> None:
        """Start TLS on this connection (after STARTTLS's tagged OK); raises what start_tls does.

        `handshake_timeout` is a backstop: the caller's deadline over the whole connect fires first.
        """
        if self.incomplete_line:  # an aioimaplib gap (see above)
            raise ImapError(ErrorKind.TLS, _INJECTED)
        self.transport = await self.loop.start_tls(  # aioimaplib writes through self.transport
            self.transport,
            self,
            context,
            server_hostname=server_hostname,
            ssl_handshake_timeout=handshake_timeout,
        )
        self.starttls_tag = None
        self._plain_text_over = False

    def _handle_line(self, line: bytes, current_cmd: Any) -> Any:
        # An aioimaplib gap (see above): the one place that sees every line in order.
        if self._plain_text_over and line:
            self.give_up(ErrorKind.TLS, _INJECTED)
            return None
        handled = super()._handle_line(line, current_cmd)
        if self.starttls_tag is not None and line.startswith(self.starttls_tag + b" OK"):
            self._plain_text_over = True
        return handled

    async def authenticate(
        self, mechanism: SaslMechanism, initial: bytes, *, sasl_ir: bool
    ) -> tuple[Any, bytes | None]:
        """AUTHENTICATE with one initial response; the tagged response and the server's error
        challenge (None when it sent none)."""
        name = mechanism.value.upper()
        args = (name, initial.decode("ascii")) if sasl_ir else (name,)
        command = aioimaplib.Command("AUTHENTICATE", self.new_tag(), *args, loop=self.loop)
        exchange = _SaslExchange(
            command, None if sasl_ir else initial, sasl.abort_response(mechanism)
        )
        self.sasl = exchange
        try:
            async with self.state_condition:
                response = await self.execute(command)
                if response.result == "OK":
                    self.state = aioimaplib.AUTH
                self.state_condition.notify_all()
        finally:
            self.sasl = None
        return response, exchange.challenge

    def _continuation(self, line: bytes) -> None:
        # An aioimaplib gap (see above): it would only append the line to the response.
        exchange = self.sasl
        if exchange is None or self.pending_sync_command is not exchange.command:
            super()._continuation(line)
            return
        if exchange.initial is not None:
            answer, exchange.initial = exchange.initial, None
        elif exchange.challenge is None:
            exchange.challenge = line[1:].strip()
            answer = exchange.abort
        else:
            answer = b"*"  # a second challenge: cancel (RFC 9051 6.2.2), the server says BAD
        self.transport.write(answer + aioimaplib.CRLF)

    def _untagged_response(self, line: bytes) -> Any:
        # An aioimaplib gap (see above): the one place that sees every untagged line.
        if announces_new_mail(line):
            if not self.new_mail or self.new_mail_at is None:
                self.new_mail_at = self.loop.time()
            self.new_mail = True
        return super()._untagged_response(line)


class _Client(aioimaplib.IMAP4):  # type: ignore[misc]  # aioimaplib is untyped
    """aioimaplib's client speaking through `_Protocol` (TLS when given an SSL context)."""

    protocol: _Protocol
    connecting: asyncio.Task[Any]  # TCP connect and TLS handshake

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
        self.connecting = running.create_task(
            running.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )
        self._client_task = self.connecting  # an aioimaplib gap (see above)


# --- the connection -------------------------------------------------------------------------------


class Connection:
    """One IMAP connection: every call bounded, raced against the failure future, translated."""

    def __init__(self, target: ImapTarget, client: _Client, redact: Redactor) -> None:
        self._target = target
        self._client = client
        self._protocol = client.protocol
        self._redact = redact
        self._log = MaskedLog(redact)
        self._closed = False
        self._idling: asyncio.Future[Any] | None = None
        # How login() signed in ("LOGIN", "AUTHENTICATE XOAUTH2", ...) and the server's answer.
        self.signed_in: tuple[str, str] | None = None

    @classmethod
    async def open(cls, target: ImapTarget) -> Connection:
        redact = redactor_for(target)
        context = _tls_context(target, redact) if target.tls is not TlsMode.NONE else None
        # The library's own timeouts are backstops only: ours fire first and say what timed out.
        backstop = max(target.connect_timeout, target.command_timeout) + 5.0
        conn = cls(
            target,
            _Client(
                host=target.host,
                port=target.port,
                timeout=backstop,
                ssl_context=context if target.tls is TlsMode.IMPLICIT else None,
            ),
            redact,
        )
        try:
            await conn._greeting(context if target.tls is TlsMode.STARTTLS else None)
        except BaseException:
            await conn.close(logout=False)
            raise
        return conn

    async def _greeting(self, starttls: ssl.SSLContext | None) -> None:
        """The greeting and CAPABILITY; with `starttls`, then the upgrade and CAPABILITY again."""
        target, client, protocol = self._target, self._client, self._protocol
        hello: asyncio.Future[Any] = asyncio.ensure_future(client.wait_hello_from_server())
        phase = "greeting"
        try:
            async with asyncio.timeout(target.connect_timeout):
                if target.tls is not TlsMode.IMPLICIT:
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
                if starttls is not None:
                    phase = "STARTTLS"
                    await self._starttls(starttls)
                    phase = "CAPABILITY"
                    # What the server advertised in plain text is not trusted (RFC 9051 6.2.1).
                    capability = asyncio.ensure_future(protocol.capability())
                    try:
                        await self._race("CAPABILITY", capability)
                    finally:
                        _discard(capability)
        except TimeoutError:
            if phase == "STARTTLS":
                raise self._error(
                    ErrorKind.TLS,
                    f"STARTTLS: not done within {target.connect_timeout:g} s of connecting "
                    "(no answer, or no TLS handshake)",
                ) from None
            if phase == "CAPABILITY":
                raise self._error(
                    ErrorKind.TIMEOUT,
                    f"CAPABILITY after STARTTLS: no answer within {target.connect_timeout:g} s "
                    "of connecting",
                ) from None
            if not client.connecting.done():
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

    async def _starttls(self, context: ssl.SSLContext) -> None:
        """STARTTLS and the TLS handshake; any failure is a `tls` error."""
        protocol = self._protocol
        if not self.has_capability("STARTTLS"):
            raise self._error(ErrorKind.TLS, "the server does not offer STARTTLS (tls: starttls)")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        protocol.starttls_tag = command.tag.encode()
        sent = asyncio.ensure_future(protocol.execute(command))
        try:
            response = await self._race("STARTTLS", sent)
            if response.result != "OK":
                raise self._error(
                    ErrorKind.TLS, f"STARTTLS refused: {response.result} {_text(response)}"
                )
            upgrade = asyncio.ensure_future(
                protocol.upgrade(context, self._target.host, self._target.connect_timeout)
            )
            try:
                await self._race("STARTTLS", upgrade)
            finally:
                _discard(upgrade)
        except ImapError as exc:
            if exc.kind is ErrorKind.TLS:
                raise
            # A hang-up mid-handshake, or STARTTLS refused by aioimaplib after a PREAUTH greeting:
            # still the upgrade that failed, and the connection is not to be used in plain text.
            raise self._error(ErrorKind.TLS, exc.message) from None
        finally:
            _discard(sent)

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
        if not value:
            self._protocol.new_mail_at = None

    @property
    def pushed_at(self) -> float | None:
        """The event-loop time (`loop.time()`) the pending new-mail announcement was read."""
        return self._protocol.new_mail_at if self._protocol.new_mail else None

    def has_capability(self, name: str) -> bool:
        return bool(self._client.has_capability(name))

    @property
    def gmail_extensions(self) -> bool:
        """The server advertises X-GM-EXT-1 (capability names are case-insensitive)."""
        return any(name.upper() == GMAIL_EXTENSIONS for name in self._protocol.capabilities)

    @property
    def failed(self) -> bool:
        """The connection is gone (closed, lost, or an unparseable response): no command will do."""
        return self._protocol.failure.done()

    async def login(self) -> None:
        target = self._target
        if target.oauth is not None:
            response = await self._authenticate(target.oauth)
        else:
            response = await self._login_with_password()
        # Servers may advertise more (IDLE, UIDPLUS) once logged in. aioimaplib mangles a
        # capability list in the tagged OK ("[CAPABILITY ... IDLE]"): ask unless one came untagged.
        if not lists_capabilities(response.lines[:-1]):
            await self._call("CAPABILITY", self._protocol.capability())

    async def _login_with_password(self) -> Any:
        target = self._target
        if self.has_capability("LOGINDISABLED"):
            # RFC 9051 6.2.3: the server refuses LOGIN; sending the password anyway gains nothing.
            hint = " (use tls: starttls or implicit)" if target.tls is TlsMode.NONE else ""
            raise self._error(ErrorKind.AUTH, f"the server advertises LOGINDISABLED{hint}")
        response = await self._call(
            "LOGIN", self._client.login(quote(target.username), target.password)
        )
        if response.result == "NO":
            raise self._error(ErrorKind.AUTH, f"LOGIN refused: {_text(response)}")
        self._check("LOGIN", response)
        self.signed_in = ("LOGIN", f"{response.result} {_text(response)}")
        return response

    async def _authenticate(self, oauth: OAuthSignIn) -> Any:
        """AUTHENTICATE XOAUTH2 / OAUTHBEARER with a token from `oauth.tokens`."""
        offered = [
            name[5:] for name in self._protocol.capabilities if name.upper().startswith("AUTH=")
        ]
        mechanism = sasl.choose_mechanism(oauth.mechanism, offered)
        if not isinstance(mechanism, SaslMechanism):
            raise self._error(
                ErrorKind.AUTH,
                f"no usable OAuth AUTHENTICATE mechanism: {mechanism} "
                f"(offered: {' '.join(sorted(offered)).upper() or 'none'})",
            )
        token = await self._access_token(oauth)
        initial = sasl.initial_response(mechanism, oauth.username, token.value)
        self._redact.update((*self._redact.secrets, initial.decode("ascii")))
        what = f"AUTHENTICATE {mechanism.value.upper()}"
        response, challenge = await self._call(
            what,
            self._protocol.authenticate(mechanism, initial, sasl_ir=self.has_capability("SASL-IR")),
        )
        if response.result == "OK":
            self.signed_in = (what, f"OK {_text(response)}")
            return response
        if challenge is not None or response.result == "NO":
            oauth.tokens.refused(token)
        said = (
            f" (server error: {printable(sasl.decode_error_challenge(challenge).encode())})"
            if challenge is not None
            else ""
        )
        raise self._error(
            ErrorKind.AUTH,
            f"{what} as {oauth.username} refused: {response.result} {_text(response)}{said}",
        )

    async def _access_token(self, oauth: OAuthSignIn) -> AccessToken:
        """The token to send, masked from now on in every error and log line of this connection."""
        try:
            async with asyncio.timeout(self._target.command_timeout):
                token = await oauth.tokens.access_token()
        except TokenError as exc:
            raise self._error(ErrorKind.TOKEN, f"no OAuth access token: {exc}") from None
        except TimeoutError:
            raise self._error(
                ErrorKind.TOKEN,
                f"no OAuth access token within {self._target.command_timeout:g} s "
                f"(credential {oauth.tokens.credential!r})",
            ) from None
        self._redact.update((*self._redact.secrets, *sasl.bearer_forms(token.value)))
        return token

    async def select(self, folder: str) -> int:
        """SELECT `folder`; returns its UIDVALIDITY (0 when the server sends none)."""
        response = await self._call("SELECT", self._client.select(mailbox_arg(folder)))
        self._check(f"SELECT {folder!r}", response)
        uidvalidity = parse_uidvalidity(response.lines)
        if uidvalidity is None:
            self._log.warning("%s/%s: SELECT sent no UIDVALIDITY", self._target.mailbox, folder)
            return 0
        return uidvalidity

    async def list_folders(self) -> list[ListedFolder]:
        args = ['""', '"*"']
        if self.has_capability("SPECIAL-USE") and self.has_capability("LIST-EXTENDED"):
            args += ["RETURN", "(SPECIAL-USE)"]
        response = await self._call("LIST", self._protocol.simple_command("LIST", *args))
        self._check("LIST", response)
        return parse_list_response(response.lines[:-1], log=self._log)

    async def search_after(self, last_uid: int) -> list[int]:
        """UIDs above `last_uid`, ascending."""
        response = await self._call(
            "UID SEARCH", self._client.uid_search("UID", f"{last_uid + 1}:*", charset=None)
        )
        self._check("UID SEARCH", response)
        try:
            found = parse_search(response.lines[:-1])
        except ValueError as exc:
            raise self._error(ErrorKind.PROTOCOL, f"UID SEARCH: {exc}") from None
        # `n:*` always matches the highest UID, even one below n.
        return sorted({uid for uid in found if uid > last_uid})

    async def inbox_category(self, uid: int) -> InboxCategory | None:
        """The Gmail inbox tab of message `uid` of the selected folder (X-GM-EXT-1 servers only);
        None when no tab matches. NO/BAD and timeouts raise `ImapError` like any command."""
        for category in _CATEGORY_ORDER:
            # Gmail's search syntax in one quoted string, ANDed with the UID: the answer is the
            # UID when the message is in that tab, an empty SEARCH otherwise.
            query = quote(f"category:{category.value}")
            response = await self._call(
                "UID SEARCH X-GM-RAW",
                self._client.uid_search("UID", str(uid), "X-GM-RAW", query, charset=None),
            )
            self._check("UID SEARCH X-GM-RAW", response)
            try:
                found = parse_search(response.lines[:-1])
            except ValueError as exc:
                raise self._error(ErrorKind.PROTOCOL, f"UID SEARCH X-GM-RAW: {exc}") from None
            if uid in found:
                return category
        return None

    async def fetch(self, uid: int, max_bytes: int) -> tuple[bytes, int] | None:
        """The first `max_bytes` of message `uid` and its full size; None if it is gone."""
        response = await self._call(
            "UID FETCH",
            self._client.uid("fetch", str(uid), f"(UID RFC822.SIZE BODY.PEEK[]<0.{max_bytes}>)"),
        )
        self._check("UID FETCH", response)
        return parse_fetch(response.lines[:-1], uid)

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

    async def append(self, folder: str, message: bytes) -> str | None:
        """APPEND `message` to `folder`; None when the server took it, else its refusal (NO or
        BAD and the text). A timeout or a lost connection raises `ImapError`."""
        response = await self._call(
            "APPEND", self._client.append(message, mailbox=mailbox_arg(folder), flags="(\\Seen)")
        )
        if response.result == "OK":
            return None
        return self._redact(f"{response.result} {_text(response)}")

    async def delete_if_alone(self, uid: int) -> bool:
        """Flag `uid` \\Deleted and expunge it, touching no other message: UID EXPUNGE with
        UIDPLUS; without it a plain EXPUNGE only when `uid` is the one \\Deleted message of the
        folder (someone else's \\Deleted messages are theirs to expunge). False when it was left
        flagged \\Deleted in the folder."""
        response = await self._call(
            "UID STORE", self._client.uid("store", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
        )
        self._check("UID STORE", response)
        if self.has_capability("UIDPLUS"):
            response = await self._call("UID EXPUNGE", self._client.uid("expunge", str(uid)))
            self._check("UID EXPUNGE", response)
            return True
        response = await self._call("UID SEARCH", self._client.uid_search("DELETED", charset=None))
        self._check("UID SEARCH", response)
        try:
            flagged = set(parse_search(response.lines[:-1]))
        except ValueError as exc:
            raise self._error(ErrorKind.PROTOCOL, f"UID SEARCH: {exc}") from None
        if flagged != {uid}:
            return False
        # A message flagged between the search and here would go too: a window of one round trip.
        self._check("EXPUNGE", await self._call("EXPUNGE", self._client.expunge()))
        return True

    async def noop(self) -> None:
        self._check("NOOP", await self._call("NOOP", self._client.noop()))

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`, but raise as soon as the connection fails."""
        await asyncio.wait({self._protocol.failure}, timeout=seconds)
        self._raise_failure()

    async def idle(self, at_most: float, *, on_idle: Callable[[], None] | None = None) -> bool:
        """IDLE until the server announces new mail or `at_most` seconds pass, then DONE; True
        when the server announced new mail (a push). `on_idle` is called once the server
        acknowledged IDLE (its `+`): from then on a change of the folder is pushed.

        IDLE is started here rather than with aioimaplib's `idle_start`, whose inner task may
        send IDLE after a cancellation and then block the LOGOUT that follows.
        """
        protocol = self._protocol
        queue: asyncio.Queue[Any] = protocol.idle_queue
        while not queue.empty():  # pushes left over from an earlier IDLE
            queue.get_nowait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + at_most
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
        if on_idle is not None:
            on_idle()
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
        pushed = protocol.new_mail
        protocol.idle_done()
        self._check("IDLE", await self._call("DONE", idling))
        return pushed

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
                    self._log.debug("%s: LOGOUT failed: %s", self._target.mailbox, exc)
                finally:
                    if bye is not None:
                        _discard(bye)
        finally:
            if protocol.transport is not None:
                protocol.transport.abort()
            _discard(client.connecting)
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
            # Abort texts may quote the command sent; _error masks the secrets.
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
        return ImapError(kind, self._redact(message))


def _tls_context(target: ImapTarget, redact: Redactor) -> ssl.SSLContext:
    verify = target.tls_verify
    if (context := cached_client_context(target.ca_file, verify=verify)) is not None:
        return context
    try:
        return load_client_context(target.ca_file, verify=verify)
    except (OSError, ssl.SSLError) as exc:
        raise ImapError(
            ErrorKind.TLS, redact(f"cannot load CA file {target.ca_file}: {_describe(exc)}")
        ) from None


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
    return text[:TEXT_MAX]


def _text(response: Any) -> str:
    """The text of a tagged reply (aioimaplib puts it last)."""
    return printable(bytes(response.lines[-1])) if response.lines else ""
