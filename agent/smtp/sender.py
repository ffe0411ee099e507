"""SMTP sender adapter: hand one probe to one route and report every server reply.

The only module that imports aiosmtplib. Each stage is driven explicitly with aiosmtplib's low-level
client (connect, EHLO, STARTTLS, EHLO again, AUTH, MAIL, RCPT per recipient, DATA, QUIT) so the
whole transcript is kept, banner included. A 4xx/5xx reply ends the transaction and is reported in
the transcript, not as an error; anything that leaves no server verdict (connect, TLS, timeout,
protocol, closed connection, and AUTH refusals) becomes a `ProbeError`. One deadline
(`total_timeout`) bounds the whole transaction; per-stage timeouts are backstops.

Choices worth knowing:

* AUTH refused with a 5xx (535 bad credentials, 534/538 policy, 504 mechanism) is an ERROR of kind
  `auth`: it says nothing about the route's treatment of mail, it means our credentials or
  settings are wrong. The reply is still in the transcript. A 4xx at AUTH is DEFERRED, like any 4xx.
* aiosmtplib's `data()` hides the 354 and raises the same exception for a bad 354 and a bad
  end-of-data reply, so DATA is sent with `execute_command` and the body with the protocol's
  `write` and `read_response`: both replies are recorded (`Stage.DATA`, `Stage.END_OF_DATA`).
* OAuth 2.0 (`SmtpTarget.oauth`): AUTH XOAUTH2 or OAUTHBEARER (RFC 7628), the configured one or
  else the first the server offers of OAUTHBEARER, XOAUTH2. aiosmtplib has XOAUTH2 only, always
  with the initial response on the AUTH line, and Postfix cuts lines past 2048 bytes (Microsoft's
  tokens are 1.5-2.5 KB): the exchange is driven here with `execute_command`, and an AUTH line
  that would pass `_AUTH_LINE_LIMIT` is sent bare, the initial response after the server's 334.
  A refused token gets a 334 whose text is a base64 JSON error (RFC 7628 3.2.2): answered with an
  empty line (XOAUTH2) or ^A (OAUTHBEARER) for the final 5xx; the error is kind `auth` and quotes
  the decoded JSON, and the token source hears `refused()`. No token from the token source is kind
  `token` at stage `auth`, and nothing is sent. The token is masked in every reported text.
* When the TLS handshake after a 220 to STARTTLS fails, aiosmtplib does not return that 220, so
  the transcript lacks it; the error says stage `starttls`. AUTH's 334 challenges are not recorded.
* Credentials are never sent over an unencrypted connection unless the route says `tls: none`: in
  `opportunistic` mode without STARTTLS that is an error of kind `tls` at stage `auth`.
* A plain client on an implicit-TLS port gets no greeting (the server waits for a ClientHello).
  After `_TLS_SNIFF_AFTER` seconds without a greeting, a second connection sends a TLS ClientHello;
  a TLS record in answer fails the probe with kind `tls`. The sniff uses its own connection so a
  server that greets slowly on purpose (greet pause) still gets an untouched session.
* A 4xx/5xx at EHLO ends the transaction (no HELO fallback: STARTTLS and AUTH need ESMTP).
* Every text that may hold server bytes (reply texts, the banner, error messages quoting a reply,
  an exception or the EHLO keywords) goes through `_text`: aiosmtplib keeps bytes that are not
  UTF-8 as lone surrogates, which no UTF-8 writer accepts, so they become `\\xNN` escapes here,
  once (`agent.server_text`), and only valid text reaches the ledger, logs and pages.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtplib.errors import (
    SMTPException,
    SMTPReadTimeoutError,
    SMTPResponseException,
    SMTPServerDisconnected,
)
from aiosmtplib.response import SMTPResponse

from agent import sasl
from agent.errors import AgentError, ErrorCategory
from agent.model import (
    ErrorKind,
    ProbeError,
    ReplyClass,
    SendResult,
    SmtpReply,
    Stage,
    TlsMode,
)
from agent.oauth import AccessToken, OAuthSignIn, SaslMechanism, TokenError, TokenSource
from agent.secrets import Redactor, credential_forms
from agent.server_text import valid_text
from agent.smtp.replies import parse_enhanced_code
from agent.tls_contexts import cached_client_context, load_client_context
from agent.tls_sniff import answers_tls

__all__ = [
    "SignInResult",
    "SmtpTarget",
    "send_probe",
    "sign_in",
]

_PLAIN_ADDRESS = re.compile(r"[!-;=?-~]*")  # printable ASCII but "<" and ">"; empty: null sender
_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")
_TLS_SNIFF_AFTER = 2.0  # seconds without a greeting before checking for implicit TLS
_TLS_SNIFF_TIMEOUT = 3.0
_QUIT_GRACE = 2.0  # QUIT is a courtesy: never wait long for it
_IMPLICIT_TLS_PORT = 465
# Longest AUTH line (CRLF included) sent with its initial response: Postfix's line_length_limit
# (2048, measured: 2047 bytes pass, 2051 are cut); RFC 4954 allows 12288, so longer ones wait
# for the 334.
_AUTH_LINE_LIMIT = 2048


@dataclass(frozen=True, kw_only=True, slots=True)
class SmtpTarget:
    """Where and how to submit a probe: one configured SMTP route.

    Every reported text (error messages, reply texts kept in the transcript) has the password,
    in the forms AUTH sends it, and each of `secrets` masked.
    """

    route: str
    host: str
    port: int
    tls: TlsMode
    tls_verify: bool
    ca_file: Path | None = None  # verify against this CA bundle instead of the system's
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    oauth: OAuthSignIn | None = None  # sign in with an OAuth 2.0 token instead of a password
    # Further secret values of the route's configuration (tokens, client secrets) to mask.
    secrets: tuple[str, ...] = field(default=(), repr=False)
    ehlo_name: str
    connect_timeout: float  # TCP connect (DNS included)
    stage_timeout: float  # each reply, and each TLS handshake
    total_timeout: float  # the whole transaction

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        for name in ("connect_timeout", "stage_timeout", "total_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        if self.oauth is not None and self.password is not None:
            raise ValueError("oauth and password are mutually exclusive")


async def send_probe(
    target: SmtpTarget,
    *,
    envelope_from: str,
    recipients: Sequence[str],
    message: bytes,
) -> SendResult:
    """Submit `message` through `target`; never raises for network or server trouble.

    Raises ValueError, before any I/O, for arguments no server could be sent: no recipients, or
    an address with whitespace, angle brackets or non-ASCII characters (no SMTPUTF8 here).
    """
    recipients = tuple(recipients)
    if not recipients:
        raise ValueError("at least one recipient is needed")
    for address in (envelope_from, *recipients):
        if not _PLAIN_ADDRESS.fullmatch(address):
            raise ValueError(f"address {address!r} is not plain ASCII without spaces or <>")
    return await _execute(_Transaction(target), envelope_from, recipients, message)


@dataclass(frozen=True, slots=True)
class SignInResult:
    """What `sign_in` proved: the replies up to AUTH, the OAuth mechanism used, or the error."""

    transcript: tuple[SmtpReply, ...]
    mechanism: str | None  # "XOAUTH2", "OAUTHBEARER", "PLAIN", "LOGIN"; None: no AUTH sent
    error: ProbeError | None


async def sign_in(target: SmtpTarget) -> SignInResult:
    """Connect, EHLO, STARTTLS, EHLO, AUTH and QUIT: whether the route can sign in, without
    sending anything (`oauth test`); never raises for network or server trouble."""
    transaction = _Transaction(target, sign_in_only=True)
    result = await _execute(transaction, "", (), b"")
    return SignInResult(result.transcript, transaction.mechanism, result.error)


async def _execute(
    transaction: _Transaction,
    envelope_from: str,
    recipients: Sequence[str],
    message: bytes,
) -> SendResult:
    target = transaction.target
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    deadline = loop.time() + target.total_timeout
    error: ProbeError | None = None
    try:
        try:
            async with asyncio.timeout_at(deadline):
                await transaction.run(envelope_from, recipients, message)
        except _Failed as failed:
            error = failed.error
        except TimeoutError:
            if transaction.accepted_at is None:
                error = ProbeError(
                    transaction.stage,
                    ErrorKind.TIMEOUT,
                    f"no verdict within total_timeout {target.total_timeout:g}s",
                )
        if error is None or error.kind in (ErrorKind.AUTH, ErrorKind.TLS, ErrorKind.TOKEN):
            await transaction.quit(min(deadline, loop.time() + _QUIT_GRACE))
    finally:
        transaction.close()
    return SendResult(
        transcript=tuple(transaction.transcript),
        accepted=transaction.accepted_at is not None,
        accepted_at=transaction.accepted_at,
        duration_seconds=time.monotonic() - started,
        error=error,
        tls_version=transaction.tls_version,
        tls_cert_not_after=transaction.cert_not_after,
    )


class _Failed(AgentError):
    """Ends the transaction without a server verdict."""

    category = ErrorCategory.PEER

    def __init__(self, error: ProbeError) -> None:
        super().__init__(error.message)
        self.error = error


class _Transaction:
    """One SMTP session; `stage` always names the stage in progress, for errors and timeouts."""

    def __init__(self, target: SmtpTarget, *, sign_in_only: bool = False) -> None:
        self.target = target
        self.sign_in_only = sign_in_only
        self.mechanism: str | None = None  # the AUTH mechanism sent
        self.stage = Stage.CONNECT
        self.transcript: list[SmtpReply] = []
        self.accepted_at: float | None = None
        self.tls_version: str | None = None
        self.cert_not_after: float | None = None
        self._redact = Redactor(
            (*credential_forms(target.username, target.password), *target.secrets)
        )
        self._tls_context: ssl.SSLContext | None = None
        self._tls_active = False
        self._sock: socket.socket | None = None
        # Once aiosmtplib has the socket, its transport owns the file descriptor, even after
        # aiosmtplib forgot the transport (QUIT, or a TLS shutdown still under way).
        self._sock_handed_over = False
        # Never given the credentials or start_tls: every stage is driven here, not by connect().
        self._smtp = aiosmtplib.SMTP(
            hostname=target.host,
            local_hostname=target.ehlo_name,
            timeout=target.stage_timeout,
            use_tls=target.tls is TlsMode.IMPLICIT,
            start_tls=False,
        )

    async def run(self, envelope_from: str, recipients: Sequence[str], message: bytes) -> None:
        """Returns on acceptance or on a 4xx/5xx verdict; raises _Failed when there is neither."""
        try:
            await self._run(envelope_from, recipients, message)
        except _Failed:
            raise
        except Exception as exc:
            error = self._translate(exc)
            if error is None:
                raise
            raise _Failed(error) from None

    async def _run(self, envelope_from: str, recipients: Sequence[str], message: bytes) -> None:
        target, smtp, timeout = self.target, self._smtp, self.target.stage_timeout
        if target.tls is not TlsMode.NONE:
            self._tls_context = await self._load_tls_context()
        self._sock = await self._open_socket()
        if not self._accept(Stage.BANNER, await self._connect(self._sock), 220):
            return
        if target.tls is TlsMode.IMPLICIT:
            self._note_tls()

        self.stage = Stage.EHLO
        if not self._accept(Stage.EHLO, await self._reply_of(smtp.ehlo(timeout=timeout)), 250):
            return
        offered = smtp.supports_extension("starttls")
        if target.tls is TlsMode.STARTTLS or (target.tls is TlsMode.OPPORTUNISTIC and offered):
            self.stage = Stage.STARTTLS
            if not offered:
                raise self._fail(
                    ErrorKind.TLS, "the server does not offer STARTTLS (tls: starttls)"
                )
            reply = await self._reply_of(
                smtp.starttls(
                    server_hostname=target.host, tls_context=self._tls_context, timeout=timeout
                )
            )
            if not self._accept(Stage.STARTTLS, reply, 220):
                return
            self._note_tls()
            self.stage = Stage.EHLO
            if not self._accept(Stage.EHLO, await self._reply_of(smtp.ehlo(timeout=timeout)), 250):
                return

        if target.oauth is not None:
            self.stage = Stage.AUTH
            if not await self._authenticate_oauth(target.oauth):
                return
        elif target.username is not None:
            self.stage = Stage.AUTH
            if not await self._authenticate(target.username, target.password or ""):
                return
        if self.sign_in_only:
            return

        self.stage = Stage.MAIL
        reply = await self._reply_of(smtp.mail(envelope_from, timeout=timeout))
        if not self._accept(Stage.MAIL, reply, 250):
            return
        self.stage = Stage.RCPT
        accepted = 0
        for recipient in recipients:
            reply = await self._reply_of(smtp.rcpt(recipient, timeout=timeout))
            accepted += self._accept(Stage.RCPT, reply, 250, 251)
        if not accepted:  # the last RCPT reply's class decides
            return

        self.stage = Stage.DATA
        reply = await self._reply_of(smtp.execute_command(b"DATA", timeout=timeout))
        if not self._accept(Stage.DATA, reply, 354):
            return
        self.stage = Stage.END_OF_DATA
        protocol = smtp.protocol
        if protocol is None:
            raise SMTPServerDisconnected("Connection lost")
        protocol.write(_data_payload(message))
        if self._accept(Stage.END_OF_DATA, await protocol.read_response(timeout=timeout), 250):
            self.accepted_at = time.time()

    async def quit(self, deadline: float) -> None:
        """Say goodbye if the connection is still usable; a failure here changes nothing."""
        if not self._smtp.is_connected or deadline <= asyncio.get_running_loop().time():
            return
        self.stage = Stage.QUIT
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._reply_of(self._smtp.quit(timeout=None))
        except Exception:
            return
        self._record(Stage.QUIT, response)

    def close(self) -> None:
        self._smtp.close()
        if self._sock is not None and not self._sock_handed_over:
            # Closing a handed-over socket would free its descriptor under a live transport:
            # the next connection to get that number fails ("used by transport").
            self._sock.close()

    # -- stages ---------------------------------------------------------------------------

    async def _load_tls_context(self) -> ssl.SSLContext:
        ca_file, verify = self.target.ca_file, self.target.tls_verify
        if (context := cached_client_context(ca_file, verify=verify)) is not None:
            return context
        try:
            return await asyncio.to_thread(load_client_context, ca_file, verify=verify)
        except (OSError, ssl.SSLError) as exc:
            raise self._fail(ErrorKind.TLS, f"cannot load CA certificates: {exc}") from None

    async def _open_socket(self) -> socket.socket:
        """TCP connect, bounded by connect_timeout, so CONNECT and BANNER failures stay apart."""
        loop = asyncio.get_running_loop()
        target = self.target
        try:
            async with asyncio.timeout(target.connect_timeout):
                infos = _literal_address(target.host, target.port) or await loop.getaddrinfo(
                    target.host, target.port, type=socket.SOCK_STREAM
                )
                failure: OSError = OSError(f"no address for {target.host}")
                for family, kind, proto, _, address in infos:
                    sock = socket.socket(family, kind, proto)
                    try:
                        sock.setblocking(False)
                        await loop.sock_connect(sock, address)
                    except OSError as exc:
                        sock.close()
                        failure = exc
                        continue
                    except BaseException:
                        sock.close()
                        raise
                    return sock
                raise failure
        except TimeoutError:
            raise self._fail(
                ErrorKind.TIMEOUT,
                f"TCP connect to port {target.port} not done within {target.connect_timeout:g}s",
            ) from None

    async def _connect(self, sock: socket.socket) -> SMTPResponse:
        """Hand the socket to aiosmtplib: TLS handshake when implicit, then read the greeting."""
        implicit = self.target.tls is TlsMode.IMPLICIT
        self.stage = Stage.CONNECT if implicit else Stage.BANNER
        peer = sock.getpeername()
        self._sock_handed_over = True
        greeting = asyncio.ensure_future(
            self._reply_of(
                self._smtp.connect(
                    sock=sock, tls_context=self._tls_context, timeout=self.target.stage_timeout
                )
            )
        )
        try:
            if not implicit and self.target.stage_timeout > _TLS_SNIFF_AFTER:
                done, _ = await asyncio.wait({greeting}, timeout=_TLS_SNIFF_AFTER)
                if not done:
                    await self._sniff_implicit_tls(greeting, peer)
            response = await greeting
        except _Failed:
            raise
        except Exception as exc:
            if implicit and _is_greeting_failure(exc):
                self.stage = Stage.BANNER
            raise
        finally:
            if not greeting.done():
                greeting.cancel()
                self._smtp.close()  # now, not when the cancelled task next runs: no QUIT on it
            elif not greeting.cancelled():
                greeting.exception()  # retrieved: it was re-raised above or is irrelevant
        self.stage = Stage.BANNER
        return response

    async def _sniff_implicit_tls(
        self, greeting: asyncio.Future[SMTPResponse], peer: tuple[Any, ...]
    ) -> None:
        """While still waiting for the greeting, ask a second connection whether TLS is spoken."""
        limit = min(_TLS_SNIFF_TIMEOUT, self.target.stage_timeout)

        async def peer_answers_tls() -> bool:
            try:
                async with asyncio.timeout(limit):
                    return await answers_tls(peer[0], peer[1], server_hostname=self.target.host)
            except TimeoutError:
                return False

        sniff = asyncio.ensure_future(peer_answers_tls())
        both: set[asyncio.Future[Any]] = {greeting, sniff}
        try:
            done, _ = await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sniff.cancel()
        if greeting not in done and sniff.result():
            raise self._fail(
                ErrorKind.TLS,
                f"no SMTP greeting after {_TLS_SNIFF_AFTER:g}s and the port answers a TLS "
                "ClientHello: it expects implicit TLS (tls: implicit)",
            )

    def _require_tls(self) -> None:
        if not self._tls_active and self.target.tls is not TlsMode.NONE:
            raise self._fail(
                ErrorKind.TLS,
                "refusing to send credentials over an unencrypted connection "
                "(the server did not offer STARTTLS)",
            )

    async def _authenticate(self, username: str, password: str) -> bool:
        self._require_tls()
        smtp, timeout = self._smtp, self.target.stage_timeout
        methods = smtp.server_auth_methods
        # One mechanism only: trying each in turn would multiply failed logins (and lockouts).
        if "plain" in methods:
            self.mechanism = "PLAIN"
            call = smtp.auth_plain(username, password, timeout=timeout)
        elif "login" in methods:
            self.mechanism = "LOGIN"
            call = smtp.auth_login(username, password, timeout=timeout)
        else:
            offered = " ".join(methods).upper() or "none"
            raise self._fail(
                ErrorKind.AUTH,
                f"no usable AUTH mechanism (we use PLAIN, LOGIN; offered: {offered})",
            )
        reply = self._record(Stage.AUTH, await self._reply_of(call))
        if reply.code == 235:
            return True
        if reply.reply_class is ReplyClass.PERMANENT:
            raise self._fail(ErrorKind.AUTH, f"authentication refused: {reply.code} {reply.text}")
        if reply.reply_class is ReplyClass.TRANSIENT:
            return False
        raise self._fail(ErrorKind.PROTOCOL, f"unexpected reply {reply.code} to AUTH")

    async def _authenticate_oauth(self, oauth: OAuthSignIn) -> bool:
        """AUTH XOAUTH2 / OAUTHBEARER; True on 235, False on a 4xx, raises _Failed otherwise."""
        self._require_tls()
        smtp, timeout = self._smtp, self.target.stage_timeout
        mechanism = self._oauth_mechanism(oauth.mechanism, smtp.server_auth_methods)
        token = await self._access_token(oauth.tokens)
        initial = sasl.initial_response(mechanism, oauth.username, token.value)
        self._redact.update((*self._redact.secrets, initial.decode("ascii")))
        verb = mechanism.value.upper().encode("ascii")
        self.mechanism = mechanism.value.upper()
        if len(b"AUTH %b %b\r\n" % (verb, initial)) <= _AUTH_LINE_LIMIT:
            response = await self._reply_of(
                smtp.execute_command(b"AUTH", verb, initial, timeout=timeout)
            )
        else:
            response = await self._reply_of(smtp.execute_command(b"AUTH", verb, timeout=timeout))
            if response.code == 334:
                response = await self._reply_of(smtp.execute_command(initial, timeout=timeout))
        server_error: str | None = None
        if response.code == 334:  # the error challenge: answer it for the final reply
            server_error = self._text(sasl.decode_error_challenge(response.message))
            answer = sasl.abort_response(mechanism)
            response = await self._reply_of(smtp.execute_command(answer, timeout=timeout))
        reply = self._record(Stage.AUTH, response)
        if reply.code == 235:
            return True
        if server_error is not None or reply.code == 535:
            oauth.tokens.refused(token)
        said = f" (server error: {server_error})" if server_error else ""
        if reply.reply_class is ReplyClass.PERMANENT:
            raise self._fail(
                ErrorKind.AUTH,
                f"OAuth sign-in refused ({mechanism.value.upper()} as {oauth.username}): "
                f"{reply.code} {reply.text}{said}",
            )
        if reply.reply_class is ReplyClass.TRANSIENT:
            return False
        raise self._fail(
            ErrorKind.PROTOCOL, f"unexpected reply {reply.code} to AUTH {mechanism.value.upper()}"
        )

    def _oauth_mechanism(
        self, configured: SaslMechanism | None, offered: Sequence[str]
    ) -> SaslMechanism:
        chosen = sasl.choose_mechanism(configured, offered)
        if isinstance(chosen, SaslMechanism):
            return chosen
        raise self._fail(
            ErrorKind.AUTH,
            f"no usable OAuth AUTH mechanism: {chosen} "
            f"(offered: {' '.join(offered).upper() or 'none'})",
        )

    async def _access_token(self, tokens: TokenSource) -> AccessToken:
        """The token to send, masked from now on in every text this transaction reports."""
        limit = self.target.stage_timeout
        try:
            async with asyncio.timeout(limit):
                token = await tokens.access_token()
        except TokenError as exc:
            raise self._fail(ErrorKind.TOKEN, f"no OAuth access token: {exc}") from None
        except TimeoutError:
            raise self._fail(
                ErrorKind.TOKEN,
                f"no OAuth access token within stage_timeout {limit:g}s "
                f"(credential {tokens.credential!r})",
            ) from None
        self._redact.update((*self._redact.secrets, *sasl.bearer_forms(token.value)))
        return token

    # -- helpers --------------------------------------------------------------------------

    async def _reply_of(self, call: Awaitable[SMTPResponse]) -> SMTPResponse:
        """The server's reply, whether aiosmtplib liked its code or raised over it."""
        try:
            return await call
        except SMTPResponseException as exc:
            if not 100 <= exc.code <= 599:  # aiosmtplib's -1: malformed or oversized reply
                raise
            return SMTPResponse(exc.code, exc.message)

    def _record(self, stage: Stage, response: SMTPResponse) -> SmtpReply:
        text = self._text(response.message)
        reply = SmtpReply(stage, response.code, parse_enhanced_code(text), text)
        self.transcript.append(reply)
        return reply

    def _accept(self, stage: Stage, response: SMTPResponse, *expected: int) -> bool:
        """Record a reply: True to go on, False when a 4xx/5xx verdict ends the transaction."""
        reply = self._record(stage, response)
        if reply.code in expected:
            return True
        if reply.reply_class in (ReplyClass.TRANSIENT, ReplyClass.PERMANENT):
            return False
        raise self._fail(ErrorKind.PROTOCOL, f"unexpected reply {reply.code} at {stage}")

    def _note_tls(self) -> None:
        self._tls_active = True
        transport = self._smtp.transport
        tls = transport.get_extra_info("ssl_object") if transport is not None else None
        if isinstance(tls, ssl.SSLObject | ssl.SSLSocket):
            self.tls_version = tls.version()
            self.cert_not_after = _cert_not_after(tls)

    def _fail(self, kind: ErrorKind, message: str) -> _Failed:
        return _Failed(ProbeError(self.stage, kind, self._text(message)))

    def _text(self, text: str) -> str:
        """Text that may hold what the server sent, as it may be kept: valid, secrets masked."""
        return self._redact(valid_text(text))

    def _translate(self, exc: Exception) -> ProbeError | None:
        """Map a library or OS exception to our error, or None for one we do not expect (a bug)."""
        stage, chain = self.stage, _chain(exc)
        kind: ErrorKind
        if verify := _first(chain, ssl.SSLCertVerificationError):
            kind, message = ErrorKind.TLS, f"certificate verification failed: {verify}"
        elif tls_error := _first(chain, ssl.SSLError):
            kind, message = ErrorKind.TLS, f"TLS handshake failed: {tls_error}"
            if stage is Stage.CONNECT:
                message += " (if the port speaks plain SMTP first, use tls: starttls)"
        elif _first(chain, TimeoutError) or (
            stage is Stage.CONNECT and _first(chain, ConnectionAbortedError)
        ):
            # asyncio reports an expired TLS handshake as ConnectionAbortedError.
            kind = ErrorKind.TIMEOUT
            message = f"no reply within stage_timeout {self.target.stage_timeout:g}s"
            if stage is Stage.BANNER and self.target.port == _IMPLICIT_TLS_PORT:
                message += f" (port {_IMPLICIT_TLS_PORT} usually expects tls: implicit)"
        elif stage is Stage.CONNECT and self._sock is None and _first(chain, OSError):
            kind, message = ErrorKind.CONNECT, f"cannot connect: {_first(chain, OSError)}"
        elif stage is Stage.CONNECT and _first(chain, ConnectionError):
            kind, message = ErrorKind.TLS, "connection closed during the TLS handshake"
        elif _first(chain, SMTPServerDisconnected, ConnectionError, EOFError):
            kind, message = ErrorKind.CLOSED, f"connection closed: {_describe(exc)}"
        elif _first(chain, SMTPException):
            kind, message = ErrorKind.PROTOCOL, f"protocol error: {_describe(exc)}"
        elif _first(chain, OSError):
            kind, message = ErrorKind.CLOSED, f"connection failed: {_describe(exc)}"
        else:
            return None
        return ProbeError(stage, kind, self._text(message))


_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]


def _literal_address(host: str, port: int) -> list[_AddrInfo] | None:
    """The address of a host given as an IP literal, without a resolver thread (~0.15 ms of CPU a
    probe); None for a name (resolved every time: its addresses may change) or a scoped IPv6."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 4:
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
    if "%" in host:
        return None  # the scope needs the resolver to become an interface index
    return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]


def _cert_not_after(tls: ssl.SSLObject | ssl.SSLSocket) -> float | None:
    """The peer certificate's notAfter, epoch seconds; None when it cannot be read."""
    cert = tls.getpeercert()  # empty unless the certificate was verified
    not_after = cert.get("notAfter") if cert else None
    if isinstance(not_after, str):
        return float(ssl.cert_time_to_seconds(not_after))
    der = tls.getpeercert(binary_form=True)
    if not der:
        return None
    try:  # an optional dependency: present wherever trustme is
        from cryptography import x509
    except ImportError:
        return None
    try:
        return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
    except ValueError:
        return None


def _data_payload(message: bytes) -> bytes:
    """The DATA body as sent: CRLF line endings, dot-stuffed, ending with the lone dot."""
    body = _LINE_ENDINGS.sub(b"\r\n", message)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return _LEADING_DOT.sub(b"..", body) + b".\r\n"


def _chain(exc: BaseException) -> tuple[BaseException, ...]:
    """The exception and its causes (aiosmtplib wraps OS and ssl errors with `from`)."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found and len(found) < 10:
        found.append(current)
        current = current.__cause__ or current.__context__
    return tuple(found)


def _describe(exc: BaseException) -> str:
    message = exc.message if isinstance(exc, SMTPException) else str(exc)
    return message or type(exc).__name__


def _first(chain: tuple[BaseException, ...], *types: type[BaseException]) -> BaseException | None:
    return next((exc for exc in chain if isinstance(exc, types)), None)


def _is_greeting_failure(exc: BaseException) -> bool:
    """Whether an implicit-TLS connect failed reading the greeting rather than in the handshake."""
    chain = _chain(exc)
    return bool(
        _first(chain, SMTPReadTimeoutError, SMTPServerDisconnected)
        or (isinstance(exc, SMTPResponseException) and not 100 <= exc.code <= 599)
    )
