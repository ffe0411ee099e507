"""Secrets: read from files at load time, exposed as SecretStr, and never shown anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, ConfigError, load_config, validate_config

MARK = "TOPSECRET"  # every secret below contains it; no repr or message may


def _data(**top: Any) -> dict[str, Any]:
    return {
        "secret": f"{MARK}-0123456789abcdef",
        "routes": [
            {
                "name": "submission",
                "host": "127.0.0.1",
                "from": "probe@example.com",
                "auth": {"username": "probe", "password": f"{MARK}-route"},
            }
        ],
        "mailboxes": [
            {
                "name": "seed",
                "host": "127.0.0.1",
                "auth": {"username": "seed", "password": f"{MARK}-seed"},
                "address": "seed@example.com",
            }
        ],
        **top,
    }


def _validate(data: dict[str, Any], base_dir: Path = Path("/etc/agent")) -> Config:
    return validate_config(data, base_dir=base_dir, environ={})


def test_config_secrets_are_available_to_consumers() -> None:
    config = _validate(_data())
    assert config.secret.get_secret_value() == f"{MARK}-0123456789abcdef"
    route_auth = config.routes[0].auth
    assert route_auth is not None
    assert route_auth.password is not None
    assert route_auth.password.get_secret_value() == f"{MARK}-route"
    assert config.mailboxes[0].auth.password is not None
    assert config.mailboxes[0].auth.password.get_secret_value() == f"{MARK}-seed"


def test_config_repr_str_and_json_never_contain_a_secret() -> None:
    config = _validate(_data())
    for text in (
        repr(config),
        str(config),
        repr(config.routes[0]),
        repr(config.mailboxes[0].auth),
        config.model_dump_json(),
    ):
        assert MARK not in text
        assert "**********" in text


def test_config_password_and_secret_files_are_read_at_load(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "hmac").write_text(f"{MARK}-from-a-file\n", encoding="utf-8")
    (tmp_path / "route-password").write_bytes(f"{MARK}-route-file\r\n".encode())
    data = _data(secret_file="secrets/hmac")
    del data["secret"]
    data["routes"][0]["auth"] = {"username": "probe", "password_file": "route-password"}

    config = _validate(data, tmp_path)

    assert config.secret.get_secret_value() == f"{MARK}-from-a-file"
    assert config.secret_file == tmp_path / "secrets" / "hmac"
    route_auth = config.routes[0].auth
    assert route_auth is not None
    assert route_auth.password is not None
    assert route_auth.password.get_secret_value() == f"{MARK}-route-file"
    assert route_auth.password_file == tmp_path / "route-password"
    assert MARK not in repr(config)


@pytest.mark.parametrize(
    ("content", "password"),
    [
        ("pw-with-newline\n", "pw-with-newline"),
        ("pw-with-two\n\n", "pw-with-two\n"),  # only one newline is the editor's
        ("pw-without", "pw-without"),
        ("  spaced pw  \n", "  spaced pw  "),
    ],
)
def test_config_password_file_loses_exactly_one_trailing_newline(
    tmp_path: Path, content: str, password: str
) -> None:
    (tmp_path / "pw").write_text(content, encoding="utf-8")
    data = _data()
    data["mailboxes"][0]["auth"] = {"username": "seed", "password_file": "pw"}
    auth = _validate(data, tmp_path).mailboxes[0].auth
    assert auth.password is not None
    assert auth.password.get_secret_value() == password


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"secret": f"{MARK}-short"}, id="secret-too-short"),
        pytest.param({"secret": 12345678901234567}, id="secret-not-a-string"),
        pytest.param({"secret": [f"{MARK}-a-list-item-long-enough"]}, id="secret-a-list"),
        pytest.param({"secert": f"{MARK}-misspelled-key"}, id="secret-misspelled"),
        pytest.param({"route_auth": f"{MARK}-auth-as-string"}, id="auth-not-a-mapping"),
        pytest.param({"route_auth": {"password": f"{MARK}-no-user"}}, id="auth-without-username"),
        pytest.param(
            {"route_auth": {"username": "u", "passwd": f"{MARK}-misspelled"}}, id="password-typo"
        ),
        pytest.param({"route_tls": "none"}, id="plaintext-auth"),
        pytest.param({"route_password": 123456}, id="password-not-a-string"),
    ],
)
def test_config_errors_never_show_a_secret(change: dict[str, Any]) -> None:
    data = _data()
    route = data["routes"][0]
    for key, value in change.items():
        if key == "route_auth":
            route["auth"] = value
        elif key == "route_tls":
            route["tls"] = value
        elif key == "route_password":
            route["auth"]["password"] = value
        else:
            data[key] = value

    with pytest.raises(ConfigError) as caught:
        _validate(data)

    message = str(caught.value)
    assert message  # a problem was reported ...
    assert MARK not in message  # ... without the secret
    assert "12345678901234567" not in message and "123456" not in message
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_config_secret_from_environment_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "secret: ${AGENT_SECRET}\n"
        "routes: [{name: r, host: 127.0.0.1, from: probe@example.com}]\n"
        "mailboxes:\n"
        "  - {name: m, host: 127.0.0.1, address: seed@example.com,\n"
        "     auth: {username: seed, password: '${SEED_PASSWORD}'}}\n",
        encoding="utf-8",
    )
    config = load_config(
        path, environ={"AGENT_SECRET": f"{MARK}-from-env-0123", "SEED_PASSWORD": f"{MARK}-pw"}
    )
    assert config.secret.get_secret_value() == f"{MARK}-from-env-0123"
    assert config.mailboxes[0].auth.password is not None
    assert config.mailboxes[0].auth.password.get_secret_value() == f"{MARK}-pw"
    assert MARK not in repr(config)


@pytest.mark.parametrize("value", [None, "", 12, ["a-list"], "."])
def test_config_secret_file_that_is_not_a_readable_file_fails_closed(value: object) -> None:
    data = _data(secret_file=value)
    del data["secret"]
    data["mailboxes"][0]["auth"] = {"username": "seed", "password_file": value}

    with pytest.raises(ConfigError) as caught:
        _validate(data, Path("/nonexistent-base"))

    assert [line.split(": ")[1] for line in caught.value.problems] == [
        "secret_file",
        "mailboxes[0].auth.password_file",
    ]
