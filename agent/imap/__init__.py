"""IMAP adapter: watch folders of a seed mailbox and hand every new message to a callback.

The modules, each with one job:

* `target`: where and how to reach a mailbox (`ImapTarget`); `errors`: `ImapError`.
* `names`: mailbox names between text and the wire (modified UTF-7, quoting). No I/O.
* `responses`: parsers of LIST, FETCH, SEARCH and SELECT responses. No I/O.
* `folders`: which folders to watch (`choose_folders`, and `detect_folders` asking the server).
* `connection`: the only module that imports aioimaplib; one connection, every failure an
  `ImapError` with an `ErrorKind`, every secret masked.
* `watcher`: `FolderWatcher`, the per-folder state machine with reconnection and backoff.
* `calibration`: the IDLE calibration marker and the delay arithmetic. No I/O.
* `log`: the one logger of the package, and masking in its lines.
"""

from agent.imap.errors import FolderNotFound, ImapError
from agent.imap.folders import JUNK_FOLDER_NAMES, FolderSet, choose_folders, detect_folders
from agent.imap.names import decode_modified_utf7, encode_modified_utf7
from agent.imap.responses import ListedFolder, parse_list_response
from agent.imap.target import ImapTarget
from agent.imap.watcher import (
    Disposition,
    FetchedMessage,
    FolderWatcher,
    OnCalibration,
    OnMessage,
    OnState,
    backoff_delay,
)

__all__ = [
    "JUNK_FOLDER_NAMES",
    "Disposition",
    "FetchedMessage",
    "FolderNotFound",
    "FolderSet",
    "FolderWatcher",
    "ImapError",
    "ImapTarget",
    "ListedFolder",
    "OnCalibration",
    "OnMessage",
    "OnState",
    "backoff_delay",
    "choose_folders",
    "decode_modified_utf7",
    "detect_folders",
    "encode_modified_utf7",
    "parse_list_response",
]
