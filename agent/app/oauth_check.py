"""`oauth test`: get one access token for a route or mailbox and sign in with it, nothing more.

A mailbox: IMAP connect (TLS as configured), AUTHENTICATE (or LOGIN), SELECT INBOX, LOGOUT. A
route: connect, EHLO, STARTTLS, EHLO, AUTH, QUIT, without sending. It prints what it proved (the
token's expiry, the mechanism, the server's answer) or the error's kind and message; a refresh
token the endpoint rotates on the way is stored as the agent would store it. No token or secret
is printed: the edges mask them in every message.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TextIO

from agent.config import Config
from agent.imap.connection import Connection
from agent.imap.errors import ImapError
from agent.oauth.sources import OwnerKind, TokenSources
from agent.oauth.token_source import TokenError
from agent.probing.targets import imap_target, smtp_target
from agent.smtp.sender import sign_in

__all__ = ["oauth_test"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


async def oauth_test(config: Config, kind: OwnerKind, name: str, *, out: TextIO) -> int:
    """0: a token was obtained and the server accepted it; 1: either failed; 2: no such route
    or mailbox, or one that does not sign in with a token."""
    routes = {route.name: route for route in config.routes}
    mailboxes = {m.name: m for m in (*config.mailboxes, *config.bounce_mailboxes)}
    known = routes if kind == "route" else mailboxes
    if name not in known:
        names = ", ".join(known) or "none"
        print(
            f"deliverability-agent: no {kind} named {name!r} (configured: {names})", file=sys.stderr
        )
        return EXIT_USAGE
    sources = TokenSources(state_dir=config.state_dir)
    sources.update(config)
    how = sources.sign_in(kind, name)
    if how is None:
        print(
            f"deliverability-agent: {kind} {name!r} does not sign in with a token (its auth has "
            "a password, or it has none)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    credential = how.tokens.credential
    try:
        token = await how.tokens.access_token()
    except TokenError as exc:
        print(f"token:   FAILED ({exc.kind}): {exc}", file=out)
        return EXIT_FAILED
    (state,) = (s for s in sources.states() if s.credential == credential)
    expires = (
        datetime.fromtimestamp(token.expires_at, UTC).isoformat(timespec="seconds")
        if token.expires_at is not None
        else "unknown"
    )
    print(
        f"token:   obtained for credential {credential!r} ({state.method}), expires {expires}",
        file=out,
    )

    if kind == "route":
        route = routes[name]
        result = await sign_in(smtp_target(route, how))
        where = f"SMTP {route.host}:{route.port} as {how.username}"
        if result.error is not None:
            error = result.error
            print(
                f"sign-in: FAILED ({error.kind} at {error.stage}) {where}: {error.message}",
                file=out,
            )
            return EXIT_FAILED
        auth = [reply for reply in result.transcript if str(reply.stage) == "auth"]
        answer = f"{auth[-1].code} {auth[-1].text}" if auth else "no AUTH reply"
        print(f"sign-in: OK {where}: AUTH {result.mechanism}: {answer}", file=out)
        return EXIT_OK

    mailbox = mailboxes[name]
    where = f"IMAP {mailbox.host}:{mailbox.port} as {how.username}"
    try:
        connection = await Connection.open(imap_target(mailbox, how))
        try:
            await connection.login()
            await connection.select("INBOX")
            signed_in = connection.signed_in
        finally:
            await connection.close(logout=True)
    except ImapError as exc:
        print(f"sign-in: FAILED ({exc.kind}) {where}: {exc.message}", file=out)
        return EXIT_FAILED
    mechanism, answer = signed_in or ("?", "")
    print(f"sign-in: OK {where}: {mechanism}: {answer}; SELECT INBOX: OK", file=out)
    return EXIT_OK
