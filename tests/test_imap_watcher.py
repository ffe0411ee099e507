"""The IMAP watcher against the real Dovecot of the test mail system, and scripted faults."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.parser
import email.policy
import imaplib
import logging
import smtplib
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from agent.imap import (
    Disposition,
    FetchedMessage,
    FolderNotFound,
    FolderWatcher,
    ImapError,
    ImapTarget,
    ListedFolder,
    backoff_delay,
    choose_folders,
    decode_modified_utf7,
    detect_folders,
    encode_modified_utf7,
    parse_list_response,
)
from agent.model import ErrorKind, TlsMode
from agent.secrets import MASK
from tests.mailsystem import MailSystem
from tests.mailsystem.topology import SPAM_SUBJECT_TOKEN, Account
from tests.scripted_imap import (
    CAPABILITY_EXCHANGE,
    GREETING,
    Close,
    Expect,
    Hang,
    Raw,
    ScriptedImapServer,
    Send,
)

WAIT = 30.0  # generous bound on anything awaited; tests pass far sooner
State = tuple[bool, ErrorKind | None]


# --- helpers --------------------------------------------------------------------------------------


def _target(
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


def _scripted_target(port: int, *, connect_timeout: float = 5.0) -> ImapTarget:
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


def _message(account: Account, subject: str, body: str = "hello\n") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "probe@good.test"
    msg["To"] = account.address
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4()}@good.test>"
    msg.set_content(body)
    return msg


async def _deliver(system: MailSystem, account: Account, subject: str, body: str = "hi\n") -> None:
    """Straight into INBOX through Dovecot's LMTP (no spam scoring on the way)."""

    def send() -> None:
        with smtplib.LMTP("127.0.0.1", system.ports.lmtp, timeout=WAIT) as lmtp:
            lmtp.send_message(_message(account, subject, body))

    await asyncio.to_thread(send)


async def _deliver_spam_via_mx(system: MailSystem, account: Account, subject: str) -> None:
    def send() -> None:
        with smtplib.SMTP("127.0.0.1", system.ports.mx, timeout=WAIT) as smtp:
            smtp.send_message(_message(account, f"{subject} {SPAM_SUBJECT_TOKEN}"))

    await asyncio.to_thread(send)


def _subject(message: FetchedMessage) -> str:
    parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(message.raw)
    return str(parsed["Subject"])


def _unique(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:12]}"


def _stdlib_imap(system: MailSystem, account: Account) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=str(system.ca_file))
    imap = imaplib.IMAP4_SSL("127.0.0.1", system.ports.imaps, ssl_context=context)
    imap.login(account.address, account.password)
    return imap


async def _folder_contents(
    system: MailSystem, account: Account, folder: str = "INBOX"
) -> dict[str, bytes]:
    """Subject -> FLAGS of every message in `folder`, read with the standard library."""

    def read() -> dict[str, bytes]:
        with _stdlib_imap(system, account) as imap:
            imap.select(f'"{encode_modified_utf7(folder)}"', readonly=True)
            _, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            result = {}
            for part in data:
                if isinstance(part, tuple):
                    header = email.parser.BytesHeaderParser().parsebytes(part[1])
                    result[str(header["Subject"])] = part[0]
            return result

    return await asyncio.to_thread(read)


async def _kick(system: MailSystem, account: Account) -> None:
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
async def _running(watcher: FolderWatcher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(watcher.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(WAIT):
                await task


class _LogWatch(logging.Handler):
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
def _watch_log(text: str) -> Iterator[_LogWatch]:
    logger = logging.getLogger("agent.imap.watcher")
    handler = _LogWatch(text)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


# --- pure parts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("INBOX", "INBOX"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("Junk & Spam", "Junk &- Spam"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 example
    ],
)
def test_folder_names_round_trip_through_modified_utf7(text: str, wire: str) -> None:
    assert encode_modified_utf7(text) == wire
    assert decode_modified_utf7(wire) == text


def test_a_broken_modified_utf7_run_is_kept_as_sent() -> None:
    assert decode_modified_utf7("Bad &Jjo") == "Bad &Jjo"
    assert decode_modified_utf7("Bad &!!!-x") == "Bad &!!!-x"


def test_list_lines_parse_quoted_literal_nil_and_encoded_names() -> None:
    lines: list[bytes | bytearray] = [
        b'(\\HasNoChildren \\Junk) "/" Junk',
        b'(\\Noselect \\HasChildren) "/" "[Gmail]"',
        b'() "/" "Junk E-mail"',
        b'() "." {11}',
        bytearray(b'Bulk "Mail"'),
        b'() NIL "with \\"quote\\" and \\\\"',
        b'() "/" "Entw&APw-rfe"',
        b"not a list line",
    ]
    folders = parse_list_response(lines)
    assert folders == [
        ListedFolder("Junk", frozenset({"\\hasnochildren", "\\junk"}), "/"),
        ListedFolder("[Gmail]", frozenset({"\\noselect", "\\haschildren"}), "/"),
        ListedFolder("Junk E-mail", frozenset(), "/"),
        ListedFolder('Bulk "Mail"', frozenset(), "."),
        ListedFolder('with "quote" and \\', frozenset(), None),
        ListedFolder("Entwürfe", frozenset(), "/"),
    ]
    assert [folder.selectable for folder in folders] == [True, False, True, True, True, True]


def _listed(*entries: tuple[str, str]) -> list[ListedFolder]:
    return [ListedFolder(name, frozenset(flags.split()), "/") for name, flags in entries]


def test_special_use_junk_wins_over_a_well_known_name() -> None:
    folders = _listed(("INBOX", ""), ("Spam", ""), ("Unwanted", "\\junk"), ("Junk", ""))
    assert choose_folders(folders).junk == "Unwanted"


def test_well_known_junk_names_match_case_insensitively_and_skip_unselectable() -> None:
    folders = _listed(("Inbox", ""), ("[Gmail]", "\\noselect \\junk"), ("JUNK E-MAIL", ""))
    chosen = choose_folders(folders)
    assert (chosen.inbox, chosen.junk, chosen.names) == (
        "Inbox",
        "JUNK E-MAIL",
        ("Inbox", "JUNK E-MAIL"),
    )


def test_no_junk_folder_gives_none() -> None:
    assert choose_folders(_listed(("INBOX", ""), ("Archive", "\\archive"))).junk is None


def test_junk_override_is_matched_exactly_then_case_insensitively() -> None:
    folders = _listed(("INBOX", ""), ("Junk", "\\junk"), ("Quarantine", ""), ("quarantine", ""))
    assert choose_folders(folders, junk_override="quarantine").junk == "quarantine"
    assert choose_folders(folders, junk_override="QUARANTINE").junk == "Quarantine"
    with pytest.raises(FolderNotFound) as raised:
        choose_folders(folders, junk_override="Nope")
    assert raised.value.kind is ErrorKind.PROTOCOL
    assert "'Nope'" in str(raised.value) and "'Quarantine'" in str(raised.value)


def test_target_repr_hides_the_password_and_starttls_is_refused() -> None:
    target = ImapTarget(
        mailbox="m", host="h", port=1, tls=TlsMode.NONE, username="u", password="hunter2-secret"
    )
    assert "hunter2-secret" not in repr(target)
    with pytest.raises(ValueError, match="STARTTLS"):
        ImapTarget(mailbox="m", host="h", port=1, tls=TlsMode.STARTTLS, username="u", password="p")


def test_fetched_message_knows_it_was_truncated_and_keeps_raw_out_of_repr() -> None:
    message = FetchedMessage(
        mailbox="m", folder="INBOX", uid=7, raw=b"Subject: x\r\n", seen_at=1.0, size=500
    )
    assert message.truncated
    assert "Subject" not in repr(message)


def test_backoff_doubles_up_to_the_maximum_with_jitter_in_the_upper_half() -> None:
    def low() -> float:
        return 0.0

    def high() -> float:
        return 1.0

    delays = [backoff_delay(n, initial=1.0, maximum=10.0, rng=high) for n in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_delay(3, initial=1.0, maximum=10.0, rng=low) == 4.0
    assert backoff_delay(10_000, initial=1.0, maximum=10.0, rng=high) == 10.0


# --- scripted faults ------------------------------------------------------------------------------


async def _check_once_error(target: ImapTarget) -> ImapError:
    recorder = Recorder()
    watcher = recorder.watcher(target)
    with pytest.raises(ImapError) as raised:
        async with asyncio.timeout(WAIT):
            await watcher.check_once()
    assert recorder.states.get_nowait() == (False, raised.value.kind)
    return raised.value


async def test_a_greeting_then_silence_times_out_at_connect() -> None:
    async with ScriptedImapServer(GREETING, Hang()) as server:
        error = await _check_once_error(_scripted_target(server.port, connect_timeout=0.5))
    assert error.kind is ErrorKind.TIMEOUT
    assert "greeting" in error.message


async def test_silence_after_login_times_out_the_command() -> None:
    async with ScriptedImapServer(
        GREETING, *CAPABILITY_EXCHANGE, Expect("LOGIN"), Hang()
    ) as server:
        error = await _check_once_error(_scripted_target(server.port))
    assert error.kind is ErrorKind.TIMEOUT
    assert error.message.startswith("LOGIN")


async def test_a_garbage_greeting_is_a_protocol_error() -> None:
    async with ScriptedImapServer(Raw(b"\x00\x01 this is no IMAP server\r\n"), Hang()) as server:
        error = await _check_once_error(_scripted_target(server.port))
    assert error.kind is ErrorKind.PROTOCOL
    assert "greeting" in error.message


async def test_a_connection_closed_mid_command_is_reported_closed() -> None:
    async with ScriptedImapServer(
        GREETING, *CAPABILITY_EXCHANGE, Expect("LOGIN"), Close()
    ) as server:
        error = await _check_once_error(_scripted_target(server.port))
    assert error.kind is ErrorKind.CLOSED


async def test_a_connection_closed_before_the_greeting_is_reported_closed() -> None:
    async with ScriptedImapServer(Close()) as server:
        error = await _check_once_error(_scripted_target(server.port))
    assert error.kind is ErrorKind.CLOSED


async def test_bad_to_login_is_a_protocol_error_and_no_is_an_auth_error() -> None:
    bad = (GREETING, *CAPABILITY_EXCHANGE, Expect("LOGIN"), Send("{tag} BAD what?"), Hang())
    no = (GREETING, *CAPABILITY_EXCHANGE, Expect("LOGIN"), Send("{tag} NO go away"), Hang())
    async with ScriptedImapServer(*bad) as server:
        assert (await _check_once_error(_scripted_target(server.port))).kind is ErrorKind.PROTOCOL
    async with ScriptedImapServer(*no) as server:
        error = await _check_once_error(_scripted_target(server.port))
    assert error.kind is ErrorKind.AUTH
    assert "go away" in error.message


async def test_an_unexpected_tagged_reply_is_a_protocol_error_that_leaks_no_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    script = (GREETING, *CAPABILITY_EXCHANGE, Expect("LOGIN"), Send("ZZZZ9 OK who asked?"), Hang())
    async with ScriptedImapServer(*script) as server:
        error = await _check_once_error(_scripted_target(server.port))
        assert any(b"S3cret" in line for line in server.received)  # it was sent...
    assert error.kind is ErrorKind.PROTOCOL
    for fragment in ("S3cret", "Pass", "Word"):  # ...and appears nowhere, quoted or not
        assert fragment not in str(error)
        assert fragment not in caplog.text


async def test_a_password_or_secret_the_server_echoes_is_masked_in_the_error_and_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # The password plain and as LOGIN quoted it (S3cret\"Pass\\Word), then the further secret.
    echo = 'S3cret"Pass\\Word S3cret\\"Pass\\\\Word tok-3xtra-Secret'
    script = (GREETING, *CAPABILITY_EXCHANGE, Expect("LOGIN"), Send("{tag} NO you sent " + echo))
    async with ScriptedImapServer(*script, Hang()) as server:
        target = dataclasses.replace(_scripted_target(server.port), secrets=("tok-3xtra-Secret",))
        error = await _check_once_error(target)
    assert error.kind is ErrorKind.AUTH
    assert error.message == f"LOGIN refused: you sent {MASK} {MASK} {MASK}"
    # aioimaplib's own DEBUG lines quote what the server sent; the agent keeps that logger quiet.
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("agent."))
    assert f"auth: LOGIN refused: you sent {MASK} {MASK} {MASK}" in ours
    for fragment in ("S3cret", "Pass", "Word", "3xtra"):
        assert fragment not in str(error)
        assert fragment not in ours


async def test_a_secret_in_a_consumer_error_is_masked_in_the_logged_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    body = b"Subject: hello\r\n\r\nhi\r\n"
    script = (
        GREETING,
        *CAPABILITY_EXCHANGE,
        Expect("LOGIN"),
        Send("{tag} OK Logged in"),
        *CAPABILITY_EXCHANGE,
        Expect("SELECT"),
        Send("* 1 EXISTS\n* OK [UIDVALIDITY 7] UIDs valid\n{tag} OK [READ-WRITE] Selected"),
        Expect("UID SEARCH"),
        Send("* SEARCH 1\n{tag} OK Searched"),
        Expect("UID FETCH"),
        Raw(
            b"* 1 FETCH (UID 1 RFC822.SIZE %d BODY[]<0> {%d}\r\n%s)\r\n"
            % (len(body), len(body), body)
        ),
        Send("{tag} OK Fetched"),
        Expect("UID SEARCH"),
        Send("* SEARCH 1\n{tag} OK Searched"),
        Expect("LOGOUT"),
        Send("* BYE\n{tag} OK Logged out"),
    )

    async def on_message(message: FetchedMessage) -> Disposition:
        raise RuntimeError("the consumer choked on tok-3xtra-Secret")

    def on_state(up: bool, kind: ErrorKind | None) -> None:
        pass

    async with ScriptedImapServer(*script) as server:
        target = dataclasses.replace(_scripted_target(server.port), secrets=("tok-3xtra-Secret",))
        watcher = FolderWatcher(target, "INBOX", on_message=on_message, on_state=on_state)
        async with asyncio.timeout(WAIT):
            await watcher.check_once()
    assert "on_message failed for UID 1; the message is kept" in caplog.text
    assert f"RuntimeError: the consumer choked on {MASK}" in caplog.text
    assert "3xtra" not in caplog.text


def test_further_secrets_stay_out_of_the_target_repr() -> None:
    target = ImapTarget(
        mailbox="m",
        host="h",
        port=1,
        tls=TlsMode.NONE,
        username="u",
        password="p",
        secrets=("oauth-refresh-token-xyz",),
    )
    assert "oauth-refresh-token-xyz" not in repr(target)


async def test_mail_announced_at_the_end_of_a_search_is_fetched_in_the_same_pass() -> None:
    # Dovecot searches the view from before the command and reports new mail at its end.
    body = b"Subject: mid-pass\r\n\r\nhello\r\n"
    script = (
        GREETING,
        *CAPABILITY_EXCHANGE,
        Expect("LOGIN"),
        Send("{tag} OK [CAPABILITY IMAP4rev1 IDLE UIDPLUS] Logged in"),
        *CAPABILITY_EXCHANGE,
        Expect("SELECT"),
        Send("* 0 EXISTS\n* OK [UIDVALIDITY 42] UIDs valid\n{tag} OK [READ-WRITE] Selected"),
        Expect("UID SEARCH"),
        Send("* SEARCH\n* 1 EXISTS\n* 1 RECENT\n{tag} OK Searched"),
        Expect("UID SEARCH"),
        Send("* SEARCH 1\n{tag} OK Searched"),
        Expect("UID FETCH"),
        Send("* 1 FETCH (FLAGS (\\Recent))"),  # unsolicited, and no body: not the answer
        Raw(b"* 1 FETCH (UID 1 RFC822.SIZE 999 BODY[]<0> {%d}\r\n%s)\r\n" % (len(body), body)),
        Send("{tag} OK Fetched"),
        Expect("UID SEARCH"),
        Send("* SEARCH 1\n{tag} OK Searched"),  # `2:*` still matches the highest UID
        Expect("LOGOUT"),
        Send("* BYE\n{tag} OK Logged out"),
    )
    async with ScriptedImapServer(*script) as server:
        recorder = Recorder()
        async with asyncio.timeout(WAIT):
            await recorder.watcher(_scripted_target(server.port)).check_once()
        assert any(b"LOGOUT" in line for line in server.received)
    message = recorder.messages.get_nowait()
    assert (message.uid, message.raw, message.size) == (1, body, 999)
    assert recorder.messages.empty()
    assert recorder.states.get_nowait() == (True, None)


async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        error = await _check_once_error(_scripted_target(sock.getsockname()[1]))
    assert error.kind is ErrorKind.CONNECT


async def test_run_keeps_reconnecting_after_failures() -> None:
    async with ScriptedImapServer(GREETING, Hang()) as server:
        recorder = Recorder()
        watcher = recorder.watcher(_scripted_target(server.port, connect_timeout=0.2))
        async with _running(watcher):
            assert await recorder.next_state() == (False, ErrorKind.TIMEOUT)
            assert await recorder.next_state() == (False, ErrorKind.TIMEOUT)
            async with asyncio.timeout(WAIT):
                await server.wait_for_connections(2)


# --- the real Dovecot -----------------------------------------------------------------------------


@pytest.mark.mailsystem
async def test_messages_already_in_the_folder_are_handed_over_on_start_without_seen(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    first, second = _unique("first"), _unique("second")
    await _deliver(mail_system, account, first)
    await _deliver(mail_system, account, second)
    recorder = Recorder()
    async with _running(recorder.watcher(_target(mail_system, account))):
        assert await recorder.next_state() == (True, None)
        one, two = await recorder.next_message(), await recorder.next_message()
    assert [_subject(one), _subject(two)] == [first, second]
    assert one.uid < two.uid
    assert (one.mailbox, one.folder) == ("seed-under-test", "INBOX")
    assert not one.truncated and one.size == len(one.raw)
    assert one.seen_at > 0
    contents = await _folder_contents(mail_system, account)
    assert set(contents) == {first, second}
    assert all(b"\\Seen" not in flags for flags in contents.values())


@pytest.mark.mailsystem
async def test_a_new_delivery_wakes_the_watcher_from_idle_and_it_idles_again(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    recorder = Recorder()
    # Polling and IDLE renewal are an hour away: only the server's push can wake the watcher.
    watcher = recorder.watcher(_target(mail_system, account), poll_interval=3600, idle_renew=3600)
    with _watch_log("waiting in IDLE") as idling:
        async with _running(watcher):
            await idling.wait_for(1)
            subject = _unique("pushed")
            await _deliver(mail_system, account, subject)
            assert _subject(await recorder.next_message()) == subject
            await idling.wait_for(2)
            subject = _unique("pushed again")
            await _deliver(mail_system, account, subject)
            assert _subject(await recorder.next_message()) == subject
    assert recorder.states.get_nowait() == (True, None)
    assert recorder.states.empty()


@pytest.mark.mailsystem
async def test_a_new_delivery_is_found_by_polling_without_idle(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    recorder = Recorder()
    watcher = recorder.watcher(_target(mail_system, account), use_idle=False, poll_interval=0.1)
    with _watch_log("waiting in IDLE") as idling:
        async with _running(watcher):
            assert await recorder.next_state() == (True, None)
            subject = _unique("polled")
            await _deliver(mail_system, account, subject)
            assert _subject(await recorder.next_message()) == subject
    assert idling.count == 0


@pytest.mark.mailsystem
async def test_junk_folder_is_found_by_special_use(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    folders = await detect_folders(_target(mail_system, account))
    assert folders.inbox == "INBOX"
    assert folders.junk == "Junk"
    assert set(folders.names) == {"INBOX", "Junk", "Trash", "Sent", "Archive"}


@pytest.mark.mailsystem
async def test_junk_override_must_name_a_listed_folder(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    target = _target(mail_system, account)
    assert (await detect_folders(target, junk_override="archive")).junk == "Archive"
    with pytest.raises(FolderNotFound):
        await detect_folders(target, junk_override="No Such Folder")


@pytest.mark.mailsystem
async def test_a_folder_with_spaces_and_non_ascii_is_listed_and_watched(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    folder = "Ärger & Spaß"
    subject = _unique("appended")

    def create_and_append() -> None:
        with _stdlib_imap(mail_system, account) as imap:
            wire = f'"{encode_modified_utf7(folder)}"'
            assert imap.create(wire)[0] == "OK"
            message = _message(account, subject).as_bytes()
            assert imap.append(wire, "", None, message)[0] == "OK"

    await asyncio.to_thread(create_and_append)
    target = _target(mail_system, account)
    assert folder in (await detect_folders(target)).names
    recorder = Recorder()
    await recorder.watcher(target, folder).check_once()
    message = recorder.messages.get_nowait()
    assert (message.folder, _subject(message)) == (folder, subject)


@pytest.mark.mailsystem
async def test_the_junk_watcher_sees_mail_the_mx_files_as_spam(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    recorder = Recorder()
    async with _running(recorder.watcher(_target(mail_system, account), "Junk")):
        assert await recorder.next_state() == (True, None)
        subject = _unique("spammy")
        await _deliver_spam_via_mx(mail_system, account, subject)
        message = await recorder.next_message()
    assert message.folder == "Junk"
    assert _subject(message).startswith(subject)


@pytest.mark.mailsystem
async def test_delete_removes_the_message_from_the_folder(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    doomed, kept = _unique("doomed"), _unique("kept")
    await _deliver(mail_system, account, doomed)
    recorder = Recorder(Disposition.DELETE)
    await recorder.watcher(_target(mail_system, account)).check_once()
    assert _subject(recorder.messages.get_nowait()) == doomed
    await _deliver(mail_system, account, kept)
    assert set(await _folder_contents(mail_system, account)) == {kept}


@pytest.mark.mailsystem
async def test_keep_leaves_the_message_and_it_is_not_handed_over_twice(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    first, second = _unique("kept"), _unique("later")
    await _deliver(mail_system, account, first)
    recorder = Recorder(Disposition.KEEP)
    watcher = recorder.watcher(_target(mail_system, account))
    await watcher.check_once()
    await watcher.check_once()
    await _deliver(mail_system, account, second)
    await watcher.check_once()
    handed = [_subject(recorder.messages.get_nowait()) for _ in range(recorder.messages.qsize())]
    assert handed == [first, second]
    assert set(await _folder_contents(mail_system, account)) == {first, second}


@pytest.mark.mailsystem
async def test_after_the_server_drops_the_connection_the_watcher_reconnects_and_sees_new_mail(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    before, after = _unique("before kick"), _unique("after kick")
    await _deliver(mail_system, account, before)
    recorder = Recorder()
    watcher = recorder.watcher(_target(mail_system, account), poll_interval=3600, idle_renew=3600)
    with _watch_log("waiting in IDLE") as idling:
        async with _running(watcher):
            assert await recorder.next_state() == (True, None)
            assert _subject(await recorder.next_message()) == before
            await idling.wait_for(1)
            await _kick(mail_system, account)
            assert await recorder.next_state() == (False, ErrorKind.CLOSED)
            assert await recorder.next_state() == (True, None)
            await _deliver(mail_system, account, after)
            # The message from before the kick would come first if it were handed over again.
            assert _subject(await recorder.next_message()) == after


@pytest.mark.mailsystem
async def test_a_polling_watcher_notices_a_drop_while_waiting_and_catches_up(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    recorder = Recorder()
    watcher = recorder.watcher(_target(mail_system, account), use_idle=False, poll_interval=3600)
    async with _running(watcher):
        assert await recorder.next_state() == (True, None)
        subject = _unique("while waiting")
        await _deliver(mail_system, account, subject)  # the next poll is an hour away...
        await _kick(mail_system, account)
        assert await recorder.next_state() == (False, ErrorKind.CLOSED)
        assert await recorder.next_state() == (True, None)
        assert _subject(await recorder.next_message()) == subject  # ...the new session finds it


@pytest.mark.mailsystem
async def test_wrong_password_is_reported_as_auth_and_never_logged(
    mail_system: MailSystem, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    account = mail_system.new_mailbox()
    target = _target(mail_system, account, password='Wr0ng"Secret\\Value')
    recorder = Recorder()
    async with _running(recorder.watcher(target)):
        assert await recorder.next_state() == (False, ErrorKind.AUTH)
        assert await recorder.next_state() == (False, ErrorKind.AUTH)  # and it retries
    error = await _check_once_error(target)
    assert error.kind is ErrorKind.AUTH
    for fragment in ("Wr0ng", "Secret", "Value"):
        assert fragment not in str(error)
        assert fragment not in caplog.text


@pytest.mark.mailsystem
async def test_implicit_tls_against_the_plain_port_is_a_tls_error(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    target = _target(mail_system, account, tls=TlsMode.IMPLICIT, port=mail_system.ports.imap)
    assert (await _check_once_error(target)).kind is ErrorKind.TLS


@pytest.mark.mailsystem
async def test_plain_against_the_implicit_tls_port_is_a_tls_error(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    target = _target(
        mail_system, account, tls=TlsMode.NONE, port=mail_system.ports.imaps, connect_timeout=1.5
    )
    error = await _check_once_error(target)
    assert error.kind is ErrorKind.TLS
    assert "tls: implicit" in error.message


@pytest.mark.mailsystem
async def test_an_untrusted_certificate_is_a_tls_error_unless_verification_is_off(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    untrusted = _target(mail_system, account, trust_ca=False)
    assert (await _check_once_error(untrusted)).kind is ErrorKind.TLS
    recorder = Recorder()
    await recorder.watcher(
        _target(mail_system, account, trust_ca=False, tls_verify=False)
    ).check_once()
    assert recorder.states.get_nowait() == (True, None)


@pytest.mark.mailsystem
async def test_plain_imap_works_when_configured(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    subject = _unique("plain")
    await _deliver(mail_system, account, subject)
    recorder = Recorder()
    await recorder.watcher(_target(mail_system, account, tls=TlsMode.NONE)).check_once()
    assert _subject(recorder.messages.get_nowait()) == subject


@pytest.mark.mailsystem
async def test_a_huge_message_is_handed_over_truncated(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    subject = _unique("huge")
    await _deliver(mail_system, account, subject, body=("x" * 76 + "\n") * 4000)
    recorder = Recorder()
    await recorder.watcher(_target(mail_system, account), max_message_bytes=10_000).check_once()
    message = recorder.messages.get_nowait()
    assert len(message.raw) == 10_000
    assert message.size > 300_000
    assert message.truncated
    assert _subject(message) == subject  # the headers are in the part that was kept


@pytest.mark.mailsystem
async def test_an_on_message_that_raises_does_not_stop_the_watcher(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    broken, fine = _unique("consumer breaks"), _unique("consumer fine")
    recorder = Recorder(Disposition.DELETE, fail=1)
    async with _running(recorder.watcher(_target(mail_system, account))):
        assert await recorder.next_state() == (True, None)
        await _deliver(mail_system, account, broken)
        assert _subject(await recorder.next_message()) == broken
        await _deliver(mail_system, account, fine)
        assert _subject(await recorder.next_message()) == fine
    assert recorder.states.empty()
    assert broken in await _folder_contents(mail_system, account)  # kept, not deleted


@pytest.mark.mailsystem
async def test_cancelling_run_logs_out_politely(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    recorder = Recorder()
    with _watch_log("waiting in IDLE") as idling:
        async with _running(recorder.watcher(_target(mail_system, account))) as task:
            await idling.wait_for(1)
    assert task.cancelled()
    log_file = mail_system.layout.logs / "dovecot.log"
    marker = f"imap({account.address})"
    async with asyncio.timeout(WAIT):
        # Dovecot writes the line as it closes the session; a file can only be polled.
        while not any(  # noqa: ASYNC110
            marker in line and "Disconnected: Logged out" in line
            for line in log_file.read_text(errors="replace").splitlines()
        ):
            await asyncio.sleep(0.05)
