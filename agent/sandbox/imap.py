"""The sandbox's IMAP side: seed mailboxes held in memory by pymap, served over implicit TLS.

pymap's dict backend keeps every mailbox in memory and gives IDLE, LOGIN and a `Junk` folder
found by name (it has no SPECIAL-USE). Like a provider's port 993, the server
speaks TLS from the first byte, and LOGIN is allowed at once. `deliver()` appends straight into
a folder, which wakes up every IDLE client of it; IDLE also announces at once what changed since
the session's last command (pymap alone would hold that back until the folder changes again, and
a watcher would find it only at its next periodic check). Passwords are compared in clear (they
sit in the config anyway): pymap's default PBKDF2 would cost ~0.15 s of CPU at every login.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from proxyprotocol.result import ProxyResultLocal
from proxyprotocol.sock import SocketInfo
from proxyprotocol.version import ProxyProtocolVersion
from pymap.backend.dict import Config as DictConfig
from pymap.backend.dict import Identity, Login
from pymap.backend.dict.filter import FilterSet
from pymap.backend.dict.mailbox import MailboxData, MailboxSet
from pymap.concurrent import Event, Subsystem
from pymap.imap import IMAPServer
from pymap.parsing.message import AppendMessage
from pymap.parsing.specials import ObjectId
from pymap.selected import SelectedMailbox
from pymap.user import UserMetadata
from pysasl.hashing import Cleartext

from agent.config import SandboxMailbox

__all__ = ["JUNK", "ImapStore"]

log = logging.getLogger(__name__)

JUNK: Final = "Junk"  # every sandbox mailbox has it; the agent finds it by this well-known name

# pymap logs every protocol line at DEBUG, LOGIN passwords included.
logging.getLogger("pymap").setLevel(logging.WARNING)


class _Config(DictConfig):
    """pymap's dict-backend config with our greeting (pymap's asks DNS for the FQDN each time)."""

    def __init__(self, *, hostname: str, tls: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(argparse.Namespace(), **kwargs, ssl_context=tls)
        self._hostname = hostname

    @property
    def greeting(self) -> bytes:
        return f"{self._hostname} IMAP sandbox ready".encode("ascii", "replace")


class _MailboxData(MailboxData):
    """A pymap folder whose IDLE starts with what changed since the session's last command.

    pymap's IDLE waits for the folder's next change, so mail delivered between a command's
    answer and IDLE was announced only with a later change: a watcher going back to IDLE after
    a pass (or after its calibration marker's pass) missed a probe landing in that round trip
    until its periodic check. Cyrus and Dovecot send such changes when IDLE starts.
    """

    async def update_selected(
        self, selected: SelectedMailbox, *, wait_on: Event | None = None
    ) -> SelectedMailbox:
        if wait_on is not None and selected.mod_sequence != self._mod_sequences.highest:
            wait_on = None  # the session has not seen every change yet: report them now
        return await super().update_selected(selected, wait_on=wait_on)


class _MailboxSet(MailboxSet):
    """pymap's in-memory mailboxes, each folder a `_MailboxData`."""

    def __init__(self) -> None:
        super().__init__()
        self._inbox = _MailboxData(self._content_cache, self._thread_cache)

    async def add_mailbox(self, name: str) -> ObjectId:
        # pymap's own, with our folder class (it has no factory to override).
        async with self._set_lock.read_lock():
            if name in self._set:
                raise ValueError(name)
        async with self._set_lock.write_lock():
            self._set[name] = mailbox = _MailboxData(self._content_cache, self._thread_cache)
            return mailbox.mailbox_id


def local_address(address: str) -> str:
    """The mailbox an address is delivered to: lower-cased, with any +detail dropped."""
    local, _, domain = address.lower().rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


class ImapStore:
    """The sandbox's seed mailboxes and the IMAP server that serves them."""

    def __init__(self, *, hostname: str, tls: ssl.SSLContext) -> None:
        self._config = _Config(
            hostname=hostname,
            tls=tls,
            host=None,
            port=0,
            demo_data=False,
            demo_user="",
            demo_password="",
            tls_enabled=False,  # implicit TLS: no STARTTLS offered, LOGIN allowed at once
            reject_dnsbl=False,
            invalid_user_sleep=0.0,
            hash_context=Cleartext(),
            cpu_subsystem=Subsystem.for_asyncio(),
            proxy_protocol=ProxyProtocolVersion.get(None),
        )
        self._tls = tls
        self._login = Login(self._config)
        self._boxes: dict[str, MailboxSet] = {}  # by local_address()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def add_mailboxes(
        self, mailboxes: Sequence[SandboxMailbox], *, folders: Sequence[str] = ()
    ) -> None:
        """Create an account per mailbox, each with INBOX, Junk and `folders`."""
        for mailbox in mailboxes:
            username = mailbox.auth.username
            password = mailbox.auth.password.get_secret_value()
            identity = Identity(username, self._login, None, frozenset())
            await identity.set(UserMetadata(self._config, username, password=password))
            boxes, filters = _MailboxSet(), FilterSet()
            for folder in dict.fromkeys([JUNK, *folders]):
                if folder.upper() != "INBOX":
                    await boxes.add_mailbox(folder)
            # pymap looks the user's mailboxes up here at LOGIN; filling it first lets mail be
            # delivered before anyone ever logs in.
            self._config.set_cache[username] = (boxes, filters)
            self._boxes[local_address(mailbox.address)] = boxes

    def hosts(self, address: str) -> bool:
        """Whether mail for `address` (or its +detail-free form) has a mailbox here."""
        return local_address(address) in self._boxes

    async def deliver(self, address: str, folder: str, raw: bytes, *, when: float) -> None:
        """Append `raw` to `folder` of the mailbox of `address`; KeyError if there is none."""
        boxes = self._boxes[local_address(address)]
        target = await boxes.get_mailbox(folder)
        message = AppendMessage(raw, datetime.fromtimestamp(when, UTC), frozenset())
        await target.append(message, recent=True)

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port) with implicit TLS; the port bound."""
        self._config.apply_context()
        imap = IMAPServer(self._login, self._config)

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Called directly, not through pymap's PROXY-protocol reader, which would run the
            # session in a task nobody holds or awaits.
            self._connections.add(writer)
            try:
                await imap(reader, writer, SocketInfo.get(writer, ProxyResultLocal()))
            finally:
                self._connections.discard(writer)

        self._server = await asyncio.start_server(connected, host, port, ssl=self._tls)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        """Stop listening and drop every client connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._connections):
            writer.close()
        self._connections.clear()
