"""`oauth login`: obtain a credential's first refresh token and store it where the agent reads it.

Two interactive flows, chosen by the configuration (`provider` fills the URLs):
- the device flow (RFC 8628; Microsoft): ask the device authorization endpoint for a user code,
  show the verification URL and the code, poll the token endpoint every `interval` seconds
  (`authorization_pending`: keep polling; `slow_down`: 5 s more; `expired_token`,
  `access_denied`: give up);
- the loopback redirect (RFC 8252; Google, whose device flow does not allow the mail scope): a
  one-shot HTTP listener on 127.0.0.1, an authorization URL with PKCE (S256) and a random
  `state`, the code from the redirect exchanged for tokens.
Requests are encoded and answers read by oauthlib; HTTP goes through `TokenEndpoint` (httpx) and
the listener's HTTP is parsed by h11. The refresh token is written by `RefreshTokenStore`, in the
format and at the place the token sources read (mode 0600), and never printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

import h11
from oauthlib.common import add_params_to_uri
from oauthlib.oauth2 import WebApplicationClient
from oauthlib.oauth2.rfc6749.parameters import prepare_token_request

from agent.config import Config, MailAuth, OAuth2
from agent.errors import AgentError, ErrorCategory
from agent.oauth.endpoint import TokenEndpoint
from agent.oauth.presets import Grant, Provider
from agent.oauth.refresh_store import RefreshTokenStore
from agent.oauth.sources import OwnerKind, TokenSources, refresh_token_path
from agent.oauth.token_source import TokenError
from agent.secrets import Redactor, secret_values

__all__ = ["DEVICE_CODE_GRANT", "LoginError", "LoginPlan", "login", "plan_login"]

DEVICE_CODE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"  # RFC 8628 3.4
DEFAULT_INTERVAL: Final = 5.0  # seconds between polls when the server names none (RFC 8628 3.2)
SLOW_DOWN_STEP: Final = 5.0  # seconds added on each slow_down (RFC 8628 3.5)
DONE_PAGE: Final = (
    b"<!doctype html><title>deliverability-agent</title>"
    b"<p>Signed in. You can close this window and return to the terminal.</p>"
)


class LoginError(AgentError):
    """The login did not end with a stored refresh token; the message says why (no secret)."""

    category = ErrorCategory.PEER


class Flow(enum.StrEnum):
    DEVICE = "device"
    LOOPBACK = "loopback"


@dataclass(frozen=True)
class LoginPlan:
    """What `oauth login` does for one route or mailbox; `flow` None: no login needed
    (`reason` says why)."""

    credential: str
    flow: Flow | None
    reason: str
    oauth2: OAuth2 | None = None
    store: RefreshTokenStore | None = None
    timeout: float = 30.0  # one HTTP request


def plan_login(config: Config, kind: OwnerKind, name: str) -> LoginPlan:
    """Which flow logs in the route or mailbox `name`, and where its refresh token goes; raises
    LoginError for a name that is not configured or a sign-in that cannot log in."""
    auth = _auth_of(config, kind, name)
    sources = TokenSources(state_dir=config.state_dir)
    sources.update(config)
    sign_in = sources.sign_in(kind, name)
    if auth is None or sign_in is None:
        raise LoginError(
            f"{kind} {name!r} does not sign in with a token (its auth has a password, or it has "
            "none): there is nothing to log in"
        )
    credential = sign_in.tokens.credential
    oauth2 = auth.oauth2
    if oauth2 is None:
        how = "token_command" if auth.token_command is not None else "token_file"
        return LoginPlan(credential, None, f"it signs in with {how}: the agent logs in nowhere")
    if oauth2.grant is not Grant.REFRESH_TOKEN:
        return LoginPlan(
            credential,
            None,
            f"grant {oauth2.grant.value} needs no login: the agent gets every token itself",
        )
    if oauth2.device_authorization_url is not None:
        flow = Flow.DEVICE
    elif oauth2.authorization_url is not None:
        flow = Flow.LOOPBACK
    else:
        raise LoginError(
            f"{kind} {name!r}: auth.oauth2 has neither device_authorization_url nor "
            "authorization_url (set one, or provider: google | microsoft)"
        )
    store = RefreshTokenStore(
        oauth2.refresh_token_file or refresh_token_path(config.state_dir, credential),
        credential=credential,
        # With a configured refresh_token, the stored one is used only if it says it replaces
        # that very token (agent.oauth.refresh_store): a login replaces it the same way.
        configured=oauth2.refresh_token.get_secret_value() if oauth2.refresh_token else None,
    )
    return LoginPlan(credential, flow, flow.value, oauth2, store, auth.token_timeout)


def _auth_of(config: Config, kind: OwnerKind, name: str) -> MailAuth | None:
    if kind == "route":
        for route in config.routes:
            if route.name == name:
                return route.auth if route.auth is not None and route.auth.uses_token else None
    else:
        for mailbox in (*config.mailboxes, *config.bounce_mailboxes):
            if mailbox.name == name:
                return mailbox.auth if mailbox.auth.uses_token else None
    known = (
        [r.name for r in config.routes]
        if kind == "route"
        else [m.name for m in (*config.mailboxes, *config.bounce_mailboxes)]
    )
    raise LoginError(f"no {kind} named {name!r} (configured: {', '.join(known) or 'none'})")


async def login(
    plan: LoginPlan,
    *,
    show: Callable[[str], None],
    wait: float = 600.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Path:
    """Run the plan's flow; store the refresh token; return the file it was written to.

    `show` gets every line meant for the user (URL, code); `wait` bounds how long the user may
    take (the device flow also ends when its code expires). Raises LoginError or TokenError."""
    assert plan.flow is not None and plan.oauth2 is not None and plan.store is not None
    oauth2 = plan.oauth2
    secret = oauth2.client_secret.get_secret_value() if oauth2.client_secret else None

    def endpoint(url: str) -> TokenEndpoint:
        return TokenEndpoint(
            url,
            credential=plan.credential,
            timeout=plan.timeout,
            ca_file=oauth2.ca_file,
            redact=Redactor(secret_values(oauth2)),
        )

    token_endpoint = endpoint(oauth2.token_url)
    if plan.flow is Flow.DEVICE:
        assert oauth2.device_authorization_url is not None
        refresh = await _device_flow(
            endpoint(oauth2.device_authorization_url),
            token_endpoint,
            client_id=oauth2.client_id or "",
            client_secret=secret,
            scope=oauth2.scope,
            show=show,
            wait=wait,
            clock=clock,
            sleep=sleep,
        )
    else:
        assert oauth2.authorization_url is not None
        refresh = await _loopback_flow(
            oauth2.authorization_url,
            token_endpoint,
            client_id=oauth2.client_id or "",
            client_secret=secret,
            scope=oauth2.scope,
            google=oauth2.provider is Provider.GOOGLE,
            show=show,
            wait=wait,
        )
    plan.store.save(refresh)
    return plan.store.path


def _refresh_of(answer_refresh: str | None, credential: str) -> str:
    if answer_refresh is None:
        raise LoginError(
            f"credential {credential!r}: the token endpoint issued no refresh token (does the "
            "scope ask for one? Microsoft needs offline_access)"
        )
    return answer_refresh


# --- the device flow (RFC 8628) ---------------------------------------------------------------


async def _device_flow(
    device: TokenEndpoint,
    tokens: TokenEndpoint,
    *,
    client_id: str,
    client_secret: str | None,
    scope: str,
    show: Callable[[str], None],
    wait: float,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
) -> str:
    # The device authorization request is a form with the client and the scope (RFC 8628 3.1).
    answer = await device.request_json(
        urlencode({"client_id": client_id, **({"scope": scope} if scope else {})})
    )
    try:
        device_code = str(answer["device_code"])
        user_code = str(answer["user_code"])
        # Microsoft's v2 endpoint says verification_uri; its v1 said verification_url.
        uri = str(answer.get("verification_uri") or answer["verification_url"])
    except KeyError as missing:
        raise LoginError(
            f"device authorization endpoint {device.url} answered without {missing.args[0]}"
        ) from None
    interval = _seconds(answer.get("interval"), DEFAULT_INTERVAL)
    ends = clock() + min(wait, _seconds(answer.get("expires_in"), wait))
    show(f"To sign in, open {uri} and enter the code {user_code}")
    if isinstance(answer.get("verification_uri_complete"), str):
        show(f"(or open {answer['verification_uri_complete']})")
    poll = prepare_token_request(
        DEVICE_CODE_GRANT,
        device_code=device_code,
        client_id=client_id,
        client_secret=client_secret,
    )
    while True:
        if clock() + interval > ends:
            raise LoginError(
                "the sign-in was not completed before the device code expired (or --wait passed)"
            )
        await sleep(interval)  # the server's own pace (RFC 8628 3.5), not a guess
        try:
            got = await tokens.request(poll)
        except TokenError as exc:
            if exc.code == "authorization_pending":
                continue
            if exc.code == "slow_down":
                interval += SLOW_DOWN_STEP
                continue
            if exc.code == "expired_token":
                raise LoginError(
                    "the device code expired before the sign-in was completed"
                ) from None
            if exc.code == "access_denied":
                raise LoginError("the sign-in was declined (access_denied)") from None
            raise
        return _refresh_of(got.refresh_token, tokens.credential)


def _seconds(value: Any, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return max(float(value), 0.0) or default
    return default


# --- the loopback redirect (RFC 8252, PKCE RFC 7636) ------------------------------------------


async def _loopback_flow(
    authorization_url: str,
    tokens: TokenEndpoint,
    *,
    client_id: str,
    client_secret: str | None,
    scope: str,
    google: bool,
    show: Callable[[str], None],
    wait: float,
) -> str:
    client = WebApplicationClient(client_id)
    verifier = client.create_code_verifier(64)
    challenge = client.create_code_challenge(verifier, "S256")
    state = secrets.token_urlsafe(24)
    redirected: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    writers: set[asyncio.StreamWriter] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER)
        writers.add(writer)
        try:
            target = await _request_target(connection, reader)
            if target is None:
                return
            if not target.startswith("/?"):  # a favicon, a probe: not the redirect
                await _answer(connection, writer, 404, b"not found")
                return
            await _answer(connection, writer, 200, DONE_PAGE)
            if not redirected.done():
                redirected.set_result(target)
        except (OSError, h11.ProtocolError):
            pass  # a stray or broken client: keep waiting for the browser
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        redirect_uri = f"http://127.0.0.1:{port}/"
        # Built with add_params_to_uri, not prepare_grant_uri: that one refuses http://
        # URLs, and the configuration allows them only to loopback (a local test server).
        url = add_params_to_uri(
            authorization_url,
            [
                ("response_type", "code"),
                ("client_id", client_id),
                ("redirect_uri", redirect_uri),
                *([("scope", scope)] if scope else []),
                ("state", state),
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
                *([("access_type", "offline"), ("prompt", "consent")] if google else []),
            ],
        )
        show(f"To sign in, open this URL in a browser on this machine:\n{url}")
        try:
            async with asyncio.timeout(wait):
                target = await redirected
        except TimeoutError:
            raise LoginError(f"no sign-in came back to {redirect_uri} within {wait:g} s") from None
        finally:
            for writer in list(writers):  # an idle browser connection must not hold the exit
                writer.close()
    # Read here, not by parse_authorization_code_response: that one refuses the http://
    # redirect URI that RFC 8252 prescribes for loopback.
    params = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
    if not secrets.compare_digest(params.get("state", ""), state):
        raise LoginError(
            "the redirect's state does not match this login (a stale or forged redirect)"
        )
    if "error" in params:
        raise LoginError(f"the sign-in was not completed: {params['error'][:100]}")
    if not params.get("code"):
        raise LoginError("the redirect carried no authorization code")
    form = prepare_token_request(
        "authorization_code",
        code=params["code"],
        redirect_uri=redirect_uri,
        client_id=client_id,
        client_secret=client_secret,
        code_verifier=verifier,
    )
    got = await tokens.request(form)
    return _refresh_of(got.refresh_token, tokens.credential)


async def _request_target(connection: h11.Connection, reader: asyncio.StreamReader) -> str | None:
    """The target of a GET request (path and query); None for anything else."""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(8192)
            connection.receive_data(data)
            continue
        if isinstance(event, h11.Request) and event.method == b"GET":
            return event.target.decode("ascii", "replace")
        return None


async def _answer(
    connection: h11.Connection, writer: asyncio.StreamWriter, status: int, body: bytes
) -> None:
    headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    for event in (h11.Response(status_code=status, headers=headers), h11.Data(data=body)):
        writer.write(connection.send(event) or b"")
    writer.write(connection.send(h11.EndOfMessage()) or b"")
    await writer.drain()
