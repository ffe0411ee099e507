"""`oauth login`: the device flow (RFC 8628) and the loopback redirect with PKCE (RFC 8252, RFC
7636) against a scripted authorization server on loopback; the refresh token stored 0600 where
the agent's token source reads it."""

from __future__ import annotations

import asyncio
import stat
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from agent.app.cli import main
from agent.config import Config, load_config
from agent.oauth.login import Flow, LoginError, login, plan_login
from agent.oauth.sources import TokenSources, refresh_token_path
from tests.agent_process import WAIT, agent_command
from tests.one_pair_config import one_pair_config
from tests.token_endpoint import (
    Answer,
    DeviceAuthorization,
    LoopbackAuthorization,
    TokenEndpointServer,
    error,
    token,
)

CLIENT_SECRET = "login-client-sekret-2b8e"
FIRST_REFRESH = "first-refresh-sekret-90aa"


def login_config(tmp_path: Path, **oauth2: Any) -> Config:
    auth = {
        "username": "seed@example.com",
        "oauth2": {"client_id": "agent-login", "scope": "mail offline_access", **oauth2},
    }
    return one_pair_config(tmp_path, mailbox={"auth": auth})


class FakeTime:
    """The device flow's clock and sleep: each sleep is recorded and advances the clock, so
    the test sees the intervals the flow honours without waiting for them."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def device_login(config: Config, fake: FakeTime, shown: list[str]) -> Path:
    plan = plan_login(config, "mailbox", "m")
    assert plan.flow is Flow.DEVICE
    return await login(plan, show=shown.append, clock=fake.clock, sleep=fake.sleep)


async def test_the_device_flow_polls_through_pending_and_slow_down_and_stores_the_token_0600(
    tmp_path: Path,
) -> None:
    script = DeviceAuthorization(
        [
            error("authorization_pending"),
            error("slow_down"),
            token("at-1", refresh_token=FIRST_REFRESH),
        ]
    )
    with TokenEndpointServer(script) as server:
        config = login_config(
            tmp_path,
            token_url=server.url,
            device_authorization_url=server.url.replace("/token", "/devicecode"),
            client_secret=CLIENT_SECRET,
        )
        fake, shown = FakeTime(), list[str]()
        path = await device_login(config, fake, shown)
        assert fake.sleeps == [5, 5, 10]  # the server's interval, 5 s more after slow_down
        assert path == refresh_token_path(config.state_dir, "m")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().splitlines()[0] == FIRST_REFRESH
        shown_text = "\n".join(shown)
        assert DeviceAuthorization.VERIFICATION_URI in shown_text
        assert DeviceAuthorization.USER_CODE in shown_text
        assert FIRST_REFRESH not in shown_text and CLIENT_SECRET not in shown_text
        asked, *polls = server.requests
        assert asked == {"client_id": "agent-login", "scope": "mail offline_access"}
        assert [poll["grant_type"] for poll in polls] == [
            "urn:ietf:params:oauth:grant-type:device_code"
        ] * 3
        assert polls[0]["device_code"] == DeviceAuthorization.DEVICE_CODE

        # The agent's token source for the mailbox now refreshes with the stored token.
        server.answer(token("at-2"))
        sources = TokenSources(state_dir=config.state_dir)
        sources.update(config)
        sign_in = sources.sign_in("mailbox", "m")
        assert sign_in is not None
        assert (await sign_in.tokens.access_token()).value == "at-2"
        assert server.requests[-1]["grant_type"] == "refresh_token"
        assert server.requests[-1]["refresh_token"] == FIRST_REFRESH


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (error("access_denied"), "declined"),
        (error("expired_token"), "expired"),
    ],
    ids=["denied", "expired"],
)
async def test_a_device_flow_that_is_denied_or_expires_stores_nothing(
    tmp_path: Path, answer: Answer, said: str
) -> None:
    with TokenEndpointServer(DeviceAuthorization([error("authorization_pending"), answer])) as s:
        config = login_config(tmp_path, token_url=s.url, device_authorization_url=s.url)
        with pytest.raises(LoginError, match=said):
            await device_login(config, FakeTime(), [])
    assert not refresh_token_path(config.state_dir, "m").exists()


async def test_the_device_flow_gives_up_when_its_code_expires_without_an_answer(
    tmp_path: Path,
) -> None:
    script = DeviceAuthorization([error("authorization_pending")], interval=5, expires_in=12)
    with TokenEndpointServer(script) as server:
        config = login_config(tmp_path, token_url=server.url, device_authorization_url=server.url)
        fake = FakeTime()
        with pytest.raises(LoginError, match="expired"):
            await device_login(config, fake, [])
    assert fake.sleeps == [5, 5]  # a third poll would come after the code's 12 s


async def test_a_token_answer_without_a_refresh_token_is_an_error_naming_the_scope(
    tmp_path: Path,
) -> None:
    with TokenEndpointServer(DeviceAuthorization([token("at-only")])) as server:
        config = login_config(tmp_path, token_url=server.url, device_authorization_url=server.url)
        with pytest.raises(LoginError, match=r"no refresh token.*offline_access"):
            await device_login(config, FakeTime(), [])


async def follow(shown: asyncio.Queue[str]) -> httpx.Response:
    """Play the user's browser: open the URL `oauth login` shows and follow the redirect."""
    while True:
        line = await shown.get()
        if line.startswith("To sign in"):
            url = line.splitlines()[-1]
            break
    async with httpx.AsyncClient(follow_redirects=True) as browser:
        return await browser.get(url)


async def loopback_login(config: Config) -> tuple[Path, httpx.Response]:
    plan = plan_login(config, "mailbox", "m")
    assert plan.flow is Flow.LOOPBACK
    shown: asyncio.Queue[str] = asyncio.Queue()
    logging_in = asyncio.create_task(login(plan, show=shown.put_nowait, wait=60))
    browsing = asyncio.create_task(follow(shown))
    await asyncio.wait({logging_in, browsing}, return_when=asyncio.FIRST_COMPLETED)
    if not browsing.done():  # the login ended first: it failed before any redirect
        browsing.cancel()
    path = await logging_in
    return path, await browsing


async def test_the_loopback_flow_sends_pkce_and_state_and_stores_the_refresh_token(
    tmp_path: Path,
) -> None:
    script = LoopbackAuthorization(token("at-1", refresh_token=FIRST_REFRESH))
    with TokenEndpointServer(script, authorize=script.authorize) as server:
        config = login_config(
            tmp_path,
            token_url=server.url,
            authorization_url=server.url.replace("/token", "/authorize"),
        )
        path, page = await loopback_login(config)
    assert page.status_code == 200 and "Signed in" in page.text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().splitlines()[0] == FIRST_REFRESH
    (asked,) = script.authorizations
    assert asked["response_type"] == "code" and asked["client_id"] == "agent-login"
    assert asked["code_challenge_method"] == "S256"
    assert urlsplit(asked["redirect_uri"]).hostname == "127.0.0.1"
    (exchange,) = server.requests  # the scripted server checked the verifier against the hash
    assert exchange["grant_type"] == "authorization_code"
    assert len(exchange["code_verifier"]) >= 43


async def test_a_redirect_with_another_state_is_refused_and_nothing_is_exchanged(
    tmp_path: Path,
) -> None:
    script = LoopbackAuthorization(token("at-1", refresh_token=FIRST_REFRESH))
    script.state_override = "state-of-another-login"
    with TokenEndpointServer(script, authorize=script.authorize) as server:
        config = login_config(tmp_path, token_url=server.url, authorization_url=server.url)
        with pytest.raises(LoginError, match="state does not match"):
            await loopback_login(config)
    assert server.requests == []
    assert not refresh_token_path(config.state_dir, "m").exists()


async def test_a_wrong_pkce_verifier_is_refused_by_the_server(tmp_path: Path) -> None:
    """The scripted server does check the verifier: a login whose challenge it saw altered
    gets invalid_grant (so the success case above proves the S256 pair matched)."""
    script = LoopbackAuthorization(token("at-1", refresh_token=FIRST_REFRESH))
    original = script.authorize

    def altered(query: dict[str, str]) -> str:
        return original({**query, "code_challenge": "A" * 43})

    with TokenEndpointServer(script, authorize=altered) as server:
        config = login_config(tmp_path, token_url=server.url, authorization_url=server.url)
        with pytest.raises(Exception, match="invalid_grant"):
            await loopback_login(config)
    assert not refresh_token_path(config.state_dir, "m").exists()


def test_presets_pick_the_device_flow_for_microsoft_and_the_loopback_for_google(
    tmp_path: Path,
) -> None:
    microsoft = login_config(tmp_path, provider="microsoft", tenant="contoso.onmicrosoft.com")
    plan = plan_login(microsoft, "mailbox", "m")
    assert plan.flow is Flow.DEVICE and plan.oauth2 is not None
    assert plan.oauth2.device_authorization_url == (
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode"
    )
    google = login_config(tmp_path, provider="google")
    plan = plan_login(google, "mailbox", "m")
    assert plan.flow is Flow.LOOPBACK and plan.oauth2 is not None
    assert plan.oauth2.authorization_url == "https://accounts.google.com/o/oauth2/v2/auth"


def test_login_for_client_credentials_says_none_is_needed_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
listen: 127.0.0.1:0
state_dir: {tmp_path / "state"}
secret: a-secret-of-at-least-32-characters-long
routes:
  - name: r
    host: 127.0.0.1
    port: 1
    tls: none
    allow_plaintext_auth: true
    from: probe@client.test
    auth:
      username: sender@example.com
      oauth2:
        provider: microsoft
        tenant: contoso.onmicrosoft.com
        grant: client_credentials
        client_id: app
        client_secret: {CLIENT_SECRET}
mailboxes:
  - name: m
    host: 127.0.0.1
    port: 1
    tls: none
    allow_plaintext_auth: true
    address: seed@seed.test
    auth: {{username: u, password: imap-password-1}}
"""
    )
    load_config(config)  # the config itself is valid
    assert main(["oauth", "login", "--config", str(config), "--route", "r"]) == 0
    out = capsys.readouterr().out
    assert "client_credentials needs no login" in out
    assert main(["oauth", "login", "--config", str(config), "--mailbox", "m"]) == 2
    assert "does not sign in with a token" in capsys.readouterr().err
    assert main(["oauth", "login", "--config", str(config), "--mailbox", "nope"]) == 2
    assert "no mailbox named 'nope' (configured: m)" in capsys.readouterr().err


def test_oauth_login_as_a_process_prints_the_code_and_stores_the_token(tmp_path: Path) -> None:
    """The command itself (interval 1 s: the scripted server's pace, which the login honours)."""
    script = DeviceAuthorization(
        [error("authorization_pending"), token("at-1", refresh_token=FIRST_REFRESH)], interval=1
    )
    with TokenEndpointServer(script) as server:
        setup_file = tmp_path / "config.yaml"
        state_dir = tmp_path / "state"
        setup_file.write_text(
            yaml.safe_dump(
                {
                    "listen": "127.0.0.1:0",
                    "state_dir": str(state_dir),
                    "secret": "a-secret-of-at-least-32-characters-long",
                    "routes": [
                        {
                            "name": "r",
                            "host": "127.0.0.1",
                            "port": 1,
                            "tls": "none",
                            "from": "probe@client.test",
                        }
                    ],
                    "mailboxes": [
                        {
                            "name": "m",
                            "host": "127.0.0.1",
                            "port": 1,
                            "tls": "none",
                            "allow_plaintext_auth": True,
                            "address": "seed@seed.test",
                            "auth": {
                                "username": "seed@example.com",
                                "oauth2": {
                                    "token_url": server.url,
                                    "device_authorization_url": server.url,
                                    "client_id": "agent-login",
                                    "client_secret": CLIENT_SECRET,
                                },
                            },
                        }
                    ],
                }
            )
        )
        result = subprocess.run(
            agent_command("oauth", "login", "--config", str(setup_file), "--mailbox", "m"),
            capture_output=True,
            text=True,
            check=False,
            timeout=WAIT,
        )
    assert result.returncode == 0, result.stderr
    assert DeviceAuthorization.USER_CODE in result.stdout
    stored = refresh_token_path(state_dir, "m")
    assert f"stored in {stored} (mode 0600)" in result.stdout
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stored.read_text().splitlines()[0] == FIRST_REFRESH
    assert FIRST_REFRESH not in result.stdout + result.stderr
    assert CLIENT_SECRET not in result.stdout + result.stderr


def test_a_mailbox_provider_profile_picks_the_login_flow_too(tmp_path: Path) -> None:
    """`provider: gmail` / `microsoft365` on the mailbox fill oauth2's preset, login URLs
    included (the shipped config.yaml's examples rely on it)."""
    path = tmp_path / "config.yaml"
    seeds = [
        ("gmail-seed", "gmail", "seed@gmail.com", {"client_secret": CLIENT_SECRET}),
        ("m365-seed", "microsoft365", "seed@contoso.com", {"tenant": "contoso.com"}),
    ]
    path.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "state_dir": str(tmp_path / "state"),
                "secret": "a-secret-of-at-least-32-characters-long",
                "routes": [
                    {"name": "r", "host": "127.0.0.1", "port": 1, "tls": "none", "from": "p@c.test"}
                ],
                "mailboxes": [
                    {
                        "name": name,
                        "provider": provider,
                        "address": address,
                        "auth": {"username": address, "oauth2": {"client_id": "app", **extra}},
                    }
                    for name, provider, address, extra in seeds
                ],
            }
        )
    )
    config = load_config(path)
    gmail, m365 = (
        plan_login(config, "mailbox", "gmail-seed"),
        plan_login(config, "mailbox", "m365-seed"),
    )
    assert gmail.flow is Flow.LOOPBACK and m365.flow is Flow.DEVICE
    assert m365.oauth2 is not None and m365.oauth2.device_authorization_url == (
        "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/devicecode"
    )
    assert gmail.store is not None
    assert gmail.store.path == refresh_token_path(config.state_dir, "gmail-seed")
