"""SMTP AUTH XOAUTH2 / OAUTHBEARER against a scripted server: what the real Postfix cannot show
(a server offering XOAUTH2 only, the exact bytes of the exchange, the order of EHLO and AUTH)."""

from __future__ import annotations

import base64
import dataclasses
import ssl
from pathlib import Path

import pytest

from agent.model import ErrorKind, SendResult, Stage, TlsMode
from agent.oauth import OAuthSignIn, SaslMechanism, TokenSource
from agent.sasl import initial_response
from agent.smtp.sender import SmtpTarget, send_probe
from tests.oauth_helpers import FailingTokenSource, HangingTokenSource, RecordingTokenSource
from tests.scripted_smtp import Script, ScriptedSmtpServer

USER = "probe@sender.test"
TOKEN = "ya29.a0-valid-token"
WRONG = "ya29.a0-stale-token"
ERROR_JSON = '{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}'


def target(
    port: int,
    tokens: TokenSource,
    mechanism: SaslMechanism | None = None,
    *,
    tls: TlsMode = TlsMode.NONE,
    ca_file: Path | None = None,
) -> SmtpTarget:
    return SmtpTarget(
        route="test",
        host="127.0.0.1",
        port=port,
        tls=tls,
        tls_verify=True,
        ca_file=ca_file,
        oauth=OAuthSignIn(USER, tokens, mechanism),
        ehlo_name="probe.sender.test",
        connect_timeout=5.0,
        stage_timeout=30.0,  # a hang shows up as kind timeout, not as a fast wrong verdict
        total_timeout=30.0,
    )


async def send(smtp: SmtpTarget) -> SendResult:
    return await send_probe(
        smtp, envelope_from=USER, recipients=["seed@inbox.test"], message=b"Subject: x\n\nx\n"
    )


def decoded(line: str) -> str:
    return base64.b64decode(line.rpartition(" ")[2]).decode()


def script(
    *mechanisms: str, bearer_error: str = ERROR_JSON, tls_context: ssl.SSLContext | None = None
) -> Script:
    return Script(
        auth_mechanisms=mechanisms,
        bearer_token=TOKEN,
        bearer_error=bearer_error,
        tls_context=tls_context,
    )


async def test_oauthbearer_is_chosen_first_when_both_are_offered_with_the_rfc_7628_gs2_header() -> (
    None
):
    async with ScriptedSmtpServer(script("XOAUTH2", "OAUTHBEARER")) as server:
        result = await send(target(server.port, RecordingTokenSource(TOKEN)))

    assert result.error is None and result.accepted
    auth = [c for c in server.sessions[0].commands if c.startswith("AUTH ")]
    assert [line.split(" ")[1] for line in auth] == ["OAUTHBEARER"]
    assert decoded(auth[0]) == f"n,a={USER},\x01auth=Bearer {TOKEN}\x01\x01"


async def test_a_server_offering_only_xoauth2_gets_xoauth2() -> None:
    async with ScriptedSmtpServer(script("XOAUTH2")) as server:
        result = await send(target(server.port, RecordingTokenSource(TOKEN)))

    assert result.error is None and result.accepted
    auth = [c for c in server.sessions[0].commands if c.startswith("AUTH ")]
    assert len(auth) == 1 and auth[0].startswith("AUTH XOAUTH2 ")
    assert decoded(auth[0]) == f"user={USER}\x01auth=Bearer {TOKEN}\x01\x01"


async def test_a_configured_mechanism_not_offered_is_an_auth_error_before_any_token() -> None:
    tokens = RecordingTokenSource(TOKEN)
    async with ScriptedSmtpServer(script("XOAUTH2")) as server:
        result = await send(target(server.port, tokens, SaslMechanism.OAUTHBEARER))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.AUTH, ErrorKind.AUTH)
    assert "OAUTHBEARER (configured) is not offered" in result.error.message
    assert "offered: XOAUTH2" in result.error.message
    assert tokens.asked == 0
    assert not any(c.startswith("AUTH") for c in server.sessions[0].commands)


async def test_a_server_offering_no_oauth_mechanism_is_an_auth_error() -> None:
    async with ScriptedSmtpServer(
        Script(credentials=("someone", "pw"), auth_mechanisms=("PLAIN", "LOGIN"))
    ) as server:
        result = await send(target(server.port, RecordingTokenSource(TOKEN)))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.AUTH, ErrorKind.AUTH)
    assert "neither OAUTHBEARER nor XOAUTH2 is offered (offered: PLAIN LOGIN)" in (
        result.error.message
    )


@pytest.mark.parametrize(
    ("mechanism", "answer"), [(SaslMechanism.XOAUTH2, ""), (SaslMechanism.OAUTHBEARER, "AQ==")]
)
async def test_the_error_challenge_is_answered_and_the_final_535_carries_the_decoded_json(
    mechanism: SaslMechanism, answer: str
) -> None:
    tokens = RecordingTokenSource(WRONG)
    async with ScriptedSmtpServer(
        script("XOAUTH2", "OAUTHBEARER", bearer_error=ERROR_JSON)
    ) as server:
        result = await send(target(server.port, tokens, mechanism))

    name = mechanism.value.upper()
    ir = initial_response(mechanism, USER, WRONG).decode()
    commands = server.sessions[0].commands
    # Byte for byte: the AUTH line, the answer to the 334 error challenge, then QUIT.
    assert commands[commands.index(f"AUTH {name} {ir}") :] == [f"AUTH {name} {ir}", answer, "QUIT"]
    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.AUTH, ErrorKind.AUTH)
    assert f"535 5.7.8 Username and Password not accepted (server error: {ERROR_JSON})" in (
        result.error.message
    )
    assert tokens.refused_tokens == [tokens.token]
    texts = result.error.message + "".join(reply.text for reply in result.transcript)
    assert WRONG not in texts and ir not in texts


async def test_an_auth_line_past_2048_bytes_sends_the_initial_response_after_the_334() -> None:
    long_token = "eyJ0eXAiOiJKV1Qi." + "x" * 1900
    async with ScriptedSmtpServer(
        Script(auth_mechanisms=("XOAUTH2",), bearer_token=long_token)
    ) as server:
        result = await send(target(server.port, RecordingTokenSource(long_token)))

    assert result.error is None and result.accepted
    commands = server.sessions[0].commands
    at = commands.index("AUTH XOAUTH2")  # bare: no initial response on the line
    assert decoded(commands[at + 1]) == f"user={USER}\x01auth=Bearer {long_token}\x01\x01"


async def test_an_auth_line_of_2048_bytes_keeps_the_initial_response_on_it() -> None:
    # "AUTH XOAUTH2 " + base64 + CRLF: pick the token so the whole line is 2048 bytes.
    base = len(initial_response(SaslMechanism.XOAUTH2, USER, ""))
    token = "t" * ((2048 - len("AUTH XOAUTH2 \r\n") - base) * 3 // 4)
    line = f"AUTH XOAUTH2 {initial_response(SaslMechanism.XOAUTH2, USER, token).decode()}\r\n"
    assert 2045 <= len(line) <= 2048
    async with ScriptedSmtpServer(
        Script(auth_mechanisms=("XOAUTH2",), bearer_token=token)
    ) as server:
        result = await send(target(server.port, RecordingTokenSource(token)))

    assert result.error is None and result.accepted
    assert f"{line[:-2]}" in server.sessions[0].commands


async def test_a_token_error_ends_at_auth_with_kind_token_and_sends_no_auth() -> None:
    tokens = FailingTokenSource()
    async with ScriptedSmtpServer(script("XOAUTH2")) as server:
        result = await send(target(server.port, tokens))

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.AUTH, ErrorKind.TOKEN)
    assert "credential 'revoked-credential'" in result.error.message
    assert "invalid_grant" in result.error.message
    assert not any(c.startswith("AUTH") for c in server.sessions[0].commands)
    assert server.sessions[0].commands[-1] == "QUIT"


async def test_a_token_source_that_hangs_is_kind_token_after_the_stage_timeout() -> None:
    async with ScriptedSmtpServer(script("XOAUTH2")) as server:
        smtp = dataclasses.replace(target(server.port, HangingTokenSource()), stage_timeout=0.5)
        result = await send(smtp)

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.AUTH, ErrorKind.TOKEN)
    assert "no OAuth access token within stage_timeout 0.5s" in result.error.message
    assert "'hanging-credential'" in result.error.message
    assert not any(c.startswith("AUTH") for c in server.sessions[0].commands)


async def test_ehlo_is_sent_again_after_starttls_before_auth(
    server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    # Microsoft answers AUTH on the pre-TLS EHLO's session with 530 5.7.57.
    async with ScriptedSmtpServer(script("XOAUTH2", tls_context=server_tls)) as server:
        result = await send(
            target(
                server.port,
                RecordingTokenSource(TOKEN),
                tls=TlsMode.STARTTLS,
                ca_file=ca_file,
            )
        )

    assert result.error is None and result.accepted
    verbs = [c.split(" ")[0] for c in server.sessions[0].commands]
    assert verbs[:4] == ["EHLO", "STARTTLS", "EHLO", "AUTH"]


async def test_oauth_is_never_sent_in_plain_text_when_starttls_is_not_offered() -> None:
    tokens = RecordingTokenSource(TOKEN)
    async with ScriptedSmtpServer(script("XOAUTH2")) as server:
        smtp = target(server.port, tokens, tls=TlsMode.OPPORTUNISTIC)
        result = await send(smtp)

    assert result.error is not None
    assert (result.error.stage, result.error.kind) == (Stage.AUTH, ErrorKind.TLS)
    assert tokens.asked == 0


def test_oauth_and_a_password_together_are_refused() -> None:
    with pytest.raises(ValueError, match="mutually exclusive"):
        SmtpTarget(
            route="test",
            host="127.0.0.1",
            port=587,
            tls=TlsMode.STARTTLS,
            tls_verify=True,
            username=USER,
            password="pw",
            oauth=OAuthSignIn(USER, RecordingTokenSource(TOKEN)),
            ehlo_name="probe.sender.test",
            connect_timeout=5.0,
            stage_timeout=5.0,
            total_timeout=5.0,
        )
