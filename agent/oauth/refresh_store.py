"""Where a credential's refresh token lives between runs, and the rule for which one is current.

The file's first line is the refresh token (the form `refresh_token_file` has when an operator
writes it). A token the endpoint rotates is written back atomically: a temporary file in the same
directory, fsync, rename, fsync of the directory; the file is mode 0600 and a directory the agent
creates is mode 0700.

Which token is current at start:
- `refresh_token_file` configured: that file, always (it is also where rotations go);
- `refresh_token` configured: the state file (`<state_dir>/oauth/<credential>.refresh-token`)
  when it was written by a rotation of that same configured token (its second line records the
  configured token's SHA-256), else the configured token: an operator who pastes a new
  refresh_token into the config gets it used, and an agent restarted after a rotation uses the
  rotated one;
- neither: the state file (as `oauth login` or an operator writes it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Final

from agent.oauth.token_source import TokenError, TokenErrorKind

__all__ = ["RefreshTokenStore"]

_FROM_CONFIG: Final = "# rotated from the configured refresh_token sha256:"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class RefreshTokenStore:
    """The current refresh token of one credential: read at start, replaced on rotation."""

    def __init__(self, path: Path, *, credential: str, configured: str | None = None) -> None:
        self.path = path
        self._credential = credential
        self._configured = configured

    def _error(self, message: str) -> TokenError:
        return TokenError(TokenErrorKind.FILE, self._credential, message)

    def load(self) -> str:
        """The current refresh token, by the rule in the module docstring; raises TokenError."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        except (OSError, UnicodeDecodeError) as exc:
            if self._configured is not None:
                return self._configured
            raise self._error(
                f"cannot read the refresh token file {self.path}: {_why(exc)}"
            ) from None
        token = lines[0].strip() if lines else ""
        if self._configured is not None:
            if token and _FROM_CONFIG + _digest(self._configured) in lines[1:]:
                return token
            return self._configured
        if not token:
            raise self._error(
                f"no refresh token: {self.path} is missing or empty (write the first refresh "
                "token there, or set oauth2.refresh_token)"
            )
        return token

    def save(self, token: str) -> None:
        """Replace the stored token atomically (mode 0600); raises TokenError."""
        lines = [token]
        if self._configured is not None:
            lines.append(_FROM_CONFIG + _digest(self._configured))
        directory = self.path.parent
        try:
            if not directory.exists():
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.")  # 0600
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write("\n".join(lines) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename itself survives a crash
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise self._error(
                f"cannot write the rotated refresh token to {self.path}: {_why(exc)}"
            ) from None


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return type(exc).__name__
