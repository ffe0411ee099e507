"""The real mail system the integration tests run against (see docs/development.md)."""

from tests.mailsystem.system import MailSystem, MailSystemError, ensure_installed

__all__ = ["MailSystem", "MailSystemError", "ensure_installed"]
