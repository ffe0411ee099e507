"""The adapters' view of the configuration: one SMTP target per route, one IMAP target per mailbox.

Written once, so the sender and the watchers read routes and mailboxes the same way. Every secret
value of the route's or mailbox's configuration goes along (`secrets`), so whatever the adapter
reports masks it, including secrets added to the configuration later.
"""

from __future__ import annotations

from agent.config import Mailbox, Route
from agent.imap import ImapTarget
from agent.secrets import secret_values
from agent.smtp.sender import SmtpTarget

__all__ = ["imap_target", "smtp_target"]


def smtp_target(route: Route) -> SmtpTarget:
    """The SMTP adapter's view of a configured route."""
    return SmtpTarget(
        route=route.name,
        host=route.host,
        port=route.port,
        tls=route.tls,
        tls_verify=route.tls_verify,
        ca_file=route.ca_file,
        username=route.auth.username if route.auth else None,
        password=route.auth.password.get_secret_value() if route.auth else None,
        ehlo_name=route.ehlo_name,
        connect_timeout=route.timeouts.connect,
        stage_timeout=route.timeouts.stage,
        total_timeout=route.timeouts.total,
        secrets=tuple(secret_values(route)),
    )


def imap_target(mailbox: Mailbox) -> ImapTarget:
    """The IMAP adapter's view of a configured seed or bounce mailbox."""
    return ImapTarget(
        mailbox=mailbox.name,
        host=mailbox.host,
        port=mailbox.port,
        tls=mailbox.tls,
        tls_verify=mailbox.tls_verify,
        ca_file=mailbox.ca_file,
        username=mailbox.auth.username,
        password=mailbox.auth.password.get_secret_value(),
        secrets=tuple(secret_values(mailbox)),
        connect_timeout=mailbox.timeouts.connect,
        command_timeout=mailbox.timeouts.command,
    )
