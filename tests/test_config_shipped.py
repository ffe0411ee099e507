"""The shipped config.yaml, its commented examples and docs/configuration.md stay correct."""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.config import Config, load_config
from agent.model import TlsMode

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config.yaml"
DOCS = ROOT / "docs" / "configuration.md"
EXAMPLE_RE = re.compile(r"^\s*# --- example: .* ---$")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def _uncomment_examples(
    text: str, select: Callable[[str], bool] = lambda title: True
) -> tuple[str, int]:
    """`text` with every "# --- example" block (whose title line `select` accepts) uncommented in
    place, as a user would do it."""
    lines = text.splitlines()
    out: list[str] = []
    blocks = 0
    in_block = False
    for line in lines:
        if EXAMPLE_RE.match(line) and select(line):
            in_block, blocks = True, blocks + 1
            out.append(line)
        elif in_block and re.match(r"^\s*# ", line):
            out.append(re.sub(r"^(\s*)# ", r"\1", line, count=1))
        else:
            in_block = False
            out.append(line)
    return "\n".join(out) + "\n", blocks


def test_config_shipped_loads_without_any_environment() -> None:
    config = load_config(SHIPPED, environ={})

    sandbox = config.sandbox
    assert sandbox is not None
    assert sandbox.host == "127.0.0.1"
    smtp_ports = {
        sandbox.submission_port: TlsMode.STARTTLS,
        sandbox.submissions_port: TlsMode.IMPLICIT,
    }
    for route in config.routes:
        assert (route.host, smtp_ports[route.port]) == ("127.0.0.1", route.tls)
    for mailbox in (*config.mailboxes, *config.bounce_mailboxes):
        assert (mailbox.host, mailbox.port, mailbox.tls) == (
            "127.0.0.1",
            sandbox.imaps_port,
            TlsMode.IMPLICIT,
        )
    # Every seed and bounce mailbox is one the sandbox hosts, with the same login.
    hosted = {m.address: m.auth for m in sandbox.mailboxes}
    for mailbox in (*config.mailboxes, *config.bounce_mailboxes):
        assert hosted[mailbox.address].username == mailbox.auth.username
        assert hosted[mailbox.address].password == mailbox.auth.password
    assert config.secret.get_secret_value().startswith("change-me")
    assert config.state_dir == ROOT / "state"
    assert len(config.pairs()) == 12
    assert config.probes.deadline <= 30  # missing probes show within the first minute


def test_config_shipped_takes_the_secret_from_the_environment() -> None:
    config = load_config(SHIPPED, environ={"DELIVERABILITY_SECRET": "s" * 32})
    assert config.secret.get_secret_value() == "s" * 32


_EXAMPLE_ENVIRON = {
    "SUBMISSION_PASSWORD": "submission-password",
    "RELAY_PASSWORD": "relay-password",
    "GOOGLE_CLIENT_ID": "google-client-id",
    "GOOGLE_CLIENT_SECRET": "google-client-secret",
    "M365_CLIENT_ID": "m365-client-id",
}


def test_config_shipped_password_examples_validate_once_uncommented(tmp_path: Path) -> None:
    # The routes' examples alone (the seeds sign in with OAuth; the pairs name the seeds).
    text, blocks = _uncomment_examples(
        SHIPPED.read_text(encoding="utf-8"),
        select=lambda title: "OAuth" not in title and "combinations" not in title,
    )
    assert blocks == 2
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")

    config = load_config(path, environ=_EXAMPLE_ENVIRON)

    submission, relay = config.route("provider-submission"), config.route("relay-465")
    assert (submission.port, submission.tls, submission.tls_verify) == (587, TlsMode.STARTTLS, True)
    assert submission.auth is not None
    assert submission.auth.password is not None
    assert submission.auth.password.get_secret_value() == "submission-password"
    assert (relay.port, relay.tls) == (465, TlsMode.IMPLICIT)


def test_config_shipped_examples_validate_once_uncommented(tmp_path: Path) -> None:
    text, blocks = _uncomment_examples(SHIPPED.read_text(encoding="utf-8"))
    assert blocks == 5
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")

    config = load_config(path, environ=_EXAMPLE_ENVIRON)

    gmail, m365 = config.mailbox("gmail-seed"), config.mailbox("m365-seed")
    # Everything else comes from the provider profiles.
    assert (gmail.host, gmail.port, gmail.tls) == ("imap.gmail.com", 993, TlsMode.IMPLICIT)
    assert gmail.trust_rules == ("mx.google.com",)
    assert gmail.folders.junk is None  # found by SPECIAL-USE \Junk, in any language
    assert (m365.host, m365.port, m365.provider) == ("outlook.office365.com", 993, "microsoft365")
    oauth = {name: config.mailbox(name).auth.oauth2 for name in ("gmail-seed", "m365-seed")}
    assert all(o is not None for o in oauth.values())
    assert {name: str(o.provider) for name, o in oauth.items() if o is not None} == {
        "gmail-seed": "google",
        "m365-seed": "microsoft",
    }
    assert oauth["m365-seed"] is not None
    assert oauth["m365-seed"].refresh_token_file == tmp_path / "secrets" / "m365-seed.refresh-token"
    pairs = [(route.name, mailbox.name) for route, mailbox in config.pairs()]
    assert pairs == [("provider-submission", "gmail-seed"), ("relay-465", "m365-seed")]


def test_config_docs_complete_example_validates(tmp_path: Path) -> None:
    docs = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- example: complete -->\n```yaml\n(.*?)```", docs, re.DOTALL)
    assert match is not None
    path = tmp_path / "config.yaml"
    path.write_text(match.group(1), encoding="utf-8")
    environ = {
        name: f"{name.lower()}-value-long-enough"
        for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", match.group(1))
    }
    config = load_config(path, environ=environ)
    assert len(config.pairs()) == 3


def _keys(model: type[BaseModel]) -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys.add(field.alias or name)
        for inner in _models_in(field.annotation):
            keys |= _keys(inner)
    return keys


def test_config_docs_describe_every_key() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    keys = _keys(Config)
    assert {"listen", "password_file", "trusted_authserv_ids", "pairs", "extra"} <= keys
    undocumented = sorted(key for key in keys if f"| `{key}`" not in docs)
    assert not undocumented, f"keys missing from docs/configuration.md: {undocumented}"
