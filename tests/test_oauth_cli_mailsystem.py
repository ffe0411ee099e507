"""`oauth test` against the real mail system: one token from the scripted endpoint, one sign-in
(IMAP AUTHENTICATE + SELECT INBOX for a mailbox, SMTP AUTH without sending for a route)."""

from __future__ import annotations

import io
import stat
import subprocess
from pathlib import Path

import pytest

from agent.app.oauth_check import oauth_test
from agent.oauth.sources import refresh_token_path
from tests.agent_process import WAIT, agent_command
from tests.agent_setup import GOOD_SENDER
from tests.mailsystem import MailSystem
from tests.test_oauth_agent_mailsystem import (
    CLIENT_SECRET,
    MAILBOX_RT,
    ROUTE_RT,
    leaks,
    oauth_setup,
)
from tests.token_endpoint import Issuer, TokenEndpointServer

pytestmark = pytest.mark.mailsystem


def test_oauth_test_signs_in_over_imap_and_smtp_and_says_what_it_proved(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    seed = mail_system.new_mailbox().address
    minted: list[str] = []

    def mint(user: str, n: int) -> str:
        minted.append(mail_system.mint_token(user, pad_to=2600))
        return minted[-1]

    issued = Issuer(mint, {ROUTE_RT: GOOD_SENDER.address, MAILBOX_RT: seed}, rotate=True)
    with TokenEndpointServer(issued) as endpoint:
        config_file = oauth_setup(mail_system, tmp_path, endpoint.url, seed=seed).write()
        runs = {
            flag: subprocess.run(
                agent_command("oauth", "test", "--config", str(config_file), flag, name),
                capture_output=True,
                text=True,
                check=False,
                timeout=WAIT,
            )
            for flag, name in (("--mailbox", "m"), ("--route", "r"))
        }
    mailbox, route = runs["--mailbox"], runs["--route"]
    assert mailbox.returncode == 0, mailbox.stdout + mailbox.stderr
    assert "token:   obtained for credential 'm' (refresh_token), expires 20" in mailbox.stdout
    assert f"sign-in: OK IMAP 127.0.0.1:{mail_system.ports.imaps} as {seed}" in mailbox.stdout
    assert "AUTHENTICATE OAUTHBEARER: OK" in mailbox.stdout
    assert "SELECT INBOX: OK" in mailbox.stdout
    assert route.returncode == 0, route.stdout + route.stderr
    assert "AUTH OAUTHBEARER: 235 " in route.stdout
    secrets = (CLIENT_SECRET, ROUTE_RT, MAILBOX_RT, *minted, f"rt-{seed}-rotated-1")
    output = "".join(run.stdout + run.stderr for run in runs.values())
    assert len(minted) == 2 and leaks(output, *secrets) == []
    # The endpoint rotated the refresh token on the way: stored as the agent stores it.
    stored = refresh_token_path(tmp_path / "state", "m")
    assert stored.read_text().splitlines()[0] == f"rt-{seed}-rotated-1"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


@pytest.mark.parametrize("failure", ["revoked", "refused"])
async def test_oauth_test_prints_the_error_kind_and_exits_1(
    mail_system: MailSystem, tmp_path: Path, failure: str
) -> None:
    seed = mail_system.new_mailbox().address
    # "refused": a token the server does not accept (signed with another key).
    issued = Issuer(
        lambda user, n: mail_system.mint_token(user, forged=True),
        {ROUTE_RT: GOOD_SENDER.address, MAILBOX_RT: seed},
    )
    if failure == "revoked":
        issued.revoke(seed)
        issued.revoke(GOOD_SENDER.address)
    with TokenEndpointServer(issued) as endpoint:
        config = oauth_setup(mail_system, tmp_path, endpoint.url, seed=seed).load()
        outs = {kind: io.StringIO() for kind in ("mailbox", "route")}
        codes = {
            "mailbox": await oauth_test(config, "mailbox", "m", out=outs["mailbox"]),
            "route": await oauth_test(config, "route", "r", out=outs["route"]),
        }
    assert codes == {"mailbox": 1, "route": 1}
    mailbox, route = outs["mailbox"].getvalue(), outs["route"].getvalue()
    if failure == "revoked":
        assert "token:   FAILED (invalid_grant)" in mailbox
        assert "token:   FAILED (invalid_grant)" in route
    else:
        assert "sign-in: FAILED (auth)" in mailbox and '"status":"invalid_token"' in mailbox
        assert "sign-in: FAILED (auth at auth)" in route and "535" in route
