"""The folder watcher: hand-over, IDLE and polling, deletion, reconnection and backoff, against
the real Dovecot of the test mail system and scripted servers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from agent.imap import Disposition, FetchedMessage, FolderWatcher, backoff_delay
from agent.model import ErrorKind, FoundBy
from agent.secrets import MASK
from tests.imap_helpers import (
    WAIT,
    Recorder,
    deliver,
    deliver_spam_via_mx,
    dovecot_target,
    folder_contents,
    kick,
    running,
    scripted_target,
    subject_of,
    unique,
    watch_log,
)
from tests.mailsystem import MailSystem
from tests.scripted_imap import (
    CAPABILITY_EXCHANGE,
    GREETING,
    LOGGED_IN,
    Expect,
    Hang,
    Pause,
    Raw,
    ScriptedImapServer,
    Send,
    Step,
    fetch_response,
)


def test_fetched_message_knows_it_was_truncated_and_keeps_raw_out_of_repr() -> None:
    message = FetchedMessage(
        mailbox="m",
        folder="INBOX",
        uid=7,
        raw=b"Subject: x\r\n",
        seen_at=1.0,
        size=500,
        found_by=FoundBy.PUSH,
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
            await recorder.watcher(scripted_target(server.port)).check_once()
        assert any(b"LOGOUT" in line for line in server.received)
    message = recorder.messages.get_nowait()
    assert (message.uid, message.raw, message.size) == (1, body, 999)
    assert recorder.messages.empty()
    assert recorder.states.get_nowait() == (True, None)


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
        target = dataclasses.replace(scripted_target(server.port), secrets=("tok-3xtra-Secret",))
        watcher = FolderWatcher(target, "INBOX", on_message=on_message, on_state=on_state)
        async with asyncio.timeout(WAIT):
            await watcher.check_once()
    assert "on_message failed for UID 1; the message is kept" in caplog.text
    assert f"RuntimeError: the consumer choked on {MASK}" in caplog.text
    assert "3xtra" not in caplog.text


async def test_run_keeps_reconnecting_after_failures() -> None:
    async with ScriptedImapServer(GREETING, Hang()) as server:
        recorder = Recorder()
        watcher = recorder.watcher(scripted_target(server.port, connect_timeout=0.2))
        async with running(watcher):
            assert await recorder.next_state() == (False, ErrorKind.TIMEOUT)
            assert await recorder.next_state() == (False, ErrorKind.TIMEOUT)
            async with asyncio.timeout(WAIT):
                await server.wait_for_connections(2)


BODY = b"Subject: a probe\r\n\r\nhello\r\n"

# One whole session: a message already there is handed over and deleted, then IDLE, a check out
# of IDLE (DONE, NOOP, UID SEARCH), and IDLE again.
SESSION: tuple[Step, ...] = (
    *LOGGED_IN,
    Expect("SELECT"),
    Send("* 1 EXISTS\n* OK [UIDVALIDITY 42] UIDs valid\n{tag} OK [READ-WRITE] Selected"),
    Expect("UID SEARCH"),
    Send("* SEARCH 1\n{tag} OK Searched"),
    Expect("UID FETCH"),
    fetch_response(1, BODY),
    Send("{tag} OK Fetched"),
    Expect("UID STORE"),
    Send("{tag} OK Stored"),
    Expect("UID EXPUNGE"),
    Send("* 1 EXPUNGE\n{tag} OK Expunged"),
    Expect("UID SEARCH"),
    Send("* SEARCH\n{tag} OK Searched"),
    Expect("IDLE"),
    Send("+ idling"),
    Expect("DONE"),
    Send("{tag} OK Idle completed"),
    Expect("NOOP"),
    Send("{tag} OK NOOP completed"),
    Expect("UID SEARCH"),
    Send("* SEARCH\n{tag} OK Searched"),
    Expect("IDLE"),
    Send("+ idling"),
    Hang(),
)


def silent_after(command: str) -> tuple[Step, ...]:
    """`SESSION` up to the first `command`, which the server then never answers."""
    cut = SESSION.index(Expect(command)) + 1
    return (*SESSION[:cut], Hang())


@pytest.mark.parametrize(
    ("command", "selected"),
    [
        ("LOGIN", False),
        ("SELECT", False),
        ("UID SEARCH", True),
        ("UID FETCH", True),
        ("UID STORE", True),
        ("UID EXPUNGE", True),
        ("IDLE", True),
        ("DONE", True),  # silent mid-IDLE: the check's DONE goes unanswered
        ("NOOP", True),  # IDLE ends, then the check's NOOP goes unanswered
    ],
)
async def test_a_command_left_unanswered_marks_the_connection_down_and_the_watcher_reconnects(
    command: str, selected: bool
) -> None:
    async with ScriptedImapServer(*silent_after(command)) as server:
        recorder = Recorder(Disposition.DELETE)
        # command_timeout is 0.5 s (scripted_target); the check out of IDLE comes at once.
        watcher = recorder.watcher(scripted_target(server.port), idle_check_interval=0.01)
        async with running(watcher):
            if selected:
                assert await recorder.next_state() == (True, None)
            assert await recorder.next_state() == (False, ErrorKind.TIMEOUT)
            async with asyncio.timeout(WAIT):
                await server.wait_for_connections(2)
    sent = [line.split(b" ", 1)[-1].upper() for line in server.received]
    assert any(line.startswith(command.encode()) for line in sent), sent


async def test_a_server_that_never_pushes_is_read_by_the_periodic_check() -> None:
    # The message is there, but the server says so only when asked (NOOP), never during IDLE.
    script = (
        *LOGGED_IN,
        Expect("SELECT"),
        Send("* 0 EXISTS\n* OK [UIDVALIDITY 42] UIDs valid\n{tag} OK [READ-WRITE] Selected"),
        Expect("UID SEARCH"),
        Send("* SEARCH\n{tag} OK Searched"),
        Expect("IDLE"),
        Send("+ idling"),
        Expect("DONE"),
        Send("{tag} OK Idle completed"),
        Expect("NOOP"),
        Send("* 1 EXISTS\n{tag} OK NOOP completed"),
        Expect("UID SEARCH"),
        Send("* SEARCH 1\n{tag} OK Searched"),
        Expect("UID FETCH"),
        fetch_response(1, BODY),
        Send("{tag} OK Fetched"),
        Expect("UID SEARCH"),
        Send("* SEARCH 1\n{tag} OK Searched"),  # `2:*` still matches the highest UID
        Expect("IDLE"),
        Send("+ idling"),
        Hang(),
    )
    async with ScriptedImapServer(*script) as server:
        recorder = Recorder()
        watcher = recorder.watcher(scripted_target(server.port), idle_check_interval=0.01)
        async with running(watcher):
            message = await recorder.next_message()
    assert (message.uid, message.raw, message.found_by) == (1, BODY, FoundBy.CHECK)
    assert recorder.states.get_nowait() == (True, None)
    assert recorder.states.empty()  # no failure: a check is not a reconnect


async def test_stop_during_the_store_lets_the_expunge_finish_before_run_ends() -> None:
    store_received, go_on = asyncio.Event(), asyncio.Event()
    script = (
        *LOGGED_IN,
        Expect("SELECT"),
        Send("* 1 EXISTS\n* OK [UIDVALIDITY 42] UIDs valid\n{tag} OK [READ-WRITE] Selected"),
        Expect("UID SEARCH"),
        Send("* SEARCH 1\n{tag} OK Searched"),
        Expect("UID FETCH"),
        fetch_response(1, BODY),
        Send("{tag} OK Fetched"),
        Expect("UID STORE"),
        Pause(store_received, go_on),
        Send("{tag} OK Stored"),
        Expect("UID EXPUNGE"),
        Send("* 1 EXPUNGE\n{tag} OK Expunged"),
        Expect("LOGOUT"),
        Send("* BYE\n{tag} OK Logged out"),
    )
    async with ScriptedImapServer(*script) as server:
        recorder = Recorder(Disposition.DELETE)
        watcher = recorder.watcher(scripted_target(server.port))
        task = asyncio.create_task(watcher.run())
        async with asyncio.timeout(WAIT):
            await store_received.wait()
        watcher.stop()
        assert watcher.handing_over and not task.done()
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(WAIT):
                await task
    commands = [line.split(b" ", 2)[1:] for line in server.received]
    assert [b"UID", b"EXPUNGE 1\r\n"] in commands
    assert [b"LOGOUT\r\n"] in commands  # and a polite goodbye after it
    assert recorder.states.get_nowait() == (True, None)
    assert recorder.states.empty()


async def test_stop_while_waiting_in_idle_ends_run_at_once_with_a_logout() -> None:
    script = (
        *LOGGED_IN,
        Expect("SELECT"),
        Send("* 0 EXISTS\n* OK [UIDVALIDITY 42] UIDs valid\n{tag} OK [READ-WRITE] Selected"),
        Expect("UID SEARCH"),
        Send("* SEARCH\n{tag} OK Searched"),
        Expect("IDLE"),
        Send("+ idling"),
        Expect("DONE"),
        Send("{tag} OK Idle completed"),
        Expect("LOGOUT"),
        Send("* BYE\n{tag} OK Logged out"),
    )
    async with ScriptedImapServer(*script) as server:
        recorder = Recorder()
        watcher = recorder.watcher(scripted_target(server.port), idle_check_interval=3600)
        with watch_log("waiting in IDLE") as idling:
            task = asyncio.create_task(watcher.run())
            await idling.wait_for(1)
        watcher.stop()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(WAIT):
                await task
    assert any(b"LOGOUT" in line for line in server.received)


# --- the real Dovecot -----------------------------------------------------------------------------


@pytest.mark.mailsystem
async def test_messages_already_in_the_folder_are_handed_over_on_start_without_seen(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    first, second = unique("first"), unique("second")
    await deliver(mail_system, account, first)
    await deliver(mail_system, account, second)
    recorder = Recorder()
    async with running(recorder.watcher(dovecot_target(mail_system, account))):
        assert await recorder.next_state() == (True, None)
        one, two = await recorder.next_message(), await recorder.next_message()
    assert [subject_of(one), subject_of(two)] == [first, second]
    assert one.uid < two.uid
    assert one.found_by is two.found_by is FoundBy.SELECT
    assert (one.mailbox, one.folder) == ("seed-under-test", "INBOX")
    assert not one.truncated and one.size == len(one.raw)
    assert one.seen_at > 0
    contents = await folder_contents(mail_system, account)
    assert set(contents) == {first, second}
    assert all(b"\\Seen" not in flags for flags in contents.values())


@pytest.mark.mailsystem
async def test_a_new_delivery_wakes_the_watcher_from_idle_and_it_idles_again(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    recorder = Recorder()
    # Polling and the check out of IDLE are an hour away: only the server's push can wake the
    # watcher.
    watcher = recorder.watcher(
        dovecot_target(mail_system, account), poll_interval=3600, idle_check_interval=3600
    )
    with watch_log("waiting in IDLE") as idling:
        async with running(watcher):
            await idling.wait_for(1)
            subject = unique("pushed")
            await deliver(mail_system, account, subject)
            message = await recorder.next_message()
            assert (subject_of(message), message.found_by) == (subject, FoundBy.PUSH)
            await idling.wait_for(2)
            subject = unique("pushed again")
            await deliver(mail_system, account, subject)
            message = await recorder.next_message()
            assert (subject_of(message), message.found_by) == (subject, FoundBy.PUSH)
    assert recorder.states.get_nowait() == (True, None)
    assert recorder.states.empty()


@pytest.mark.mailsystem
async def test_dovecot_answers_the_check_out_of_idle_and_the_session_stays_up(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    recorder = Recorder()
    watcher = recorder.watcher(dovecot_target(mail_system, account), idle_check_interval=0.05)
    with watch_log("checking the folder") as checks:
        async with running(watcher):
            await checks.wait_for(3)
    assert recorder.states.get_nowait() == (True, None)
    assert recorder.states.empty()


@pytest.mark.mailsystem
async def test_a_new_delivery_is_found_by_polling_without_idle(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    recorder = Recorder()
    watcher = recorder.watcher(
        dovecot_target(mail_system, account), use_idle=False, poll_interval=0.1
    )
    with watch_log("waiting in IDLE") as idling:
        async with running(watcher):
            assert await recorder.next_state() == (True, None)
            subject = unique("polled")
            await deliver(mail_system, account, subject)
            assert subject_of(await recorder.next_message()) == subject
    assert idling.count == 0


@pytest.mark.mailsystem
async def test_the_junk_watcher_sees_mail_the_mx_files_as_spam(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    recorder = Recorder()
    async with running(recorder.watcher(dovecot_target(mail_system, account), "Junk")):
        assert await recorder.next_state() == (True, None)
        subject = unique("spammy")
        await deliver_spam_via_mx(mail_system, account, subject)
        message = await recorder.next_message()
    assert message.folder == "Junk"
    assert subject_of(message).startswith(subject)


@pytest.mark.mailsystem
async def test_delete_removes_the_message_from_the_folder(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    doomed, kept = unique("doomed"), unique("kept")
    await deliver(mail_system, account, doomed)
    recorder = Recorder(Disposition.DELETE)
    await recorder.watcher(dovecot_target(mail_system, account)).check_once()
    assert subject_of(recorder.messages.get_nowait()) == doomed
    await deliver(mail_system, account, kept)
    assert set(await folder_contents(mail_system, account)) == {kept}


@pytest.mark.mailsystem
async def test_keep_leaves_the_message_and_it_is_not_handed_over_twice(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    first, second = unique("kept"), unique("later")
    await deliver(mail_system, account, first)
    recorder = Recorder(Disposition.KEEP)
    watcher = recorder.watcher(dovecot_target(mail_system, account))
    await watcher.check_once()
    await watcher.check_once()
    await deliver(mail_system, account, second)
    await watcher.check_once()
    handed = [subject_of(recorder.messages.get_nowait()) for _ in range(recorder.messages.qsize())]
    assert handed == [first, second]
    assert set(await folder_contents(mail_system, account)) == {first, second}


@pytest.mark.mailsystem
async def test_after_the_server_drops_the_connection_the_watcher_reconnects_and_sees_new_mail(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    before, after = unique("before kick"), unique("after kick")
    await deliver(mail_system, account, before)
    recorder = Recorder()
    watcher = recorder.watcher(
        dovecot_target(mail_system, account), poll_interval=3600, idle_check_interval=3600
    )
    with watch_log("waiting in IDLE") as idling:
        async with running(watcher):
            assert await recorder.next_state() == (True, None)
            assert subject_of(await recorder.next_message()) == before
            await idling.wait_for(1)
            await kick(mail_system, account)
            assert await recorder.next_state() == (False, ErrorKind.CLOSED)
            assert await recorder.next_state() == (True, None)
            await deliver(mail_system, account, after)
            # The message from before the kick would come first if it were handed over again.
            assert subject_of(await recorder.next_message()) == after


@pytest.mark.mailsystem
async def test_a_polling_watcher_notices_a_drop_while_waiting_and_catches_up(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    recorder = Recorder()
    watcher = recorder.watcher(
        dovecot_target(mail_system, account), use_idle=False, poll_interval=3600
    )
    async with running(watcher):
        assert await recorder.next_state() == (True, None)
        subject = unique("while waiting")
        await deliver(mail_system, account, subject)  # the next poll is an hour away...
        await kick(mail_system, account)
        assert await recorder.next_state() == (False, ErrorKind.CLOSED)
        assert await recorder.next_state() == (True, None)
        assert subject_of(await recorder.next_message()) == subject  # ...the new session finds it


@pytest.mark.mailsystem
async def test_a_huge_message_is_handed_over_truncated(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    subject = unique("huge")
    await deliver(mail_system, account, subject, body=("x" * 76 + "\n") * 4000)
    recorder = Recorder()
    await recorder.watcher(
        dovecot_target(mail_system, account), max_message_bytes=10_000
    ).check_once()
    message = recorder.messages.get_nowait()
    assert len(message.raw) == 10_000
    assert message.size > 300_000
    assert message.truncated
    assert subject_of(message) == subject  # the headers are in the part that was kept


@pytest.mark.mailsystem
async def test_an_on_message_that_raises_does_not_stop_the_watcher(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    broken, fine = unique("consumer breaks"), unique("consumer fine")
    recorder = Recorder(Disposition.DELETE, fail=1)
    async with running(recorder.watcher(dovecot_target(mail_system, account))):
        assert await recorder.next_state() == (True, None)
        await deliver(mail_system, account, broken)
        assert subject_of(await recorder.next_message()) == broken
        await deliver(mail_system, account, fine)
        assert subject_of(await recorder.next_message()) == fine
    assert recorder.states.empty()
    assert broken in await folder_contents(mail_system, account)  # kept, not deleted


@pytest.mark.mailsystem
async def test_a_message_to_retry_is_kept_and_handed_over_again_without_new_mail(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    subject = unique("retry")
    await deliver(mail_system, account, subject)
    answers = [Disposition.RETRY, Disposition.RETRY, Disposition.KEEP]
    handed: asyncio.Queue[FetchedMessage] = asyncio.Queue()

    async def on_message(message: FetchedMessage) -> Disposition:
        await handed.put(message)
        return answers.pop(0)

    # The periodic check is an hour away and no mail comes: only the retry brings the next pass.
    watcher = FolderWatcher(
        dovecot_target(mail_system, account),
        "INBOX",
        on_message=on_message,
        on_state=lambda up, kind: None,
        poll_interval=0.1,
        idle_check_interval=1200,
    )
    async with running(watcher):
        async with asyncio.timeout(WAIT):
            first, second, third = [await handed.get() for _ in range(3)]
    assert first.uid == second.uid == third.uid
    assert first.seen_at == second.seen_at == third.seen_at  # when it was first seen
    assert subject_of(third) == subject
    assert subject in await folder_contents(mail_system, account)  # kept all along


@pytest.mark.mailsystem
async def test_cancelling_run_logs_out_politely(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    recorder = Recorder()
    with watch_log("waiting in IDLE") as idling:
        async with running(recorder.watcher(dovecot_target(mail_system, account))) as task:
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
