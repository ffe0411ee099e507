"""From the config to the edges: one token source per credential, shared, kept across reloads,
handed to the SMTP and IMAP targets; the agent's credential series and states."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.app.cli import _CREDENTIAL_HEADER, _credential_row, _print_table, credential_json
from agent.app.service import Agent
from agent.config import Config
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder
from agent.oauth import AccessToken, SaslMechanism, TokenError, TokenErrorKind
from agent.oauth.lifecycle import CredentialState
from agent.oauth.sources import TokenSources, refresh_token_path
from agent.probing.targets import imap_target, smtp_target
from tests.one_pair_config import one_pair_config
from tests.token_endpoint import TokenEndpointServer, error, token


def oauth_auth(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "username": "seed@example.com",
        "oauth2": {"token_url": url, "client_id": "app-id", "refresh_token": "rt-1", **extra},
    }


def shared_config(tmp_path: Path, url: str, *, mechanism: str | None = None) -> Config:
    auth = oauth_auth(url)
    route_auth = dict(auth, mechanism=mechanism) if mechanism else auth
    return one_pair_config(
        tmp_path,
        route={"auth": route_auth, "allow_plaintext_auth": True},
        mailbox={"auth": auth},
    )


def test_a_route_and_a_mailbox_with_the_same_credential_share_one_source(tmp_path: Path) -> None:
    config = shared_config(tmp_path, "http://127.0.0.1:9/token", mechanism="oauthbearer")
    sources = TokenSources(state_dir=config.state_dir)
    sources.update(config)
    route_sign_in = sources.sign_in("route", "r")
    mailbox_sign_in = sources.sign_in("mailbox", "m")
    assert route_sign_in is not None and mailbox_sign_in is not None
    assert route_sign_in.tokens is mailbox_sign_in.tokens
    assert route_sign_in.mechanism is SaslMechanism.OAUTHBEARER  # the mechanism is per use
    assert mailbox_sign_in.mechanism is None
    assert route_sign_in.username == "seed@example.com"
    assert sources.credentials() == ["m"]  # named after its first mailbox


def test_a_reload_keeps_unchanged_credentials_and_rebuilds_changed_ones(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/token"
    sources = TokenSources(state_dir=tmp_path)
    sources.update(shared_config(tmp_path, url))
    before = sources.sign_in("mailbox", "m")
    sources.update(shared_config(tmp_path, url))
    again = sources.sign_in("mailbox", "m")
    assert before is not None and again is not None and again.tokens is before.tokens

    changed = one_pair_config(
        tmp_path,
        route={"auth": oauth_auth(url), "allow_plaintext_auth": True},
        mailbox={"auth": oauth_auth(url, client_id="other-app")},
    )
    sources.update(changed)
    route, mailbox = sources.sign_in("route", "r"), sources.sign_in("mailbox", "m")
    assert route is not None and mailbox is not None
    assert route.tokens is before.tokens  # the route kept the old credential (and its token)
    assert mailbox.tokens is not before.tokens
    # The kept credential keeps its name (and series); the new one may not take it.
    assert sources.credentials() == ["m", "mailbox-m"]


def test_a_password_sign_in_has_no_token_source(tmp_path: Path) -> None:
    config = one_pair_config(tmp_path)
    sources = TokenSources(state_dir=tmp_path)
    sources.update(config)
    assert sources.sign_in("mailbox", "m") is None
    assert sources.credentials() == []
    target = imap_target(config.mailbox("m"))
    assert target.oauth is None and target.password == "imap-password-1"


async def test_targets_carry_the_shared_sign_in_and_no_password(tmp_path: Path) -> None:
    with TokenEndpointServer([token("at-1")]) as server:
        config = shared_config(tmp_path, server.url)
        sources = TokenSources(state_dir=config.state_dir)
        sources.update(config)
        smtp = smtp_target(config.route("r"), sources.sign_in("route", "r"))
        imap = imap_target(config.mailbox("m"), sources.sign_in("mailbox", "m"))
        assert smtp.oauth is not None and imap.oauth is not None
        assert smtp.password is None and smtp.username == "seed@example.com"
        assert (await smtp.oauth.tokens.access_token()).value == "at-1"
        assert (await imap.oauth.tokens.access_token()).value == "at-1"
    assert len(server.requests) == 1  # one credential, one refresh
    assert "rt-1" in smtp.secrets  # the configured secrets are masked by the edges


async def test_rotation_goes_to_the_state_directory_by_default(tmp_path: Path) -> None:
    with TokenEndpointServer([token("at-1", refresh_token="rt-2")]) as server:
        config = shared_config(tmp_path, server.url)
        sources = TokenSources(state_dir=config.state_dir)
        sources.update(config)
        sign_in = sources.sign_in("mailbox", "m")
        assert sign_in is not None
        await sign_in.tokens.access_token()
    path = refresh_token_path(config.state_dir, "m")
    assert path == config.state_dir / "oauth" / "m.refresh-token"
    assert path.read_text().splitlines()[0] == "rt-2"


async def test_the_agent_declares_credential_series_and_reports_refreshes(
    tmp_path: Path,
) -> None:
    registry = new_registry()
    with TokenEndpointServer([token("at-1")]) as server:
        agent = Agent(shared_config(tmp_path, server.url), recorder=Recorder(registry))
        try:
            await agent._declare()
            name = "deliverability_oauth_token_refreshes_total"
            assert registry.get_sample_value(name, {"credential": "m", "result": "ok"}) == 0
            sign_in = agent.tokens.sign_in("mailbox", "m")
            assert sign_in is not None
            await sign_in.tokens.access_token()
            assert registry.get_sample_value(name, {"credential": "m", "result": "ok"}) == 1
            (state,) = agent.credentials()
            assert (state.credential, state.method, state.error_kind) == (
                "m",
                "refresh_token",
                None,
            )
            assert state.last_success_at is not None
        finally:
            agent.ledger.close()


async def test_a_reload_with_the_same_credential_keeps_its_cached_token(tmp_path: Path) -> None:
    with TokenEndpointServer([token("at-1"), token("at-2")]) as server:
        agent = Agent(shared_config(tmp_path, server.url), recorder=Recorder(new_registry()))
        await agent.start()
        try:
            before = agent.tokens.sign_in("route", "r")
            assert before is not None
            assert (await before.tokens.access_token()).value == "at-1"
            await agent.reload(shared_config(tmp_path, server.url))
            after = agent.tokens.sign_in("route", "r")
            assert after is not None and after.tokens is before.tokens
            assert (await after.tokens.access_token()).value == "at-1"
        finally:
            await agent.stop()
    assert len(server.requests) == 1  # the route and the mailbox watcher share the one token


async def test_a_revoked_credential_does_not_stop_another(tmp_path: Path) -> None:
    with (
        TokenEndpointServer([error("invalid_grant")]) as revoked,
        TokenEndpointServer([token("at-route")]) as working,
    ):
        config = one_pair_config(
            tmp_path,
            route={"auth": oauth_auth(working.url), "allow_plaintext_auth": True},
            mailbox={"auth": oauth_auth(revoked.url)},
        )
        sources = TokenSources(state_dir=config.state_dir)
        sources.update(config)
        mailbox, route = sources.sign_in("mailbox", "m"), sources.sign_in("route", "r")
        assert mailbox is not None and route is not None
        results = await asyncio.gather(
            mailbox.tokens.access_token(), route.tokens.access_token(), return_exceptions=True
        )
    assert isinstance(results[0], TokenError) and results[0].kind == "invalid_grant"
    assert isinstance(results[1], AccessToken) and results[1].value == "at-route"
    states = {state.credential: state.error_kind for state in sources.states()}
    assert states == {"m": "invalid_grant", "r": None}


def test_once_lists_each_credential_after_the_probes(capsys: pytest.CaptureFixture[str]) -> None:
    states = [
        CredentialState(
            "m365",
            "refresh_token",
            None,
            None,
            TokenErrorKind.INVALID_GRANT,
            "token endpoint refused: invalid_grant",
            2,
            1060.0,
        ),
        CredentialState("gmail", "service_account", 1000.0, 4600.0, None, None, 0, None),
        CredentialState("sidecar", "token_file", None, None, None, None, 0, None),
    ]
    _print_table([_credential_row(s) for s in states], _CREDENTIAL_HEADER)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CREDENTIAL", "HOW", "STATE", "LAST", "TOKEN", "ERROR"]
    assert lines[1].split()[:4] == ["m365", "refresh_token", "invalid_grant", "never"]
    assert lines[2].split()[:4] == ["gmail", "service_account", "ok", "1970-01-01T00:16:40+00:00"]
    assert "not asked yet" in lines[3]
    assert credential_json(states[1]) == {
        "credential": "gmail",
        "method": "service_account",
        "ok": True,
        "last_success_at": "1970-01-01T00:16:40+00:00",
        "expires_at": "1970-01-01T01:16:40+00:00",
        "error": None,
    }
