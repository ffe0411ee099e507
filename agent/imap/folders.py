"""Which folders of a seed mailbox to watch: the inbox, and the junk folder if there is one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from agent.imap.connection import Connection, redactor_for
from agent.imap.errors import FolderNotFound
from agent.imap.responses import ListedFolder
from agent.imap.target import ImapTarget
from agent.model import ErrorKind

__all__ = ["JUNK_FOLDER_NAMES", "FolderSet", "choose_folders", "detect_folders"]

# Well-known junk folder names, in order of preference, for servers without SPECIAL-USE.
JUNK_FOLDER_NAMES: Final = (
    "Junk",
    "Spam",
    "[Gmail]/Spam",
    "[Google Mail]/Spam",
    "Junk Email",
    "Junk E-mail",
    "Junk Mail",
    "Bulk Mail",
    "Bulk",
    "INBOX.Junk",
    "INBOX.Spam",
    "INBOX/Junk",
    "INBOX/Spam",
    "INBOX.Junk E-mail",
    "INBOX.Junk Email",
)


@dataclass(frozen=True)
class FolderSet:
    """The folders of one mailbox: the inbox, the junk folder if any, every selectable name."""

    inbox: str
    junk: str | None
    names: tuple[str, ...]


def choose_folders(
    folders: Iterable[ListedFolder], *, junk_override: str | None = None
) -> FolderSet:
    """The inbox and junk folder among LIST entries.

    Junk is the override when given (exact name, else case-insensitive), else the first selectable
    folder with the SPECIAL-USE attribute \\Junk, else the first of `JUNK_FOLDER_NAMES` present
    (case-insensitive), else None. Raises `FolderNotFound` when the override is not listed.
    """
    selectable = [folder for folder in folders if folder.selectable]
    names = tuple(folder.name for folder in selectable)
    inbox = _find_name(names, "INBOX") or "INBOX"
    if junk_override is not None:
        junk = _find_name(names, junk_override)
        if junk is None:
            listed = ", ".join(repr(name) for name in names) or "nothing"
            raise FolderNotFound(
                ErrorKind.PROTOCOL,
                f"junk folder {junk_override!r} not found; the server lists {listed}",
            )
        return FolderSet(inbox=inbox, junk=junk, names=names)
    junk = next((folder.name for folder in selectable if "\\junk" in folder.flags), None)
    if junk is None:
        junk = next(filter(None, (_find_name(names, known) for known in JUNK_FOLDER_NAMES)), None)
    return FolderSet(inbox=inbox, junk=junk, names=names)


def _find_name(names: Sequence[str], wanted: str) -> str | None:
    if wanted in names:
        return wanted
    folded = wanted.casefold()
    return next((name for name in names if name.casefold() == folded), None)


async def detect_folders(target: ImapTarget, *, junk_override: str | None = None) -> FolderSet:
    """LOGIN and LIST once, and pick the inbox and junk folder (see `choose_folders`)."""
    conn = await Connection.open(target)
    clean = False
    try:
        await conn.login()
        listing = await conn.list_folders()
        clean = True
    finally:
        await conn.close(logout=clean)
    try:
        return choose_folders(listing, junk_override=junk_override)
    except FolderNotFound as exc:  # it quotes the server's folder names: mask them like the rest
        raise FolderNotFound(exc.kind, redactor_for(target)(exc.message)) from None
