"""Access tokens from outside the agent: a command that prints one, or a file that holds one.

`token_command` is what msmtp's `passwordeval` and mutt's `oauth2.py` users already have: an argv
run without a shell, with a deadline; its stdout's first line is the token. Its stderr may quote
secrets (a refresh token in a failing request), so a failure keeps only a short excerpt with
anything that looks like a token masked. `token_file` is re-read whenever the file changes (a
sidecar that renews it, a mounted Kubernetes secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from agent.oauth.token_source import AccessToken, TokenError, TokenErrorKind
from agent.secrets import MASK

__all__ = ["TokenCommand", "TokenFile", "excerpt"]

_EXCERPT: Final = 200  # characters of stderr kept in a message
# Runs of token-like characters long enough to be a credential: JWTs, refresh tokens, secrets.
_TOKEN_LIKE: Final = re.compile(r"[A-Za-z0-9_\-+/=.~]{20,}")


def excerpt(stderr: bytes) -> str:
    """A bounded, masked excerpt of a command's stderr: its last non-empty line."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    masked = _TOKEN_LIKE.sub(MASK, last)
    return masked if len(masked) <= _EXCERPT else masked[: _EXCERPT - 3] + "..."


class TokenCommand:
    """Runs `argv` for each token; an unknown lifetime, so the lifecycle reuses it a while."""

    method: Final = "token_command"

    def __init__(self, argv: Sequence[str], *, credential: str, timeout: float) -> None:
        self._argv = tuple(argv)
        self._credential = credential
        self._timeout = timeout

    def _error(self, kind: TokenErrorKind, message: str) -> TokenError:
        return TokenError(kind, self._credential, f"token_command {self._argv[0]}: {message}")

    async def fetch(self, now: float) -> AccessToken:
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group: a timeout ends its children too
            )
        except OSError as exc:
            raise self._error(TokenErrorKind.COMMAND, f"cannot run: {exc.strerror}") from None
        try:
            async with asyncio.timeout(self._timeout):
                stdout, stderr = await process.communicate()
        except TimeoutError:
            raise self._error(
                TokenErrorKind.TIMEOUT, f"did not finish within {self._timeout:g} s"
            ) from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if process.returncode != 0:
            detail = excerpt(stderr)
            raise self._error(
                TokenErrorKind.COMMAND,
                f"exited with status {process.returncode}" + (f": {detail}" if detail else ""),
            )
        lines = stdout.decode("utf-8", "replace").splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise self._error(TokenErrorKind.COMMAND, "printed no token on its first line")
        return AccessToken(token)

    def changed(self) -> bool:
        return False


class TokenFile:
    """Reads the token from the file's first line, again whenever the file changes."""

    method: Final = "token_file"

    def __init__(self, path: Path, *, credential: str) -> None:
        self._path = path
        self._credential = credential
        self._seen: tuple[int, int, int] | None = None  # inode, size, mtime of the last read

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self._path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    async def fetch(self, now: float) -> AccessToken:
        stat = self._stat()
        try:
            lines = self._path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise TokenError(
                TokenErrorKind.FILE,
                self._credential,
                f"cannot read token_file {self._path}: {why}",
            ) from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise TokenError(
                TokenErrorKind.FILE, self._credential, f"token_file {self._path} is empty"
            )
        self._seen = stat
        return AccessToken(token)

    def changed(self) -> bool:
        """Whether the file was replaced or written since the last read."""
        return self._stat() != self._seen
