"""Which folders a watcher watches: the choice among LIST entries, and asking a real Dovecot."""

from __future__ import annotations

import asyncio

import pytest

from agent.imap import (
    FolderNotFound,
    ListedFolder,
    choose_folders,
    detect_folders,
    encode_modified_utf7,
)
from agent.model import ErrorKind
from tests.imap_helpers import (
    Recorder,
    dovecot_target,
    new_message,
    stdlib_imap,
    subject_of,
    unique,
)
from tests.mailsystem import MailSystem


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


# --- the real Dovecot -----------------------------------------------------------------------------


@pytest.mark.mailsystem
async def test_junk_folder_is_found_by_special_use(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    folders = await detect_folders(dovecot_target(mail_system, account))
    assert folders.inbox == "INBOX"
    assert folders.junk == "Junk"
    assert set(folders.names) == {"INBOX", "Junk", "Trash", "Sent", "Archive"}


@pytest.mark.mailsystem
async def test_junk_override_must_name_a_listed_folder(mail_system: MailSystem) -> None:
    account = mail_system.new_mailbox()
    target = dovecot_target(mail_system, account)
    assert (await detect_folders(target, junk_override="archive")).junk == "Archive"
    with pytest.raises(FolderNotFound):
        await detect_folders(target, junk_override="No Such Folder")


@pytest.mark.mailsystem
async def test_a_folder_with_spaces_and_non_ascii_is_listed_and_watched(
    mail_system: MailSystem,
) -> None:
    account = mail_system.new_mailbox()
    folder = "Ärger & Spaß"
    subject = unique("appended")

    def create_and_append() -> None:
        with stdlib_imap(mail_system, account) as imap:
            wire = f'"{encode_modified_utf7(folder)}"'
            assert imap.create(wire)[0] == "OK"
            message = new_message(account, subject).as_bytes()
            assert imap.append(wire, "", None, message)[0] == "OK"

    await asyncio.to_thread(create_and_append)
    target = dovecot_target(mail_system, account)
    assert folder in (await detect_folders(target)).names
    recorder = Recorder()
    await recorder.watcher(target, folder).check_once()
    message = recorder.messages.get_nowait()
    assert (message.folder, subject_of(message)) == (folder, subject)
