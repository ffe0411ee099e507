"""The adapters' view of the configuration: one SMTP target per route, one IMAP target per mailbox.

Written once, so the sender and the watchers read routes and mailboxes the same way. Every secret
value of the route's or mailbox's configuration goes along (`secrets`), so whatever the adapter
reports masks it, including secrets added to the configuration later. A route or mailbox that
signs in with a token gets its credential's shared `OAuthSignIn` (agent.oauth.sources) instead of
a password.
"""

from __future__ import annotations

from agent.config import Mailbox, Route
from agent.imap import ImapTarget
from agent.oauth import OAuthSignIn
from agent.secrets import secret_values
from agent.smtp.sender import SmtpTarget

__all__ = ["imap_target", "smtp_target"]


def smtp_target(route: Route, oauth: OAuthSignIn | None = None) -> SmtpTarget:
    """The SMTP adapter's view of a configured route; `oauth` for a route that uses a token."""
    auth = route.auth
    if auth is not None and auth.uses_token and oauth is None:
        raise ValueError(f"route {route.name} signs in with a token: its OAuthSignIn is needed")
    return SmtpTarget(
        route=route.name,
        host=route.host,
        port=route.port,
        tls=route.tls,
        tls_verify=route.tls_verify,
        ca_file=route.ca_file,
        username=auth.username if auth is not None else None,
        password=(
            auth.password.get_secret_value()
            if auth is not None and auth.password is not None
            else None
        ),
        ehlo_name=route.ehlo_name,
        connect_timeout=route.timeouts.connect,
        stage_timeout=route.timeouts.stage,
        total_timeout=route.timeouts.total,
        secrets=tuple(secret_values(route)),
        oauth=oauth if auth is not None and auth.uses_token else None,
    )


def imap_target(mailbox: Mailbox, oauth: OAuthSignIn | None = None) -> ImapTarget:
    """The IMAP adapter's view of a configured seed or bounce mailbox; `oauth` for a mailbox
    that uses a token."""
    auth = mailbox.auth
    if auth.uses_token and oauth is None:
        raise ValueError(f"mailbox {mailbox.name} signs in with a token: its OAuthSignIn is needed")
    return ImapTarget(
        mailbox=mailbox.name,
        host=mailbox.host,
        port=mailbox.port,
        tls=mailbox.tls,
        tls_verify=mailbox.tls_verify,
        ca_file=mailbox.ca_file,
        username=auth.username,
        password=auth.password.get_secret_value() if auth.password is not None else None,
        secrets=tuple(secret_values(mailbox)),
        connect_timeout=mailbox.timeouts.connect,
        command_timeout=mailbox.timeouts.command,
        oauth=oauth if auth.uses_token else None,
    )
