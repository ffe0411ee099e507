"""The whole agent signing in with OAuth 2.0 against the real mail system (issue 13 item 7).

Routes and seed mailboxes use `auth.oauth2` with a refresh token; the token endpoint is the
scripted one (`tests.token_endpoint.Issuer`) handing out access tokens minted for the test mail
system's Dovecot, which validates them (JWT, locally) for IMAP and for the submission server's
AUTH. Every wait is for an event (a probe's final outcome, a log line); none is timed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from agent.app.service import Agent
from agent.config import Config, load_config
from agent.model import ErrorKind, Outcome
from agent.monitoring.catalog import exposition, new_registry
from agent.monitoring.recorder import Recorder
from agent.oauth.sources import refresh_token_path
from agent.secrets import secret_values
from agent.store.ledger import LEDGER_FILENAME
from agent.web.status_page import Health, collect, render
from tests.agent_process import WAIT, agent_command
from tests.agent_setup import GOOD_SENDER, AgentSetup
from tests.mailsystem import MailSystem
from tests.mailsystem.topology import Account
from tests.token_endpoint import Answer, Issuer, TokenEndpointServer

pytestmark = pytest.mark.mailsystem

CLIENT_SECRET = "client-sekret-e2e-41c9"
ROUTE_RT = "route-refresh-sekret-77aa"
MAILBOX_RT = "mailbox-refresh-sekret-19bd"
REFRESHES = "deliverability_oauth_token_refreshes_total"


def oauth2(url: str, refresh_token: str) -> dict[str, Any]:
    return {
        "token_url": url,
        "client_id": "agent-e2e",
        "client_secret": CLIENT_SECRET,
        "refresh_token": refresh_token,
    }


def oauth_setup(
    mail_system: MailSystem,
    directory: Path,
    url: str,
    *,
    seed: str,
    route_port: int | None = None,
    route_tls: str = "starttls",
    mailbox_tls: str = "implicit",
    password_pair: Account | None = None,
) -> AgentSetup:
    """A route `r` and a mailbox `m` that sign in with OAuth; with `password_pair`, a route
    `pw` and a mailbox `pw` that sign in with passwords (probing the seed `password_pair`)."""
    setup = AgentSetup(mail_system, directory)
    setup.route("r", port=route_port, tls=route_tls)
    setup.routes[-1]["auth"] = {"username": GOOD_SENDER.address, "oauth2": oauth2(url, ROUTE_RT)}
    setup.mailbox("m", _account(mail_system, seed), tls=mailbox_tls)
    setup.mailboxes[-1]["auth"] = {"username": seed, "oauth2": oauth2(url, MAILBOX_RT)}
    if password_pair is not None:
        setup.route("pw").mailbox("pw", password_pair)
    return setup


def _account(mail_system: MailSystem, address: str) -> Account:
    return Account(address, "unused-with-oauth")  # the mailbox's auth is replaced


def issuer(mail_system: MailSystem, seed: str, **kwargs: Any) -> Issuer:
    return Issuer(
        lambda user, n: mail_system.mint_token(user, pad_to=2600),
        {ROUTE_RT: GOOD_SENDER.address, MAILBOX_RT: seed},
        **kwargs,
    )


async def probe_once(agent: Agent, route: str = "r", mailbox: str = "m") -> Any:
    probe_id = await agent.probe_pair(route, mailbox)
    assert probe_id is not None
    await agent.wait_final([probe_id])
    return agent.ledger.get(probe_id)


def leaks(text: str, *secrets: str) -> list[str]:
    return [secret for secret in secrets if secret in text]


@pytest.mark.parametrize(
    ("route_tls", "mailbox_tls"),
    [("starttls", "implicit"), ("implicit", "starttls")],
    ids=["smtp587-imap993", "smtp465-imap143-starttls"],
)
async def test_probes_land_in_the_inbox_signing_in_with_oauth_on_both_edges(
    mail_system: MailSystem, tmp_path: Path, route_tls: str, mailbox_tls: str
) -> None:
    seed = mail_system.new_mailbox().address
    minted: list[str] = []

    def mint(user: str, n: int) -> str:
        minted.append(mail_system.mint_token(user, pad_to=2600))  # > 2 KB, like Microsoft's
        return minted[-1]

    issued = Issuer(mint, {ROUTE_RT: GOOD_SENDER.address, MAILBOX_RT: seed})
    with TokenEndpointServer(issued) as endpoint:
        setup = oauth_setup(
            mail_system,
            tmp_path,
            endpoint.url,
            seed=seed,
            route_port=(mail_system.ports.submissions if route_tls == "implicit" else None),
            route_tls=route_tls,
            mailbox_tls=mailbox_tls,
        )
        registry = new_registry()
        agent = Agent(setup.load(), recorder=Recorder(registry))
        await agent.start()
        try:
            record = await probe_once(agent)
            states = {state.credential: state for state in agent.credentials()}
        finally:
            await agent.stop()
    assert record.send_error is None, record.send_error
    assert record.outcome is Outcome.INBOX
    assert issued.grants == {GOOD_SENDER.address: 1, seed: 1}  # one token each, cached
    assert set(states) == {"m", "r"}
    assert all(s.error_kind is None and s.last_success_at for s in states.values())
    for credential in ("m", "r"):
        assert registry.get_sample_value(REFRESHES, {"credential": credential, "result": "ok"}) == 1
    assert minted and all(len(token) >= 2600 for token in minted)


async def test_a_refused_access_token_is_refreshed_and_the_next_sign_in_succeeds(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    """Each credential's first token is refused by the server (signed with a key Dovecot does
    not know, as a token revoked before its expiry is): the mailbox watcher signs in again with
    a fresh token and still finds the probe; the route's next probe signs in and lands."""
    seed = mail_system.new_mailbox().address
    issued = Issuer(
        lambda user, n: mail_system.mint_token(user, forged=n == 0),
        {ROUTE_RT: GOOD_SENDER.address, MAILBOX_RT: seed},
    )
    with TokenEndpointServer(issued) as endpoint:
        setup = oauth_setup(mail_system, tmp_path, endpoint.url, seed=seed)
        agent = Agent(setup.load(), recorder=Recorder(new_registry()))
        await agent.start()
        try:
            first = await probe_once(agent)
            second = await probe_once(agent)
        finally:
            await agent.stop()
    # The route's refused token ends its probe at AUTH (the server's verdict on our credential).
    assert first.send_error is not None and first.send_error.kind is ErrorKind.AUTH
    assert '"status":"' in first.send_error.message  # Dovecot's decoded error JSON
    # The next sign-ins use fresh tokens: the mailbox's watcher read the second probe (and the
    # first had no message to lose), so no delivered probe was lost.
    assert second.send_error is None and second.outcome is Outcome.INBOX
    assert issued.grants[GOOD_SENDER.address] == 2
    assert issued.grants[seed] >= 2


async def test_a_token_about_to_expire_is_refreshed_before_the_sign_in_that_would_use_it(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    """Tokens the endpoint says live 30 s, less than the lifecycle's minute ahead: every
    sign-in gets a fresh one instead of one that may expire on the way, and every probe lands.
    (The tokens themselves stay valid longer, so no test outcome hangs on the wall clock.)"""
    seed = mail_system.new_mailbox().address
    issued = Issuer(
        lambda user, n: mail_system.mint_token(user),
        {ROUTE_RT: GOOD_SENDER.address, MAILBOX_RT: seed},
        expires_in=30,
    )
    with TokenEndpointServer(issued) as endpoint:
        setup = oauth_setup(mail_system, tmp_path, endpoint.url, seed=seed)
        agent = Agent(setup.load(), recorder=Recorder(new_registry()))
        await agent.start()
        try:
            records = [await probe_once(agent), await probe_once(agent)]
        finally:
            await agent.stop()
    assert [r.outcome for r in records] == [Outcome.INBOX, Outcome.INBOX]
    assert issued.grants[GOOD_SENDER.address] == 2  # one refresh per SMTP sign-in


async def test_a_rotated_refresh_token_is_stored_0600_and_used_after_a_restart(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    seed = mail_system.new_mailbox().address
    issued = issuer(mail_system, seed, rotate=True)
    with TokenEndpointServer(issued) as endpoint:
        setup = oauth_setup(mail_system, tmp_path, endpoint.url, seed=seed)
        config = setup.load()
        agent = Agent(config, recorder=Recorder(new_registry()))
        await agent.start()
        try:
            assert (await probe_once(agent)).outcome is Outcome.INBOX
        finally:
            await agent.stop()
        stored = refresh_token_path(config.state_dir, "m")
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        rotated = stored.read_text().splitlines()[0]
        assert rotated == f"rt-{seed}-rotated-1"
        # The configured refresh token is dead now (strict rotation): only the stored one works.
        restarted = Agent(load_config(setup.write()), recorder=Recorder(new_registry()))
        await restarted.start()
        try:
            assert (await probe_once(restarted)).outcome is Outcome.INBOX
        finally:
            await restarted.stop()
    mailbox_requests = [r for r in endpoint.requests if r["refresh_token"] in (MAILBOX_RT, rotated)]
    assert [r["refresh_token"] for r in mailbox_requests] == [MAILBOX_RT, rotated]
    assert stored.read_text().splitlines()[0] == f"rt-{seed}-rotated-2"


async def test_a_revoked_refresh_token_ends_the_pairs_probes_as_token_errors_and_others_go_on(
    mail_system: MailSystem, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seed, other = mail_system.new_mailbox().address, mail_system.new_mailbox()
    issued = issuer(mail_system, seed)
    issued.revoke(GOOD_SENDER.address)  # the route's grant was revoked
    with TokenEndpointServer(issued) as endpoint:
        setup = oauth_setup(mail_system, tmp_path, endpoint.url, seed=seed, password_pair=other)
        registry = new_registry()
        agent = Agent(setup.load(), recorder=Recorder(registry))
        await agent.start()
        try:
            revoked = await probe_once(agent)
            working = await probe_once(agent, "pw", "pw")
            states = {state.credential: state for state in agent.credentials()}
        finally:
            await agent.stop()
    assert revoked.send_error is not None
    assert revoked.send_error.kind is ErrorKind.TOKEN
    assert "invalid_grant" in revoked.send_error.message
    assert str(states["r"].error_kind) == "invalid_grant"
    assert registry.get_sample_value(REFRESHES, {"credential": "r", "result": "invalid_grant"}) == 1
    assert working.outcome is Outcome.INBOX  # the password pair kept probing
    assert "invalid_grant" in caplog.text
    assert leaks(caplog.text, CLIENT_SECRET, ROUTE_RT, MAILBOX_RT) == []


@pytest.mark.parametrize("failure", ["slow", "down"])
async def test_a_slow_or_unreachable_token_endpoint_ends_the_probe_within_its_deadline(
    mail_system: MailSystem, tmp_path: Path, failure: str
) -> None:
    seed = mail_system.new_mailbox().address
    with socket.socket() as closed:  # a port nothing listens on once closed
        closed.bind(("127.0.0.1", 0))
        down_url = f"http://127.0.0.1:{closed.getsockname()[1]}/token"
    with TokenEndpointServer([Answer(hang=True)]) as endpoint:
        url = endpoint.url if failure == "slow" else down_url
        setup = oauth_setup(mail_system, tmp_path, url, seed=seed)
        for section in (*setup.routes, *setup.mailboxes):
            section["auth"]["token_timeout"] = "2s"  # well inside the route's stage timeout
        agent = Agent(setup.load(), recorder=Recorder(new_registry()))
        await agent.start()
        try:
            record = await probe_once(agent)
            states = {state.credential: state for state in agent.credentials()}
        finally:
            await agent.stop()
    assert record.send_error is not None and record.send_error.kind is ErrorKind.TOKEN
    assert record.outcome is not Outcome.MISSING  # ended by the error, not by the deadline
    expected = "timeout" if failure == "slow" else "endpoint"
    assert str(states["r"].error_kind) == expected


async def test_no_token_or_secret_reaches_the_output_the_metrics_the_ledger_or_the_page(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    """`once --json` as a process (its stdout and debug log) and the ledger file's bytes; then an
    agent over the same state gets tokens (the rotated refresh tokens) and its exposition and
    status page are read."""
    seed = mail_system.new_mailbox().address
    minted: list[str] = []

    def mint(user: str, n: int) -> str:
        minted.append(mail_system.mint_token(user))
        return minted[-1]

    issued = Issuer(mint, {ROUTE_RT: GOOD_SENDER.address, MAILBOX_RT: seed}, rotate=True)
    with TokenEndpointServer(issued) as endpoint:
        setup = oauth_setup(mail_system, tmp_path, endpoint.url, seed=seed)
        config_file = setup.write()
        once = await asyncio.create_subprocess_exec(
            *agent_command("once", "--json", "--config", str(config_file)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(WAIT * 2):  # a backstop only
            stdout, stderr = await once.communicate()
        output = (stdout + stderr).decode()
        assert once.returncode == 0, output
        probe, *credentials = (json.loads(line) for line in stdout.decode().splitlines())
        assert probe["outcome"] == "inbox"
        assert {c["credential"]: c["ok"] for c in credentials} == {"m": True, "r": True}

        config: Config = load_config(config_file)
        registry = new_registry()
        agent = Agent(config, recorder=Recorder(registry))
        try:
            await agent._declare()
            for sign_in in (
                agent.tokens.sign_in("route", "r"),
                agent.tokens.sign_in("mailbox", "m"),
            ):
                assert sign_in is not None
                await sign_in.tokens.access_token()
            metrics = exposition(registry).decode()
            health = Health(
                "test", True, "probing", 0.0, True, None, credentials=tuple(agent.credentials())
            )
            page = render(
                collect(agent.ledger, config, health, now=time.time()),
                secrets=secret_values(config),
            )
        finally:
            agent.ledger.close()
    rotated = [f"rt-{user}-rotated-{n}" for user in (GOOD_SENDER.address, seed) for n in (1, 2)]
    secrets = (CLIENT_SECRET, ROUTE_RT, MAILBOX_RT, *rotated, *minted)
    assert len(minted) == 4  # two by the process, two by the agent after it
    assert leaks(output, *secrets) == []
    ledger_bytes = b"".join(
        path.read_bytes() for path in config.state_dir.glob(LEDGER_FILENAME + "*")
    )
    assert probe["probe_id"].encode() in ledger_bytes
    assert leaks(ledger_bytes.decode("latin-1"), *secrets) == []
    assert 'credential="r",result="ok"' in metrics
    assert leaks(metrics, *secrets) == []
    assert 'id="credentials"' in page
    assert leaks(page, *secrets) == []
