"""No token or secret of an OAuth credential reaches the logs, the metrics, the status page or
`once --json`, even when the token endpoint or the token command echoes them back."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent.app.cli import credential_json
from agent.app.service import Agent
from agent.config import Config
from agent.monitoring.catalog import exposition, new_registry
from agent.monitoring.recorder import Recorder
from agent.oauth import TokenError
from agent.secrets import secret_values
from agent.store.ledger import Ledger
from agent.web.status_page import Health, collect, render
from tests.one_pair_config import one_pair_config
from tests.token_endpoint import TokenEndpointServer, error, token

CLIENT_SECRET = "client-sekret-9d1f0a"
REFRESH = "refresh-sekret-5b7e21"
ROTATED = "rotated-sekret-0c4d88"
ACCESS = "access-sekret-6a2f19"
SECRETS = (CLIENT_SECRET, REFRESH, ROTATED, ACCESS)


def _config(tmp_path: Path, url: str) -> Config:
    auth = {
        "username": "seed@example.com",
        "oauth2": {
            "token_url": url,
            "client_id": "app-id",
            "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH,
        },
    }
    return one_pair_config(tmp_path, mailbox={"auth": auth})


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


async def test_no_oauth_secret_in_logs_metrics_status_page_or_once_json(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A rotation, then an error answer that echoes every secret it was sent.
    echo = error(
        "invalid_grant",
        f"refresh_token {ROTATED} of client app-id with secret {CLIENT_SECRET} was revoked",
    )
    with TokenEndpointServer([token(ACCESS, refresh_token=ROTATED), echo]) as server:
        config = _config(tmp_path, server.url)
        registry = new_registry()
        agent = Agent(config, recorder=Recorder(registry))
        try:
            await agent._declare()
            sign_in = agent.tokens.sign_in("mailbox", "m")
            assert sign_in is not None
            first = await sign_in.tokens.access_token()
            assert first.value == ACCESS
            sign_in.tokens.refused(first)  # as a server that refused it makes the edge do
            with pytest.raises(TokenError) as caught:
                await sign_in.tokens.access_token()
            assert server.requests[1]["refresh_token"] == ROTATED  # the rotated one was used
            states = agent.credentials()
        finally:
            agent.ledger.close()

    assert caught.value.kind == "invalid_grant"
    assert _leaks(str(caught.value)) == []
    assert "[redacted]" in str(caught.value)
    assert _leaks(caplog.text) == []
    assert _leaks(exposition(registry).decode()) == []
    once = "\n".join(json.dumps(credential_json(state)) for state in states)
    assert '"kind": "invalid_grant"' in once
    assert _leaks(once) == []

    health = Health(
        version="9.9.9",
        ready=True,
        ready_detail="probing",
        started_at=0.0,
        config_ok=True,
        config_loaded_at=None,
        credentials=tuple(states),
    )
    with Ledger(tmp_path / "page.sqlite3") as ledger:
        data = collect(ledger, agent.config, health, now=states[0].retry_at or 0.0)
    page = render(data, secrets=secret_values(agent.config))
    assert "invalid_grant" in page and 'id="credentials"' in page
    assert _leaks(page) == []
