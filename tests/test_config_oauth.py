"""Valid OAuth sign-in configurations: what provider presets fill in, and the keys' defaults.
The invalid ones, each with its exact message, are tests/config_cases/oauth_*.yaml."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.config import Config, MailAuth, validate_config
from agent.oauth import SaslMechanism
from agent.oauth.presets import Grant, Provider


def _load(tmp_path: Path, auth: dict[str, Any]) -> MailAuth:
    config: Config = validate_config(
        {
            "secret": "hmac-secret-0123456789",
            "routes": [{"name": "r", "host": "h", "from": "p@example.com"}],
            "mailboxes": [{"name": "m", "host": "h", "address": "seed@example.com", "auth": auth}],
        },
        base_dir=tmp_path,
        environ={},
    )
    return config.mailbox("m").auth


def test_microsoft_delegated_preset_fills_the_common_endpoint_and_imap_smtp_scopes(
    tmp_path: Path,
) -> None:
    auth = _load(
        tmp_path,
        {"username": "seed@example.com", "oauth2": {"provider": "microsoft", "client_id": "a"}},
    )
    assert auth.uses_token and auth.password is None
    oauth2 = auth.oauth2
    assert oauth2 is not None
    assert (oauth2.provider, oauth2.grant) == (Provider.MICROSOFT, Grant.REFRESH_TOKEN)
    assert oauth2.token_url == "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    assert oauth2.scope == (
        "https://outlook.office.com/IMAP.AccessAsUser.All "
        "https://outlook.office.com/SMTP.Send offline_access"
    )
    assert oauth2.refresh_token is None and oauth2.refresh_token_file is None
    assert auth.token_timeout == 30.0 and auth.mechanism is None


def test_microsoft_app_only_preset_uses_the_tenant_and_the_default_scope(tmp_path: Path) -> None:
    oauth2 = _load(
        tmp_path,
        {
            "username": "seed@contoso.com",
            "mechanism": "xoauth2",
            "oauth2": {
                "provider": "microsoft",
                "tenant": "contoso.onmicrosoft.com",
                "grant": "client_credentials",
                "client_id": "a",
                "client_secret": "s",
            },
        },
    ).oauth2
    assert oauth2 is not None
    assert oauth2.token_url == (
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    )
    assert oauth2.scope == "https://outlook.office365.com/.default"


def test_explicit_token_url_and_scope_override_the_preset(tmp_path: Path) -> None:
    oauth2 = _load(
        tmp_path,
        {
            "username": "u",
            "oauth2": {
                "provider": "google",
                "client_id": "a",
                "token_url": "https://sso.example.com/token",
                "scope": "mail",
            },
        },
    ).oauth2
    assert oauth2 is not None
    assert (oauth2.token_url, oauth2.scope) == ("https://sso.example.com/token", "mail")


def test_service_account_takes_its_token_url_from_the_key_file(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    (tmp_path / "key.json").write_text(
        json.dumps(
            {
                "type": "service_account",
                "client_email": "prober@p.iam.gserviceaccount.com",
                "private_key": pem,
                "token_uri": "https://oauth2.example.com/token",
            }
        )
    )
    oauth2 = _load(
        tmp_path,
        {
            "username": "seed@example.com",
            "oauth2": {"grant": "service_account", "service_account_file": "key.json"},
        },
    ).oauth2
    assert oauth2 is not None
    assert oauth2.token_url == "https://oauth2.example.com/token"
    assert oauth2.service_account_file == tmp_path / "key.json"


def test_token_command_and_token_file_sign_ins(tmp_path: Path) -> None:
    command = _load(
        tmp_path,
        {
            "username": "u",
            "token_command": [sys.executable, "-c", "print('t')"],
            "token_timeout": "5s",
            "mechanism": "oauthbearer",
        },
    )
    assert command.token_command == (sys.executable, "-c", "print('t')")
    assert command.token_timeout == 5.0 and command.mechanism is SaslMechanism.OAUTHBEARER
    token_file = _load(tmp_path, {"username": "u", "token_file": "run/token"})
    assert token_file.token_file == tmp_path / "run" / "token"  # need not exist at load
    assert token_file.uses_token
