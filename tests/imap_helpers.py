"""Helpers shared by the IMAP tests: targets on the test mail system and on a scripted server,
delivering and reading mail, and a recording consumer for watchers."""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import imaplib
import logging
import smtplib
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from agent.imap import (
    Disposition,
    FetchedMessage,
    FolderWatcher,
    ImapError,
    ImapTarget,
    encode_modified_utf7,
)
from agent.model import ErrorKind, TlsMode
from tests.mailsystem import MailSystem
from tests.mailsystem.topology import SPAM_SUBJECT_TOKEN, Account

__all__ = [
    "WAIT",
    "LogWatch",
    "Recorder",
    "State",
    "check_once_error",
    "deliver",
    "deliver_spam_via_mx",
    "dovecot_target",
    "folder_contents",
    "kick",
    "new_message",
    "running",
    "scripted_target",
    "stdlib_imap",
    "subject_of",
    "unique",
    "watch_log",
]

WAIT = 30.0  # generous bound on anything awaited; tests pass far sooner
State = tuple[bool, ErrorKind | None]


def dovecot_target(
    system: MailSystem,
    account: Account,
    *,
    tls: TlsMode = TlsMode.IMPLICIT,
    port: int | None = None,
    password: str | None = None,
    trust_ca: bool = True,
    tls_verify: bool = True,
    connect_timeout: float = 10.0,
) -> ImapTarget:
    if port is None:
        port = system.ports.imaps if tls is TlsMode.IMPLICIT else system.ports.imap
    return ImapTarget(
        mailbox="seed-under-test",
        host="127.0.0.1",
        port=port,
        tls=tls,
        username=account.address,
        password=account.password if password is None else password,
        ca_file=system.ca_file if trust_ca else None,
        tls_verify=tls_verify,
        connect_timeout=connect_timeout,
        command_timeout=10.0,
    )


def scripted_target(port: int, *, connect_timeout: float = 5.0) -> ImapTarget:
    return ImapTarget(
        mailbox="scripted",
        host="127.0.0.1",
        port=port,
        tls=TlsMode.NONE,
        username="someone@example.test",
        password='S3cret"Pass\\Word',
        connect_timeout=connect_timeout,
        command_timeout=0.5,
    )


def new_message(account: Account, subject: str, body: str = "hello\n") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "probe@good.test"
    msg["To"] = account.address
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4()}@good.test>"
    msg.set_content(body)
    return msg


async def deliver(system: MailSystem, account: Account, subject: str, body: str = "hi\n") -> None:
    """Straight into INBOX through Dovecot's LMTP (no spam scoring on the way)."""

    def send() -> None:
        with smtplib.LMTP("127.0.0.1", system.ports.lmtp, timeout=WAIT) as lmtp:
            lmtp.send_message(new_message(account, subject, body))

    await asyncio.to_thread(send)


async def deliver_spam_via_mx(system: MailSystem, account: Account, subject: str) -> None:
    def send() -> None:
        with smtplib.SMTP("127.0.0.1", system.ports.mx, timeout=WAIT) as smtp:
            smtp.send_message(new_message(account, f"{subject} {SPAM_SUBJECT_TOKEN}"))

    await asyncio.to_thread(send)


def subject_of(message: FetchedMessage) -> str:
    parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(message.raw)
    return str(parsed["Subject"])


def unique(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:12]}"


def stdlib_imap(system: MailSystem, account: Account) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=str(system.ca_file))
    imap = imaplib.IMAP4_SSL("127.0.0.1", system.ports.imaps, ssl_context=context)
    imap.login(account.address, account.password)
    return imap


async def folder_contents(
    system: MailSystem, account: Account, folder: str = "INBOX"
) -> dict[str, bytes]:
    """Subject -> FLAGS of every message in `folder`, read with the standard library."""

    def read() -> dict[str, bytes]:
        with stdlib_imap(system, account) as imap:
            imap.select(f'"{encode_modified_utf7(folder)}"', readonly=True)
            _, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            result = {}
            for part in data:
                if isinstance(part, tuple):
                    header = email.parser.BytesHeaderParser().parsebytes(part[1])
                    result[str(header["Subject"])] = part[0]
            return result

    return await asyncio.to_thread(read)


async def kick(system: MailSystem, account: Account) -> None:
    """Make Dovecot drop every connection of this user."""
    conf = system.layout.dovecot / "dovecot.conf"
    proc = await asyncio.create_subprocess_exec(
        "doveadm", "-c", str(conf), "kick", account.address,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, (out, err)


class Recorder:
    """Callbacks for a watcher that put what they get on queues the test awaits."""

    def __init__(self, disposition: Disposition = Disposition.KEEP, *, fail: int = 0) -> None:
        self.disposition = disposition
        self.fail = fail  # the first `fail` calls of on_message raise
        self.messages: asyncio.Queue[FetchedMessage] = asyncio.Queue()
        self.states: asyncio.Queue[State] = asyncio.Queue()

    async def on_message(self, message: FetchedMessage) -> Disposition:
        await self.messages.put(message)
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("consumer failed on purpose")
        return self.disposition

    def on_state(self, up: bool, kind: ErrorKind | None) -> None:
        self.states.put_nowait((up, kind))

    async def next_message(self) -> FetchedMessage:
        async with asyncio.timeout(WAIT):
            return await self.messages.get()

    async def next_state(self) -> State:
        async with asyncio.timeout(WAIT):
            return await self.states.get()

    def watcher(self, target: ImapTarget, folder: str = "INBOX", **options: Any) -> FolderWatcher:
        options = {"backoff_initial": 0.05, "backoff_max": 0.2, **options}
        return FolderWatcher(
            target, folder, on_message=self.on_message, on_state=self.on_state, **options
        )


@contextlib.asynccontextmanager
async def running(watcher: FolderWatcher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(watcher.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(WAIT):
                await task


class LogWatch(logging.Handler):
    """Counts log records containing `text` and wakes whoever waits for the next one."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.count = 0
        self._seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.count += 1
            self._seen.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while self.count < count:
                self._seen.clear()
                await self._seen.wait()


@contextlib.contextmanager
def watch_log(text: str) -> Iterator[LogWatch]:
    logger = logging.getLogger("agent.imap.watcher")
    handler = LogWatch(text)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


async def check_once_error(target: ImapTarget) -> ImapError:
    recorder = Recorder()
    watcher = recorder.watcher(target)
    with pytest.raises(ImapError) as raised:
        async with asyncio.timeout(WAIT):
            await watcher.check_once()
    assert recorder.states.get_nowait() == (False, raised.value.kind)
    return raised.value
