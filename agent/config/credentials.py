"""Credentials: a username and a password, given inline or read from a file at load.

The same section serves SMTP AUTH of a route, IMAP LOGIN of a mailbox, the sandbox's users and
the HTTP server's basic auth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.config.base import _Model
from agent.config.errors import _Problems
from agent.config.interpolation import _PLACEHOLDER, _fail_closed, _read_secret_file
from agent.config.scalars import Text
from agent.secrets import Secret

__all__ = ["Auth"]


class Auth(_Model):
    """SMTP AUTH or IMAP LOGIN credentials; the password is read from password_file at load."""

    username: Text
    password: Secret
    password_file: Path | None = None  # where password was read from, if it came from a file

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        if "password" in data and "password_file" in data:
            problems.add(("password_file",), "expected either password or password_file, not both")
            del data["password_file"]
        elif "password_file" in data:
            _read_secret_file(
                data, problems, base_dir, value_key="password", file_key="password_file"
            )
            if data["password"] == "":
                problems.add(("password_file",), "expected a file holding a non-empty password")
        elif "password" not in data:
            problems.add(("password",), "missing required key (or set password_file)")
            data["password"] = _PLACEHOLDER
        elif data["password"] == "":
            problems.add(("password",), "expected a non-empty password")

    def _check(self, problems: _Problems) -> None:
        _fail_closed(self.password, "password", problems)
