"""The IMAP package's one logger.

Every module of `agent.imap` logs through `LOG`, named `agent.imap.watcher` as it was when the
package was one module: operators' log lines and filters keep their logger name.
"""

from __future__ import annotations

import logging
from typing import Final

__all__ = ["LOG"]

LOG: Final = logging.getLogger("agent.imap.watcher")
