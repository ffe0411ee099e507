"""agent.secrets: secret values found by type, the one Redactor, credential forms."""

from __future__ import annotations

import base64
from typing import Any

from pydantic import BaseModel, SecretBytes

from agent.secrets import (
    MASK,
    Redactor,
    Secret,
    credential_forms,
    is_secret_type,
    secret_values,
)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


class Login(BaseModel):
    username: str
    password: Secret


class Server(BaseModel):
    host: str
    login: Login | None = None
    tokens: list[Secret] = []
    headers: dict[str, Secret] = {}
    key: SecretBytes | None = None


class Settings(BaseModel):
    name: str
    api_key: Secret
    servers: tuple[Server, ...] = ()


def test_the_mask_is_one_spelling() -> None:
    assert MASK == "[redacted]"


def test_secret_values_walks_nested_models_lists_and_mappings_in_order() -> None:
    settings = Settings(
        name="not-a-secret",
        api_key=Secret("api-key"),
        servers=(
            Server(
                host="mx.example.com",
                login=Login(username="user", password=Secret("login-password")),
                tokens=[Secret("token-1"), Secret("token-2")],
                headers={"X-Auth": Secret("header-value")},
                key=SecretBytes(b"key-bytes"),
            ),
            Server(host="other.example.com"),
        ),
    )
    assert secret_values(settings) == [
        "api-key",
        "login-password",
        "token-1",
        "token-2",
        "header-value",
        "key-bytes",
    ]


def test_secret_values_of_a_subtree_and_of_plain_containers() -> None:
    login = Login(username="user", password=Secret("pw"))
    assert secret_values(login) == ["pw"]
    assert secret_values([login, {"a": Secret("x"), "b": (Secret("y"),)}]) == ["pw", "x", "y"]


def test_secret_values_leaves_out_plain_strings_empty_values_none_and_duplicates() -> None:
    settings = Settings(
        name="api-key-lookalike",
        api_key=Secret(""),
        servers=(
            Server(host="a", tokens=[Secret("same"), Secret(""), Secret("same")]),
            Server(host="b", login=None, tokens=[Secret("same")], key=SecretBytes(b"")),
        ),
    )
    assert secret_values(settings) == ["same"]
    assert secret_values(None) == []
    assert secret_values("a plain string is not a secret") == []
    assert secret_values([]) == []


def test_secret_values_stops_on_a_cycle() -> None:
    loop: dict[str, Any] = {"token": Secret("deep")}
    loop["self"] = loop
    assert secret_values(loop) == ["deep"]


def test_is_secret_type_by_annotation() -> None:
    assert is_secret_type(Secret)
    assert is_secret_type(SecretBytes)
    assert is_secret_type(Secret | None)
    assert is_secret_type(tuple[Secret, ...])
    assert is_secret_type(dict[str, Secret])
    assert not is_secret_type(str)
    assert not is_secret_type(tuple[str, ...])
    assert not is_secret_type(Login)  # a model is not: its own fields say
    assert not is_secret_type(Login | None)


def test_redactor_masks_every_occurrence_and_the_longest_secret_first() -> None:
    redact = Redactor(["abcd", "abcdefgh"])
    assert redact("abcdefgh abcd xabcdx") == f"{MASK} {MASK} x{MASK}x"
    assert redact.secrets == ("abcdefgh", "abcd")


def test_redactor_ignores_empty_and_too_short_secrets() -> None:
    assert Redactor(["", "a"])("a b c") == f"{MASK} b c"
    redact = Redactor(["", "a", "abc", "abcd"], min_length=4)
    assert redact.secrets == ("abcd",)
    assert redact("a abc abcd") == f"a abc {MASK}"
    assert Redactor()("nothing to hide") == "nothing to hide"


def test_redactor_update_replaces_the_secrets() -> None:
    redact = Redactor(["old-secret"])
    redact.update(["new-secret", "new-secret"])
    assert redact.secrets == ("new-secret",)
    assert redact("old-secret new-secret") == f"old-secret {MASK}"


def test_redactor_repr_does_not_show_the_secrets() -> None:
    redact = Redactor(["hunter2-password", "other"])
    assert repr(redact) == "Redactor(2 secret(s))"
    assert "hunter2" not in repr(redact)


def test_credential_forms_are_the_password_as_auth_sends_it() -> None:
    assert credential_forms("user", None) == ()
    assert credential_forms("user", "") == ()
    assert credential_forms(None, "pw-1") == ("pw-1", _b64("pw-1"))
    assert credential_forms("user", "pw-1") == ("pw-1", _b64("pw-1"), _b64("\0user\0pw-1"))


def test_a_redactor_of_the_credential_forms_masks_a_server_echo_of_auth() -> None:
    plain = _b64("\0probe@example.com\0s3cret")
    redact = Redactor(credential_forms("probe@example.com", "s3cret"))
    echoed = f"535 bad AUTH PLAIN {plain}; AUTH LOGIN {_b64('s3cret')}; password s3cret"
    masked = redact(echoed)
    assert masked == f"535 bad AUTH PLAIN {MASK}; AUTH LOGIN {MASK}; password {MASK}"
