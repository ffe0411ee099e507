"""The sandbox's SMTP side: submission with STARTTLS and over implicit TLS, AUTH, scenario rules.

Built on aiosmtpd. Both listeners require AUTH (PLAIN or LOGIN) before MAIL, and the STARTTLS one
requires STARTTLS before AUTH, as a provider's submission service does. The scenario rules
(`agent.sandbox.rules`) decide each reply from AUTH on; once a message is accepted, each
recipient's rule delivers it into a sandbox mailbox after a delay, drops it, or bounces it with
a DSN. Work still waiting for its delay is dropped when the sandbox stops: the mailboxes live in
memory and go with it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from agent.config import Sandbox, SandboxBounce, SandboxDeliver
from agent.model import Stage
from agent.sandbox.imap import ImapStore, local_address
from agent.sandbox.messages import Bounce, Delivery, build_dsn, stamp_delivery
from agent.sandbox.rules import Reply, reply_at, rule_for, unknown_recipient

__all__ = ["SmtpServer"]

log = logging.getLogger(__name__)

_IDENT: Final = "ESMTP deliverability-agent sandbox"
_AUTH_REQUIRED: Final = "530 5.7.0 Authentication required"
# aiosmtpd logs every command and connection at INFO; the agent's log is for the agent.
logging.getLogger("mail.log").setLevel(logging.WARNING)


def _login(session: Session) -> str | None:
    login = session.auth_data if session.authenticated else None
    return login if isinstance(login, str) else None


class _Session(Session):
    """aiosmtpd 1.4 sets its own deprecated `login_data` at every AUTH, logging a warning each
    time; this session keeps the value quietly (we read `auth_data`)."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _Smtp(SMTP):
    """aiosmtpd's protocol plus a rule check at DATA, which has no handler hook of its own."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._rules_handler = handler

    def _create_session(self) -> Session:
        return _Session(self.loop)

    async def smtp_DATA(self, arg: str) -> None:
        session, envelope = self.session, self.envelope
        if session is not None and envelope is not None and envelope.rcpt_tos:
            reply = self._rules_handler.reply(Stage.DATA, session, envelope.rcpt_tos)
            if reply is not None:
                await self.push(reply.line())
                return
        await super().smtp_DATA(arg)


class _Handler:
    """aiosmtpd handler hooks: AUTH, MAIL, RCPT and end of data, each asking the rules first."""

    def __init__(self, server: SmtpServer) -> None:
        self._server = server

    def reply(self, stage: Stage, session: Session, recipients: list[str]) -> Reply | None:
        rules = self._server.settings.rules
        return reply_at(rules, stage, login=_login(session), recipients=recipients)

    def authenticate(
        self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = data.login.decode("utf-8", "replace")
        expected = self._server.passwords.get(login)
        if expected is None or not hmac.compare_digest(expected, data.password):
            return AuthResult(success=False, handled=False)
        rule = reply_at(self._server.settings.rules, Stage.AUTH, login=login, recipients=())
        if rule is not None:
            return AuthResult(success=False, handled=False, message=rule.line())
        return AuthResult(success=True, auth_data=login)

    async def handle_MAIL(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not session.authenticated:
            return _AUTH_REQUIRED
        reply = self.reply(Stage.MAIL, session, [])
        if reply is not None:
            return reply.line()
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not session.authenticated:
            return _AUTH_REQUIRED
        reply = self.reply(Stage.RCPT, session, [address])
        if reply is not None:
            return reply.line()
        rule = rule_for(self._server.settings.rules, login=_login(session), recipient=address)
        needs_mailbox = rule is None or rule.deliver is not None
        if needs_mailbox and not self._server.store.hosts(address):
            return unknown_recipient(address).line()
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self.reply(Stage.END_OF_DATA, session, envelope.rcpt_tos)
        if reply is not None:
            return reply.line()
        queue_id = secrets.token_hex(6).upper()
        raw = envelope.original_content or b""
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer or "")
        for recipient in envelope.rcpt_tos:
            delivery = Delivery(
                envelope_from=envelope.mail_from or "",
                recipient=recipient,
                login=_login(session),
                client_name=session.host_name or "unknown",
                client_address=peer,
                hostname=self._server.settings.hostname,
                queue_id=queue_id,
                received_at=self._server.clock(),
            )
            self._server.accept(raw, delivery)
        return f"250 2.0.0 Ok: queued as {queue_id}"


class SmtpServer:
    """The sandbox's two SMTP listeners and the deliveries they have accepted."""

    def __init__(
        self,
        settings: Sandbox,
        *,
        store: ImapStore,
        tls: ssl.SSLContext,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.passwords = {
            user.username: user.password.get_secret_value().encode() for user in settings.users
        }
        self._tls = tls
        self._handler = _Handler(self)
        self._servers: list[asyncio.Server] = []
        self._connections: set[_Smtp] = set()
        self._pending: set[asyncio.Task[None]] = set()

    def _protocol(self, *, implicit: bool) -> _Smtp:
        smtp = _Smtp(
            self._handler,
            hostname=self.settings.hostname,
            ident=_IDENT,
            # With implicit TLS the connection is encrypted before any byte, so STARTTLS is not
            # offered and AUTH needs no further TLS; MAIL and RCPT check AUTH themselves.
            tls_context=None if implicit else self._tls,
            require_starttls=not implicit,
            auth_require_tls=not implicit,
            authenticator=self._handler.authenticate,
            auth_exclude_mechanism=["CRAM-MD5"],
            timeout=60.0,
        )
        self._connections.add(smtp)
        return smtp

    async def listen_starttls(self, host: str, port: int) -> int:
        """Listen for submission with STARTTLS required (like port 587); the port bound."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: self._protocol(implicit=False), host, port)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def listen_implicit(self, host: str, port: int) -> int:
        """Listen for submission over implicit TLS (like port 465); the port bound."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: self._protocol(implicit=True), host, port, ssl=self._tls
        )
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def accept(self, raw: bytes, delivery: Delivery) -> None:
        """Carry out the rule of one accepted recipient, after its delay."""
        rule = rule_for(self.settings.rules, login=delivery.login, recipient=delivery.recipient)
        if rule is None:
            self._later(0.0, lambda: self._deliver(raw, delivery, SandboxDeliver()))
        elif rule.deliver is not None:
            deliver = rule.deliver
            self._later(deliver.delay, lambda: self._deliver(raw, delivery, deliver))
        elif rule.bounce is not None:
            bounce = rule.bounce
            self._later(bounce.delay, lambda: self._bounce(raw, delivery, bounce))
        else:
            log.debug("sandbox: %s for %s discarded by rule", delivery.queue_id, delivery.recipient)

    def _later(self, delay: float, work: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)  # the scenario's delivery delay
            await work()

        task = asyncio.create_task(run(), name="sandbox-delivery")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, raw: bytes, delivery: Delivery, rule: SandboxDeliver) -> None:
        stamped = stamp_delivery(
            raw,
            delivery,
            verdicts=rule.authentication_results,
            authserv_id=rule.authserv_id or self.settings.authserv_id,
        )
        try:
            await self.store.deliver(delivery.recipient, rule.folder, stamped, when=self.clock())
        except KeyError:
            log.warning(
                "sandbox: no mailbox or folder %r for %s; message %s dropped",
                rule.folder,
                delivery.recipient,
                delivery.queue_id,
            )
            return
        log.debug(
            "sandbox: %s delivered to %s/%s", delivery.queue_id, delivery.recipient, rule.folder
        )

    async def _bounce(self, raw: bytes, delivery: Delivery, rule: SandboxBounce) -> None:
        now = self.clock()
        target = rule.mailbox or delivery.envelope_from
        if not delivery.envelope_from or not self.store.hosts(target):
            log.warning(
                "sandbox: no sandbox mailbox for the bounce of %s to <%s>; DSN dropped",
                delivery.queue_id,
                delivery.envelope_from,
            )
            return
        dsn = build_dsn(
            raw, delivery, Bounce(status=rule.status, diagnostic=rule.diagnostic, bounced_at=now)
        )
        notice = Delivery(
            envelope_from="",  # the null sender: a DSN is never bounced in turn
            recipient=delivery.envelope_from,
            login=None,
            client_name=self.settings.hostname,
            client_address=self.settings.host,
            hostname=self.settings.hostname,
            queue_id=secrets.token_hex(6).upper(),
            received_at=now,
        )
        stamped = stamp_delivery(dsn, notice)
        await self.store.deliver(local_address(target), "INBOX", stamped, when=now)
        log.debug("sandbox: %s bounced to %s", delivery.queue_id, target)

    async def close(self) -> None:
        """Stop listening, close client connections and drop deliveries not yet made."""
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for smtp in list(self._connections):
            if smtp.transport is not None:
                smtp.transport.close()
        self._connections.clear()
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
