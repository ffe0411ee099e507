"""${VAR} and ${VAR:-default} interpolation in every string value, before validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config, ConfigError, load_config
from agent.model import TlsMode

BASE = """\
secret: ${SECRET:-0123456789abcdef}
routes:
  - name: ${ROUTE_NAME:-submission}
    host: ${SMTP_HOST:-127.0.0.1}
    port: ${SMTP_PORT:-587}
    from: ${PROBE_FROM:-Probe <probe@example.com>}
mailboxes:
  - name: seed
    host: 127.0.0.1
    auth: {username: seed, password: "${SEED_PASSWORD:-seed-password}"}
    address: seed@example.com
    trusted_authserv_ids: ["${AUTHSERV:-mx.example.com}", literal]
"""


def _load(tmp_path: Path, environ: dict[str, str], text: str = BASE) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ=environ)


def test_config_interpolation_defaults_apply_when_unset(tmp_path: Path) -> None:
    config = _load(tmp_path, {})
    route = config.routes[0]
    assert (route.name, route.host, route.port) == ("submission", "127.0.0.1", 587)
    assert route.from_ == "Probe <probe@example.com>"
    assert config.mailboxes[0].trusted_authserv_ids == ("mx.example.com", "literal")


def test_config_interpolation_uses_set_variables_before_validation(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        {
            "ROUTE_NAME": "relay",
            "SMTP_HOST": "relay.example.net",
            "SMTP_PORT": "465",
            "AUTHSERV": "mx.google.com",
        },
    )
    route = config.routes[0]
    assert (route.name, route.host, route.port) == ("relay", "relay.example.net", 465)
    assert route.tls is TlsMode.IMPLICIT  # derived from the interpolated port
    assert config.mailboxes[0].trusted_authserv_ids == ("mx.google.com", "literal")


def test_config_interpolation_default_applies_when_variable_is_empty(tmp_path: Path) -> None:
    assert _load(tmp_path, {"SMTP_HOST": ""}).routes[0].host == "127.0.0.1"


def test_config_interpolation_without_default_keeps_an_empty_value(tmp_path: Path) -> None:
    text = BASE.replace("${SMTP_HOST:-127.0.0.1}", "smtp${SUFFIX}.example.com")
    assert _load(tmp_path, {"SUFFIX": ""}, text).routes[0].host == "smtp.example.com"


def test_config_interpolation_expands_several_references_in_one_string(tmp_path: Path) -> None:
    text = BASE.replace("${PROBE_FROM:-Probe <probe@example.com>}", "${USER}@${DOMAIN:-x.test}")
    config = _load(tmp_path, {"USER": "probe", "DOMAIN": "example.org"}, text)
    assert config.routes[0].from_ == "probe@example.org"


def test_config_interpolation_double_dollar_escapes(tmp_path: Path) -> None:
    text = BASE.replace("- name: seed\n", "- name: seed\n    folders: {inbox: 'a$${B}c'}\n")
    assert _load(tmp_path, {"B": "not used"}, text).mailboxes[0].folders.inbox == "a${B}c"


def test_config_interpolation_leaves_non_strings_alone(tmp_path: Path) -> None:
    config = _load(tmp_path, {"SMTP_PORT": "2525"}, BASE.replace("${SMTP_PORT:-587}", "25"))
    assert config.routes[0].port == 25


def test_config_interpolation_does_not_apply_to_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, {"KEY": "log_level"}, BASE + "${KEY}: debug\n")
    assert str(caught.value) == f"{tmp_path / 'config.yaml'}: ${{KEY}}: unknown key"


def test_config_interpolation_error_names_key_and_variable_not_value(tmp_path: Path) -> None:
    text = BASE.replace("${SEED_PASSWORD:-seed-password}", "${SEED_PASSWORD}")
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, {"SEED_PASSWORD_OLD": "hunter2-leaked"}, text)
    assert caught.value.problems == (
        f"{tmp_path / 'config.yaml'}: mailboxes[0].auth.password: environment variable "
        "SEED_PASSWORD is not set (write ${SEED_PASSWORD:-default} to give a default)",
    )
    assert "hunter2" not in str(caught.value)


def test_config_interpolation_errors_are_reported_with_other_problems(tmp_path: Path) -> None:
    text = BASE.replace("${SMTP_HOST:-127.0.0.1}", "${SMTP_HOST}").replace(
        "${SMTP_PORT:-587}", "70000"
    )
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, {}, text)
    source = tmp_path / "config.yaml"
    # The unset variable's knock-on error (an empty host) is not reported a second time.
    assert caught.value.problems == (
        f"{source}: routes[0].host: environment variable SMTP_HOST is not set "
        "(write ${SMTP_HOST:-default} to give a default)",
        f"{source}: routes[0].port: expected a port number from 1 to 65535, got 70000",
    )


def test_config_interpolation_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(BASE, encoding="utf-8")
    monkeypatch.setenv("ROUTE_NAME", "from-os-environ")
    assert load_config(path).routes[0].name == "from-os-environ"
