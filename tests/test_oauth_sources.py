"""The token sources against a scripted OAuth token endpoint on loopback: grants, rotation,
error kinds, backoff, single flight, refresh ahead of expiry; token commands and token files."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import stat
import sys
from pathlib import Path

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.model import TokenRefreshed
from agent.oauth import TokenError, TokenErrorKind
from agent.oauth.command import TokenCommand, TokenFile, excerpt
from agent.oauth.endpoint import TokenEndpoint
from agent.oauth.grants import (
    JWT_BEARER,
    ClientCredentialsGrant,
    RefreshTokenGrant,
    ServiceAccountGrant,
)
from agent.oauth.lifecycle import BACKOFF_MIN, CachingTokenSource
from agent.oauth.refresh_store import RefreshTokenStore
from agent.secrets import MASK
from tests.token_endpoint import Answer, TokenEndpointServer, error, token


class Clock:
    """A clock the test moves: expiry and backoff without sleeping."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def refresh_source(
    server: TokenEndpointServer,
    store: RefreshTokenStore,
    *,
    clock: Clock | None = None,
    timeout: float = 10.0,
    ca_file: Path | None = None,
    reports: list[TokenRefreshed] | None = None,
) -> CachingTokenSource:
    endpoint = TokenEndpoint(server.url, credential="seed", timeout=timeout, ca_file=ca_file)
    grant = RefreshTokenGrant(
        endpoint, store, client_id="app-id", client_secret="client-sekret", scope="mail offline"
    )
    return CachingTokenSource(
        "seed",
        grant,
        clock=clock or Clock(),
        on_refresh=reports.append if reports is not None else None,
    )


def store_in(tmp_path: Path, configured: str | None = "rt-1") -> RefreshTokenStore:
    return RefreshTokenStore(
        tmp_path / "state" / "oauth" / "seed.refresh-token",
        credential="seed",
        configured=configured,
    )


# --- the refresh-token grant --------------------------------------------------------------------


async def test_refresh_grant_trades_the_refresh_token_for_an_access_token(tmp_path: Path) -> None:
    clock = Clock()
    with TokenEndpointServer([token("at-1", expires_in=3600)]) as server:
        source = refresh_source(server, store_in(tmp_path), clock=clock)
        got = await source.access_token()
    assert got.value == "at-1"
    assert got.expires_at == clock.now + 3600
    assert server.requests == [
        {
            "grant_type": "refresh_token",
            "refresh_token": "rt-1",
            "client_id": "app-id",
            "client_secret": "client-sekret",
            "scope": "mail offline",
        }
    ]


async def test_rotated_refresh_token_is_persisted_0600_and_used_after_a_restart(
    tmp_path: Path,
) -> None:
    store = store_in(tmp_path)
    with TokenEndpointServer([token("at-1", refresh_token="rt-2"), token("at-2")]) as server:
        await refresh_source(server, store).access_token()
        assert store.path.read_text().splitlines()[0] == "rt-2"
        assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
        assert [p.name for p in store.path.parent.iterdir()] == [store.path.name]  # no temp left

        # A restart: a new store and source from the same config (refresh_token: rt-1).
        restarted = refresh_source(server, store_in(tmp_path))
        assert (await restarted.access_token()).value == "at-2"
    assert [r["refresh_token"] for r in server.requests] == ["rt-1", "rt-2"]


async def test_a_new_refresh_token_in_the_config_wins_over_the_rotated_one_of_an_older(
    tmp_path: Path,
) -> None:
    with TokenEndpointServer([token("at-1", refresh_token="rt-2")]) as server:
        await refresh_source(server, store_in(tmp_path, "rt-1")).access_token()
    assert store_in(tmp_path, "rt-1").load() == "rt-2"
    assert store_in(tmp_path, "rt-new").load() == "rt-new"


async def test_refresh_token_file_is_read_and_rotations_go_back_to_it(tmp_path: Path) -> None:
    path = tmp_path / "seed.token"
    path.write_text("rt-file\n")
    store = RefreshTokenStore(path, credential="seed")
    with TokenEndpointServer([token("at-1", refresh_token="rt-next")]) as server:
        await refresh_source(server, store).access_token()
    assert server.requests[0]["refresh_token"] == "rt-file"
    assert path.read_text() == "rt-next\n"


async def test_missing_refresh_token_is_a_file_error_naming_the_path(tmp_path: Path) -> None:
    store = store_in(tmp_path, configured=None)
    with TokenEndpointServer([token("at-1")]) as server, pytest.raises(TokenError) as caught:
        await refresh_source(server, store).access_token()
    assert caught.value.kind is TokenErrorKind.FILE
    assert str(store.path) in str(caught.value)
    assert server.requests == []


# --- error kinds and backoff ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (error("invalid_grant", "AADSTS70008: The refresh token has expired"), "invalid_grant"),
        (
            error("invalid_client", "AADSTS7000215: Invalid client secret", status=401),
            "invalid_client",
        ),
        (error("invalid_scope", "AADSTS70011"), "refused"),
        (error("temporarily_unavailable", status=400), "endpoint"),
        (Answer(503, b"<html>Service Unavailable</html>"), "endpoint"),
        (Answer(200, b"{not json"), "endpoint"),
        (Answer(200, {"token_type": "Bearer"}), "endpoint"),
    ],
    ids=[
        "invalid_grant",
        "invalid_client",
        "other_oauth_error",
        "server_trouble",
        "http_503",
        "malformed_json",
        "no_access_token",
    ],
)
async def test_token_endpoint_answers_map_to_error_kinds(
    tmp_path: Path, answer: Answer, kind: str
) -> None:
    with TokenEndpointServer([answer]) as server, pytest.raises(TokenError) as caught:
        await refresh_source(server, store_in(tmp_path)).access_token()
    assert caught.value.kind == kind
    assert "rt-1" not in str(caught.value) and "client-sekret" not in str(caught.value)


async def test_oauth_error_message_carries_the_servers_description(tmp_path: Path) -> None:
    answer = error("invalid_grant", "AADSTS70008: The provided authorization grant has expired")
    with TokenEndpointServer([answer]) as server, pytest.raises(TokenError) as caught:
        await refresh_source(server, store_in(tmp_path)).access_token()
    assert str(caught.value) == (
        "credential 'seed': token endpoint refused: invalid_grant: AADSTS70008: The provided "
        "authorization grant has expired"
    )


async def test_an_endpoint_echoing_the_refresh_token_has_it_masked(tmp_path: Path) -> None:
    endpoint_answer = error("invalid_request", "bad refresh_token rt-1 from app-id")
    with TokenEndpointServer([endpoint_answer]) as server:
        endpoint = TokenEndpoint(
            server.url, credential="seed", timeout=10, redact=lambda t: t.replace("rt-1", MASK)
        )
        grant = RefreshTokenGrant(
            endpoint, store_in(tmp_path), client_id="app-id", client_secret=None, scope=""
        )
        with pytest.raises(TokenError) as caught:
            await CachingTokenSource("seed", grant).access_token()
    assert "rt-1" not in str(caught.value) and MASK in str(caught.value)
    assert "client_secret" not in server.requests[0]  # a public client sends none


async def test_unreachable_endpoint_is_endpoint_kind(tmp_path: Path) -> None:
    with TokenEndpointServer([token("unused")]) as server:
        url = server.url
    endpoint = TokenEndpoint(url, credential="seed", timeout=10)  # the port is closed now
    grant = RefreshTokenGrant(
        endpoint, store_in(tmp_path), client_id="a", client_secret=None, scope=""
    )
    with pytest.raises(TokenError) as caught:
        await CachingTokenSource("seed", grant).access_token()
    assert caught.value.kind is TokenErrorKind.ENDPOINT
    assert "unreachable" in str(caught.value)


async def test_endpoint_that_never_answers_is_timeout_kind(tmp_path: Path) -> None:
    with TokenEndpointServer([Answer(hang=True)]) as server, pytest.raises(TokenError) as caught:
        await refresh_source(server, store_in(tmp_path), timeout=0.3).access_token()
    assert caught.value.kind is TokenErrorKind.TIMEOUT
    assert "did not answer within 0.3 s" in str(caught.value)


async def test_revoked_credential_backs_off_exponentially_without_requests(
    tmp_path: Path,
) -> None:
    clock = Clock()
    reports: list[TokenRefreshed] = []
    with TokenEndpointServer([error("invalid_grant")]) as server:
        source = refresh_source(server, store_in(tmp_path), clock=clock, reports=reports)
        for _ in range(3):
            with pytest.raises(TokenError) as caught:
                await source.access_token()
            assert caught.value.kind is TokenErrorKind.INVALID_GRANT
        assert len(server.requests) == 1  # the two retries within the backoff asked nobody
        assert "next try in 30 s" in str(caught.value)
        assert source.state().retry_at == clock.now + BACKOFF_MIN

        clock.now += BACKOFF_MIN
        with pytest.raises(TokenError):
            await source.access_token()
        assert len(server.requests) == 2
        assert source.state().retry_at == clock.now + 2 * BACKOFF_MIN  # doubled

        server.answer(token("at-ok"))
        clock.now += 2 * BACKOFF_MIN
        assert (await source.access_token()).value == "at-ok"
    state = source.state()
    assert (state.error_kind, state.failures, state.retry_at) == (None, 0, None)
    assert [r.result for r in reports] == ["invalid_grant", "invalid_grant", "ok"]


async def test_backoff_is_capped_at_fifteen_minutes(tmp_path: Path) -> None:
    clock = Clock()
    with TokenEndpointServer([error("invalid_client")]) as server:
        source = refresh_source(server, store_in(tmp_path), clock=clock)
        delays = []
        for _ in range(8):
            with pytest.raises(TokenError):
                await source.access_token()
            retry_at = source.state().retry_at
            assert retry_at is not None
            delays.append(retry_at - clock.now)
            clock.now = retry_at
    assert delays == [30, 60, 120, 240, 480, 900, 900, 900]
    assert len(server.requests) == 8


# --- the lifecycle ------------------------------------------------------------------------------


async def test_fifty_concurrent_callers_share_one_refresh(tmp_path: Path) -> None:
    with TokenEndpointServer([token("at-1"), token("at-2")]) as server:
        source = refresh_source(server, store_in(tmp_path))
        tokens = await asyncio.gather(*(source.access_token() for _ in range(50)))
    assert {t.value for t in tokens} == {"at-1"}
    assert len(server.requests) == 1


async def test_fifty_concurrent_callers_all_get_the_one_failure(tmp_path: Path) -> None:
    with TokenEndpointServer([error("invalid_grant")]) as server:
        source = refresh_source(server, store_in(tmp_path))
        results = await asyncio.gather(
            *(source.access_token() for _ in range(50)), return_exceptions=True
        )
    assert all(isinstance(r, TokenError) and r.kind == "invalid_grant" for r in results)
    assert len(server.requests) == 1


async def test_token_is_cached_then_refreshed_ahead_of_its_expiry(tmp_path: Path) -> None:
    clock = Clock()
    with TokenEndpointServer([token("at-1", expires_in=3600), token("at-2")]) as server:
        source = refresh_source(server, store_in(tmp_path), clock=clock)
        assert (await source.access_token()).value == "at-1"
        clock.now += 3600 - 301  # 5 min 1 s left: still handed out
        assert (await source.access_token()).value == "at-1"
        assert len(server.requests) == 1
        clock.now += 2  # 4 min 59 s left (10 % of an hour, capped at 5 min): refreshed
        assert (await source.access_token()).value == "at-2"
    assert len(server.requests) == 2


async def test_a_failed_refresh_ahead_keeps_handing_out_the_token_that_still_works(
    tmp_path: Path,
) -> None:
    clock = Clock()
    with TokenEndpointServer([token("at-1", expires_in=3600), Answer(503)]) as server:
        source = refresh_source(server, store_in(tmp_path), clock=clock)
        await source.access_token()
        clock.now += 3600 - 10  # inside the refresh-ahead window
        with pytest.raises(TokenError):
            await source.access_token()  # the refresh this caller waited for failed
        assert (await source.access_token()).value == "at-1"  # backing off: the live token
        clock.now += 15  # expired, still backing off (30 s)
        with pytest.raises(TokenError) as caught:
            await source.access_token()
    assert caught.value.kind is TokenErrorKind.ENDPOINT
    assert len(server.requests) == 2


async def test_a_refused_token_is_not_handed_out_again(tmp_path: Path) -> None:
    with TokenEndpointServer([token("at-1"), token("at-2")]) as server:
        source = refresh_source(server, store_in(tmp_path))
        first = await source.access_token()
        source.refused(first)
        assert (await source.access_token()).value == "at-2"
        source.refused(first)  # a late refusal of the old token leaves the new one alone
        assert (await source.access_token()).value == "at-2"
    assert len(server.requests) == 2


async def test_a_caller_that_gives_up_does_not_cancel_the_shared_refresh(tmp_path: Path) -> None:
    with TokenEndpointServer([token("at-1")]) as server:
        source = refresh_source(server, store_in(tmp_path))
        impatient = asyncio.create_task(source.access_token())
        patient = asyncio.create_task(source.access_token())
        await asyncio.sleep(0)  # both are waiting on the one refresh
        impatient.cancel()
        assert (await patient).value == "at-1"
    assert len(server.requests) == 1


# --- TLS ----------------------------------------------------------------------------------------


async def test_endpoint_over_tls_is_verified_against_the_configured_ca(
    tmp_path: Path, server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    with TokenEndpointServer([token("at-tls")], tls=server_tls) as server:
        assert server.url.startswith("https://")
        source = refresh_source(server, store_in(tmp_path), ca_file=ca_file)
        assert (await source.access_token()).value == "at-tls"


async def test_endpoint_with_an_untrusted_certificate_is_endpoint_kind(
    tmp_path: Path, server_tls: ssl.SSLContext
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with TokenEndpointServer([token("at-tls")], tls=server_tls) as server:
        source = refresh_source(server, store_in(tmp_path), ca_file=other_ca)
        with pytest.raises(TokenError) as caught:
            await source.access_token()
    assert caught.value.kind is TokenErrorKind.ENDPOINT
    assert "TLS" in str(caught.value)
    assert server.requests == []


# --- client credentials and the service account ----------------------------------------------


async def test_client_credentials_grant_sends_the_client_and_the_app_scope() -> None:
    with TokenEndpointServer([token("at-app", expires_in=3599)]) as server:
        endpoint = TokenEndpoint(server.url, credential="m365", timeout=10)
        grant = ClientCredentialsGrant(
            endpoint,
            client_id="app-id",
            client_secret="client-sekret",
            scope="https://outlook.office365.com/.default",
        )
        assert (await CachingTokenSource("m365", grant).access_token()).value == "at-app"
    assert server.requests == [
        {
            "grant_type": "client_credentials",
            "client_id": "app-id",
            "client_secret": "client-sekret",
            "scope": "https://outlook.office365.com/.default",
        }
    ]


def write_service_account_key(path: Path, token_uri: str) -> rsa.RSAPrivateKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "probe-project",
                "private_key_id": "key-1",
                "private_key": pem,
                "client_email": "prober@probe-project.iam.gserviceaccount.com",
                "client_id": "1234567890",
                "token_uri": token_uri,
            }
        )
    )
    return key


async def test_service_account_sends_a_jwt_signed_with_its_key_for_the_user(
    tmp_path: Path,
) -> None:
    clock = Clock()
    with TokenEndpointServer([token("at-sa")]) as server:
        key = write_service_account_key(tmp_path / "key.json", server.url)
        endpoint = TokenEndpoint(server.url, credential="gmail", timeout=10)
        grant = ServiceAccountGrant(
            endpoint,
            key_file=tmp_path / "key.json",
            subject="seed@example.com",
            scope="https://mail.google.com/",
            credential="gmail",
        )
        source = CachingTokenSource("gmail", grant, clock=clock)
        assert (await source.access_token()).value == "at-sa"
    (form,) = server.requests
    assert form["grant_type"] == JWT_BEARER
    assert "client_id" not in form
    assertion = form["assertion"]
    assert jwt.get_unverified_header(assertion)["kid"] == "key-1"
    claims = jwt.decode(
        assertion,
        key.public_key(),
        algorithms=["RS256"],
        audience=server.url,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {
        "iss": "prober@probe-project.iam.gserviceaccount.com",
        "sub": "seed@example.com",
        "scope": "https://mail.google.com/",
        "aud": server.url,
        "iat": int(clock.now),
        "exp": int(clock.now) + 3600,
    }


async def test_service_account_key_that_went_missing_is_a_file_error(tmp_path: Path) -> None:
    with TokenEndpointServer([token("at-sa")]) as server:
        endpoint = TokenEndpoint(server.url, credential="gmail", timeout=10)
        grant = ServiceAccountGrant(
            endpoint,
            key_file=tmp_path / "gone.json",
            subject="s@example.com",
            scope="",
            credential="gmail",
        )
        with pytest.raises(TokenError) as caught:
            await CachingTokenSource("gmail", grant).access_token()
    assert caught.value.kind is TokenErrorKind.FILE
    assert server.requests == []


# --- token_command and token_file --------------------------------------------------------------


def script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "token_command.py"
    path.write_text(body)
    return [sys.executable, str(path)]


async def test_token_command_first_line_is_the_token(tmp_path: Path) -> None:
    argv = script(tmp_path, "print('at-cmd')\nprint('second line ignored')\n")
    source = CachingTokenSource("cmd", TokenCommand(argv, credential="cmd", timeout=30))
    assert (await source.access_token()).value == "at-cmd"
    assert (await source.access_token()).value == "at-cmd"
    assert source.refreshes == 1  # reused: a token of unknown lifetime is kept a while


async def test_token_command_failure_keeps_a_masked_excerpt_of_stderr(tmp_path: Path) -> None:
    argv = script(
        tmp_path,
        "import sys\n"
        "print('POST failed: refresh_token=1.AQ8AcGVyc29uYWwtc2VrcmV0LXRva2Vu',\n"
        "      file=sys.stderr)\n"
        "sys.exit(3)\n",
    )
    with pytest.raises(TokenError) as caught:
        await CachingTokenSource(
            "cmd", TokenCommand(argv, credential="cmd", timeout=30)
        ).access_token()
    assert caught.value.kind is TokenErrorKind.COMMAND
    assert "exited with status 3" in str(caught.value)
    assert "sekret" not in str(caught.value) and "1.AQ8A" not in str(caught.value)
    assert MASK in str(caught.value)


async def test_token_command_printing_nothing_is_a_command_error(tmp_path: Path) -> None:
    argv = script(tmp_path, "print()\n")
    with pytest.raises(TokenError) as caught:
        await CachingTokenSource(
            "cmd", TokenCommand(argv, credential="cmd", timeout=30)
        ).access_token()
    assert caught.value.kind is TokenErrorKind.COMMAND
    assert "printed no token" in str(caught.value)


async def test_token_command_that_hangs_is_a_timeout_and_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    argv = script(
        tmp_path,
        "import os, sys\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "sys.stdin = open(os.devnull)\n"
        "import threading; threading.Event().wait()\n",  # blocks until killed
    )
    with pytest.raises(TokenError) as caught:
        await CachingTokenSource(
            "cmd", TokenCommand(argv, credential="cmd", timeout=2.0)
        ).access_token()
    assert caught.value.kind is TokenErrorKind.TIMEOUT
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: no stray process left behind


def test_excerpt_is_bounded_and_masks_token_like_runs() -> None:
    text = excerpt(b"first\n" + b"x " * 300 + b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\n")
    assert len(text) <= 200
    assert "eyJ" not in excerpt(b"token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln rejected")


async def test_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("at-file-1\n")
    source = CachingTokenSource("file", TokenFile(path, credential="file"))
    assert (await source.access_token()).value == "at-file-1"
    assert (await source.access_token()).value == "at-file-1"
    assert source.refreshes == 1
    replacement = tmp_path / "token.new"
    replacement.write_text("at-file-2-longer\n")
    os.replace(replacement, path)  # how a renewing sidecar or a mounted secret changes it
    assert (await source.access_token()).value == "at-file-2-longer"


async def test_token_file_missing_or_empty_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "token"
    with pytest.raises(TokenError) as caught:
        await CachingTokenSource("file", TokenFile(path, credential="file")).access_token()
    assert caught.value.kind is TokenErrorKind.FILE
    path.write_text("\n")
    with pytest.raises(TokenError) as caught:
        await CachingTokenSource("file", TokenFile(path, credential="file")).access_token()
    assert caught.value.kind is TokenErrorKind.FILE
    assert "empty" in str(caught.value)
