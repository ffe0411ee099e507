"""Gmail inbox categories: the inbox watcher asks a server that advertises X-GM-EXT-1 which tab a
message is in (`UID SEARCH UID <uid> X-GM-RAW "category:<tab>"`), against scripted servers that
answer as Google documents, and the real Dovecot (no X-GM-EXT-1: nothing changes); the matcher
keeps a category for inbox placements only."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.imap import Disposition
from agent.model import ErrorKind, InboxCategory
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder as MetricsRecorder
from agent.probing.matcher import Matcher
from agent.probing.outcomes import Outcomes
from agent.probing.probe_message import build_probe_message
from agent.reading.probe_token import KeyRing, new_probe_id
from agent.store.ledger import Ledger
from tests.imap_helpers import (
    WAIT,
    Recorder,
    deliver,
    dovecot_target,
    running,
    scripted_target,
    subject_of,
    unique,
)
from tests.mailsystem import MailSystem
from tests.one_pair_config import SECRET, one_pair_config
from tests.scripted_imap import (
    CAPABILITIES,
    Expect,
    Hang,
    Pause,
    ScriptedImapServer,
    Send,
    Step,
    fetch_response,
    gmail_category_search,
    logged_in,
)

BODY = b"Subject: a probe\r\n\r\nhello\r\n"
GMAIL = f"{CAPABILITIES} X-GM-EXT-1"
ORDER = [category.value for category in InboxCategory]  # the order the watcher asks in


def _until_fetched(capabilities: str) -> tuple[Step, ...]:
    """Logged in, INBOX selected, message 1 found and fetched."""
    return (
        *logged_in(capabilities),
        Expect("SELECT"),
        Send("* 1 EXISTS\n* OK [UIDVALIDITY 42] UIDs valid\n{tag} OK [READ-WRITE] Selected"),
        Expect("UID SEARCH"),
        Send("* SEARCH 1\n{tag} OK Searched"),
        Expect("UID FETCH"),
        fetch_response(1, BODY),
        Send("{tag} OK Fetched"),
    )


# After the hand-over: the search for more finds nothing new, and the watcher logs out.
_DONE: tuple[Step, ...] = (
    Expect("UID SEARCH"),
    Send("* SEARCH 1\n{tag} OK Searched"),  # `2:*` still matches the highest UID
    Expect("LOGOUT"),
    Send("* BYE\n{tag} OK Logged out"),
)


def _category_searches(server: ScriptedImapServer) -> list[bytes]:
    return [line.split(b" ", 1)[1] for line in server.received if b"X-GM-RAW" in line]


def _asked(*categories: str) -> list[bytes]:
    return [f'UID SEARCH UID 1 X-GM-RAW "category:{c}"\r\n'.encode() for c in categories]


@pytest.mark.parametrize("category", list(InboxCategory))
async def test_an_inbox_message_on_a_gmail_server_carries_the_tab_the_server_names(
    category: InboxCategory,
) -> None:
    index = ORDER.index(category.value)
    searches = [
        step
        for name in ORDER[: index + 1]
        for step in gmail_category_search(1, name, found=name == category.value)
    ]
    async with ScriptedImapServer(*_until_fetched(GMAIL), *searches, *_DONE) as server:
        recorder = Recorder()
        watcher = recorder.watcher(scripted_target(server.port), inbox_categories=True)
        async with asyncio.timeout(WAIT):
            await watcher.check_once()
    message = recorder.messages.get_nowait()
    assert (message.uid, message.category) == (1, category)
    # Primary first, and no search after the tab that matched.
    assert _category_searches(server) == _asked(*ORDER[: index + 1])
    assert recorder.states.get_nowait() == (True, None)
    assert recorder.states.empty()


async def test_a_message_in_no_tab_gets_no_category_after_all_five_were_asked() -> None:
    # Google: Primary holds what no other tab does, and `category:primary` finds it. A server
    # that advertises X-GM-EXT-1 yet matches no tab does not know categories: nothing is made up.
    searches = [step for name in ORDER for step in gmail_category_search(1, name, found=False)]
    async with ScriptedImapServer(*_until_fetched(GMAIL), *searches, *_DONE) as server:
        recorder = Recorder()
        watcher = recorder.watcher(scripted_target(server.port), inbox_categories=True)
        async with asyncio.timeout(WAIT):
            await watcher.check_once()
    assert recorder.messages.get_nowait().category is None
    assert _category_searches(server) == _asked(*ORDER)


@pytest.mark.parametrize(
    ("capabilities", "inbox_categories"),
    [
        (CAPABILITIES, True),  # an inbox on a server without the extension
        (GMAIL, False),  # a Gmail folder that is not the inbox (Spam, an extra folder)
    ],
)
async def test_no_category_search_is_sent_without_the_extension_or_outside_the_inbox(
    capabilities: str, inbox_categories: bool
) -> None:
    async with ScriptedImapServer(*_until_fetched(capabilities), *_DONE) as server:
        recorder = Recorder()
        watcher = recorder.watcher(scripted_target(server.port), inbox_categories=inbox_categories)
        async with asyncio.timeout(WAIT):
            await watcher.check_once()
    assert recorder.messages.get_nowait().category is None
    assert _category_searches(server) == []
    assert [line.split(b" ", 1)[1].split(b" ", 2)[:2] for line in server.received[-3:]] == [
        [b"UID", b"FETCH"],
        [b"UID", b"SEARCH"],
        [b"LOGOUT\r\n"],
    ]


@pytest.mark.parametrize("refusal", ["NO", "BAD"])
async def test_a_refused_category_search_costs_only_the_category_and_is_counted(
    refusal: str,
) -> None:
    script = (
        *_until_fetched(GMAIL),
        Expect('UID SEARCH UID 1 X-GM-RAW "category:primary"'),
        Send(f"{{tag}} {refusal} [CANNOT] Unsupported search"),
        Expect("UID STORE"),
        Send("{tag} OK Stored"),
        Expect("UID EXPUNGE"),
        Send("* 1 EXPUNGE\n{tag} OK Expunged"),
        *_DONE,
    )
    async with ScriptedImapServer(*script) as server:
        recorder = Recorder(Disposition.DELETE)
        watcher = recorder.watcher(scripted_target(server.port), inbox_categories=True)
        async with asyncio.timeout(WAIT):
            await watcher.check_once()
    message = recorder.messages.get_nowait()
    assert (message.uid, message.category) == (1, None)
    assert _category_searches(server) == _asked("primary")  # no other tab asked after a refusal
    assert any(b"UID EXPUNGE 1" in line for line in server.received)  # the session went on
    assert recorder.states.get_nowait() == (True, None)
    assert recorder.states.get_nowait() == (True, ErrorKind.PROTOCOL)  # counted, still up
    assert recorder.states.empty()


async def test_an_unanswered_category_search_hands_the_message_over_then_reconnects() -> None:
    # A silent server ends the session as any unanswered command does, but only after the
    # message was handed over without a category; the delete it asked for is done next session.
    expunged, go_on = asyncio.Event(), asyncio.Event()
    silent = (
        *_until_fetched(GMAIL),
        Expect('UID SEARCH UID 1 X-GM-RAW "category:primary"'),
        Hang(),
    )
    next_session = (
        *logged_in(GMAIL),
        Expect("SELECT"),
        Send("* 1 EXISTS\n* OK [UIDVALIDITY 42] UIDs valid\n{tag} OK [READ-WRITE] Selected"),
        Expect("UID STORE"),
        Send("{tag} OK Stored"),
        Expect("UID EXPUNGE"),
        Pause(expunged, go_on),
        Send("* 1 EXPUNGE\n{tag} OK Expunged"),
        Hang(),
    )
    async with ScriptedImapServer(*silent, then=next_session) as server:
        recorder = Recorder(Disposition.DELETE)
        # command_timeout is 0.5 s (scripted_target)
        watcher = recorder.watcher(scripted_target(server.port), inbox_categories=True)
        async with running(watcher):
            message = await recorder.next_message()
            assert (message.uid, message.category) == (1, None)
            assert await recorder.next_state() == (True, None)
            assert await recorder.next_state() == (False, ErrorKind.TIMEOUT)
            assert await recorder.next_state() == (True, None)
            async with asyncio.timeout(WAIT):
                await expunged.wait()
            go_on.set()
    stores = [line for line in server.received if b"UID STORE" in line]
    assert len(stores) == 1  # not on the connection that timed out, once on the next
    assert recorder.messages.empty()  # handed over once: the next session only deletes it


@pytest.mark.mailsystem
async def test_dovecot_without_the_extension_hands_inbox_messages_over_without_a_category(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    subject = unique("no tabs")
    await deliver(mail_system, account, subject)
    recorder = Recorder()
    watcher = recorder.watcher(dovecot_target(mail_system, account), inbox_categories=True)
    async with running(watcher):
        assert await recorder.next_state() == (True, None)
        message = await recorder.next_message()
    assert (subject_of(message), message.category) == (subject, None)
    assert recorder.states.empty()  # no search was refused: none was sent


@pytest.mark.parametrize(
    ("folder", "kept"), [("INBOX", InboxCategory.SOCIAL), ("Junk", None), ("Archive", None)]
)
def test_the_matcher_keeps_a_category_for_an_inbox_placement_only(
    tmp_path: Path, folder: str, kept: InboxCategory | None
) -> None:
    config = one_pair_config(tmp_path, imap_port=1, mailbox={"address": "seed@seed.test"})
    mailbox = config.mailbox("m")
    probe_id = new_probe_id()
    message = build_probe_message(
        probe_id=probe_id,
        secret=SECRET.encode(),
        header_from="probe@client.test",
        to="seed@seed.test",
        route="r",
        mailbox="m",
        sent_at=datetime.now(UTC),
    )
    with Ledger.in_state_dir(config.state_dir) as ledger:
        ledger.record_sending(
            probe_id=probe_id, route="r", mailbox="m", created_at=1.0, deadline_at=601.0
        )
        matcher = Matcher(
            ledger=ledger,
            outcomes=Outcomes(ledger, MetricsRecorder(new_registry())),
            keys=KeyRing(SECRET.encode()),
            cleanup=config.probes.cleanup,
        )
        matcher.handle(
            mailbox,
            folder,
            message.as_bytes(),
            seen_at=2.0,
            junk="Junk",
            category=InboxCategory.SOCIAL,  # as a watcher would never send it outside INBOX
        )
        stored = ledger.get(probe_id)
    assert stored is not None and stored.arrival is not None
    assert (stored.arrival.folder, stored.arrival.category) == (folder, kept)
