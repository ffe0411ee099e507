"""`deliverability-agent inspect`: saved messages read by the watchers' own reading code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agent.app.cli import main
from tests.agent_setup import TEST_SECRET
from tests.one_pair_config import signed_probe

SECRET = "inspect-test-secret-0123456789"
MESSAGES = Path(__file__).parent / "messages"
# A real Postfix DSN from the test mail system (see tests/messages/README.md).
DSN = MESSAGES / "postfix-dsn-hard-5.1.1.eml"
GMAIL_STYLE_AR = (
    "Authentication-Results: mx.google.com;\r\n"
    "       dkim=pass header.i=@good.test header.s=sel header.b=abc;\r\n"
    "       spf=pass (google.com: domain of probe@good.test designates 192.0.2.1 as permitted "
    "sender) smtp.mailfrom=probe@good.test;\r\n"
    "       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=good.test\r\n"
)


def _probe(secret: str = SECRET) -> tuple[str, bytes]:
    """A probe signed with `secret`, as Gmail delivers it: its field on top."""
    probe_id, message = signed_probe(secret=secret, sender="probe@good.test")
    return probe_id, GMAIL_STYLE_AR.encode() + message


def _config(tmp_path: Path, secret: str = SECRET) -> Path:
    path = tmp_path / "config.yaml"
    mailbox = {
        "host": "127.0.0.1",
        "auth": {"username": "u", "password": "imap-password-1"},
    }
    path.write_text(
        yaml.safe_dump(
            {
                "secret": secret,
                "state_dir": str(tmp_path / "state"),
                "routes": [{"name": "r", "host": "127.0.0.1", "from": "probe@good.test"}],
                "mailboxes": [
                    {
                        "name": "gmail",
                        "address": "seed@seed.test",
                        "trusted_authserv_ids": ["mx.google.com"],
                        **mailbox,
                    }
                ],
                "bounce_mailboxes": [
                    {"name": "bounces", "address": "bounces@good.test", **mailbox}
                ],
            }
        )
    )
    return path


def _json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_inspect_verifies_the_probe_token_with_the_configured_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    probe_id, ours = _probe()
    _, theirs = _probe("another-agent-secret-0123456789")
    (tmp_path / "ours.eml").write_bytes(ours)
    (tmp_path / "theirs.eml").write_bytes(theirs)
    config = _config(tmp_path)
    files = [str(tmp_path / "ours.eml"), str(tmp_path / "theirs.eml")]

    assert main(["inspect", "--json", "--config", str(config), *files]) == 0
    first, second = _json_lines(capsys)
    assert (first["kind"], first["probe"]) == ("probe", {"id": probe_id, "token": "valid"})
    assert second["kind"] == "probe"
    assert second["probe"] == {"id": second["probe"]["id"], "token": "invalid"}  # type: ignore[index]

    assert main(["inspect", "--json", *files]) == 0
    unchecked = _json_lines(capsys)
    assert [line["probe"]["token"] for line in unchecked] == ["not checked (no --config)"] * 2  # type: ignore[index]


def test_inspect_applies_the_mailbox_trust_rules_or_those_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, raw = _probe()
    path = tmp_path / "probe.eml"
    path.write_bytes(raw)
    config = _config(tmp_path)

    assert main(["inspect", "--json", "-c", str(config), "--mailbox", "gmail", str(path)]) == 0
    (trusted,) = _json_lines(capsys)
    auth = trusted["auth"]
    assert isinstance(auth, dict)
    # The receiver's own field, trusted by its authserv-id, with every resinfo as written.
    assert (auth["spf"], auth["dkim"], auth["dmarc"], auth["arc"]) == ("pass", "pass", "pass", None)
    assert auth["methods"] == {"dkim": "pass", "spf": "pass", "dmarc": "pass"}
    assert auth["dkim_signatures"] == [{"domain": "good.test", "selector": "sel", "result": "pass"}]
    spf = next(detail for detail in auth["details"] if detail["method"] == "spf")
    assert spf["authserv_id"] == "mx.google.com"
    assert spf["properties"] == {"smtp.mailfrom": "probe@good.test"}
    assert spf["comment"].startswith("google.com: domain of probe@good.test")
    assert main(["inspect", "--json", "--trusted-authserv-id", "mx.example", str(path)]) == 0
    (untrusted,) = _json_lines(capsys)
    assert untrusted["auth"]["methods"] == {}  # type: ignore[index]


def test_inspect_reads_a_bounce_and_bare_header_blocks_in_lf_or_crlf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, raw = _probe()
    headers = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0] + b"\n"
    (tmp_path / "lf.txt").write_bytes(headers)
    (tmp_path / "crlf.txt").write_bytes(headers.replace(b"\n", b"\r\n"))
    files = [str(DSN), str(tmp_path / "lf.txt"), str(tmp_path / "crlf.txt")]

    assert main(["inspect", "--json", "--trusted-authserv-id", "mx.google.com", *files]) == 0
    dsn, lf, crlf = _json_lines(capsys)
    assert dsn["kind"] == "bounce"
    assert dsn["bounce"] == {
        "type": "hard",
        "status": "5.1.1",
        "smtp_code": "550",
        "recipient": "nobody-132a2d3e@seed.test",
        "recipient_invalid": True,
        "reason": "recipient_invalid",
        "action": "failed",
        "reporting_mta": "mail.good.test",
        "original_message_id": "01m8h9j127ya08stfwvwzdepnt.51x5p2dw49darx0h0tqj9kndv3@good.test",
    }
    assert {key: value for key, value in lf.items() if key != "file"} == {
        key: value for key, value in crlf.items() if key != "file"
    }
    assert lf["kind"] == "probe"
    assert lf["auth"]["methods"] == {"dkim": "pass", "spf": "pass", "dmarc": "pass"}  # type: ignore[index]


def test_inspect_prints_every_readable_file_and_exits_2_for_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.eml"
    assert main(["inspect", str(missing), str(DSN)]) == 2
    captured = capsys.readouterr()
    assert f"{missing}: No such file or directory" in captured.err
    assert captured.out.startswith(f"{DSN}: bounce")
    assert "  bounce: type=hard status=5.1.1" in captured.out


def test_inspect_refuses_a_mailbox_it_cannot_look_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", "--mailbox", "gmail", str(DSN)]) == 2
    assert "--mailbox needs --config" in capsys.readouterr().err
    config = _config(tmp_path)
    assert main(["inspect", "-c", str(config), "--mailbox", "nope", str(DSN)]) == 2
    err = capsys.readouterr().err
    assert "no mailbox 'nope'" in err and "(known: gmail, bounces)" in err


def test_inspect_with_a_config_says_whether_a_bounce_proves_its_probe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The sample returns the probe it bounces, signed with the test mail system's secret.
    ours = _config(tmp_path, TEST_SECRET)
    assert main(["inspect", "--json", "-c", str(ours), str(DSN)]) == 0
    (proven,) = _json_lines(capsys)
    assert proven["bounce"]["probe"] == {  # type: ignore[index]
        "id": "01m8h9j127ya08stfwvwzdepnt",
        "proof": "signed token",
        "forgery": None,
    }
    assert main(["inspect", "-c", str(_config(tmp_path)), str(DSN)]) == 0
    assert "bounce of probe: id=01m8h9j127ya08stfwvwzdepnt forgery=it carries neither" in (
        capsys.readouterr().out
    )
