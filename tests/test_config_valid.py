"""Valid configurations: defaults, TLS per port, durations, paths and probe pairs."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import (
    Cleanup,
    Config,
    ConfigError,
    ListenAddress,
    LogLevel,
    Mailbox,
    Route,
    format_duration,
    parse_duration,
    validate_config,
)
from agent.config.errors import _Problems
from agent.model import TlsMode
from agent.probing.targets import imap_target


def _route(name: str = "submission", **extra: Any) -> dict[str, Any]:
    return {"name": name, "host": "127.0.0.1", "from": "Probe <probe@example.com>", **extra}


def _mailbox(name: str = "seed", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "host": "127.0.0.1",
        "auth": {"username": "seed", "password": "seed-password"},
        "address": f"{name}@example.com",
        **extra,
    }


def _load(
    base_dir: Path = Path("/etc/agent"),
    *,
    routes: list[dict[str, Any]] | None = None,
    mailboxes: list[dict[str, Any]] | None = None,
    **top: Any,
) -> Config:
    data = {
        "secret": "0123456789abcdef",
        "routes": routes or [_route()],
        "mailboxes": mailboxes or [_mailbox()],
        **top,
    }
    return validate_config(data, base_dir=base_dir, environ={})


@pytest.fixture(autouse=True)
def _fixed_fqdn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "agent.example.net")


def test_config_minimal_has_documented_defaults() -> None:
    config = _load(Path("/etc/agent"))

    assert config.listen == ListenAddress("127.0.0.1", 9465)
    assert str(config.listen) == "127.0.0.1:9465"
    assert config.state_dir == Path("/etc/agent/state")
    assert config.secret_file is None
    assert config.log_level is LogLevel.INFO
    assert config.log_level.level == 20
    probes = config.probes
    assert (probes.interval, probes.jitter, probes.deadline) == (300.0, 30.0, 600.0)
    assert probes.cleanup is Cleanup.DELETE
    assert probes.pairs is None


def test_config_route_defaults() -> None:
    route = _load().routes[0]

    assert (route.port, route.tls, route.tls_verify) == (587, TlsMode.STARTTLS, True)
    assert route.ca_file is None and route.auth is None and not route.allow_plaintext_auth
    assert route.from_ == "Probe <probe@example.com>"
    assert route.from_address == "probe@example.com"
    assert route.envelope_from == "probe@example.com"
    assert route.ehlo_name == "agent.example.net"
    timeouts = route.timeouts
    assert (timeouts.connect, timeouts.stage, timeouts.total) == (10.0, 30.0, 120.0)


def test_config_mailbox_defaults() -> None:
    mailbox = _load().mailboxes[0]

    assert (mailbox.port, mailbox.tls, mailbox.tls_verify) == (993, TlsMode.IMPLICIT, True)
    assert mailbox.provider == "other"
    assert mailbox.address == "seed@example.com"
    assert mailbox.auth.username == "seed"
    assert (mailbox.folders.inbox, mailbox.folders.junk, mailbox.folders.extra) == (
        "INBOX",
        None,
        (),
    )
    assert mailbox.trusted_authserv_ids == ()
    assert mailbox.trust_rules == ("topmost",)
    assert mailbox.idle_check_interval == 60.0
    assert (mailbox.timeouts.connect, mailbox.timeouts.command) == (15.0, 30.0)


def test_config_mailbox_watching_reaches_the_imap_target() -> None:
    mailbox = _load(
        mailboxes=[_mailbox(idle_check_interval="2m", timeouts={"connect": "5s", "command": "10s"})]
    ).mailboxes[0]

    assert mailbox.idle_check_interval == 120.0
    target = imap_target(mailbox)
    assert (target.connect_timeout, target.command_timeout) == (5.0, 10.0)


@pytest.mark.parametrize(
    ("port", "tls"),
    [
        (465, TlsMode.IMPLICIT),
        (587, TlsMode.STARTTLS),
        (2525, TlsMode.STARTTLS),
        (25, TlsMode.OPPORTUNISTIC),
        (10025, TlsMode.STARTTLS),
        ("465", TlsMode.IMPLICIT),
    ],
)
def test_config_route_tls_defaults_from_port(port: int | str, tls: TlsMode) -> None:
    route = _load(routes=[_route(port=port)]).routes[0]
    assert route.port == int(port)
    assert route.tls is tls


@pytest.mark.parametrize(
    ("port", "tls"), [(993, TlsMode.IMPLICIT), (143, TlsMode.STARTTLS), (10993, TlsMode.IMPLICIT)]
)
def test_config_mailbox_tls_defaults_from_port(port: int, tls: TlsMode) -> None:
    mailbox = _load(mailboxes=[_mailbox(port=port)]).mailboxes[0]
    assert mailbox.tls is tls


def test_config_mailbox_starttls_reaches_the_imap_target() -> None:
    mailbox = _load(mailboxes=[_mailbox(port=143, tls="starttls")]).mailboxes[0]
    target = imap_target(mailbox)
    assert (target.port, target.tls, target.tls_verify) == (143, TlsMode.STARTTLS, True)


def test_config_explicit_tls_overrides_the_port_default() -> None:
    config = _load(
        routes=[_route(port=465, tls="starttls")],
        mailboxes=[_mailbox(port=993, tls="none", allow_plaintext_auth=True)],
    )
    assert config.routes[0].tls is TlsMode.STARTTLS
    assert config.mailboxes[0].tls is TlsMode.NONE


def test_config_auth_over_plaintext_is_allowed_only_when_asked() -> None:
    auth = {"username": "probe", "password": "probe-password"}
    with pytest.raises(ConfigError, match=r"routes\[0\]\.auth: refusing"):
        _load(routes=[_route(tls="none", auth=auth)])
    route = _load(routes=[_route(tls="none", auth=auth, allow_plaintext_auth=True)]).routes[0]
    assert route.auth is not None and route.auth.username == "probe"


def test_config_explicit_route_identity_wins_over_defaults() -> None:
    route = _load(
        routes=[_route(envelope_from="bounces@example.com", ehlo_name="probe.example.com")]
    ).routes[0]
    assert (route.envelope_from, route.ehlo_name) == ("bounces@example.com", "probe.example.com")


def test_config_jitter_defaults_to_a_tenth_of_the_interval() -> None:
    assert _load(probes={"interval": "1m"}).probes.jitter == 6.0
    assert _load(probes={"interval": "1m", "jitter": 0}).probes.jitter == 0.0


def test_config_durations_are_float_seconds() -> None:
    config = _load(
        routes=[_route(timeouts={"connect": "250ms", "stage": 45, "total": "1h30m"})],
        probes={"interval": "10s", "jitter": "1.5s", "deadline": "2h"},
    )
    timeouts = config.routes[0].timeouts
    assert (timeouts.connect, timeouts.stage, timeouts.total) == (0.25, 45.0, 5400.0)
    probes = config.probes
    assert (probes.interval, probes.jitter, probes.deadline) == (10.0, 1.5, 7200.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1h0m5s", 3605.0),
        ("250ms", 0.25),
        ("1s500ms", 1.5),
        ("1.5s", 1.5),
        ("90", 90.0),
        (" 2m ", 120.0),
        (12, 12.0),
        (0.5, 0.5),
    ],
)
def test_config_parse_duration_accepts(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "5 m", "5min", "m", "30m1h", "5m5m", "-5s", -1, True, None, "1e3", "inf"]
)
def test_config_parse_duration_refuses(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.25, "250ms"), (10, "10s"), (90, "1m30s"), (5400, "1h30m"), (3600, "1h")],
)
def test_config_format_duration_is_the_short_spelling(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("0.0.0.0:9465", "0.0.0.0", 9465),
        (":9465", "", 9465),
        ("[::1]:0", "::1", 0),
        ("metrics.internal:80", "metrics.internal", 80),
    ],
)
def test_config_listen_parses_host_and_port(listen: str, host: str, port: int) -> None:
    assert _load(listen=listen).listen == ListenAddress(host, port)


def test_config_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "ca.pem").write_text("not parsed here\n", encoding="utf-8")
    config = _load(
        tmp_path,
        state_dir="data/ledger",
        routes=[_route(ca_file="tls/ca.pem")],
        mailboxes=[_mailbox(ca_file=str(tmp_path / "tls" / "ca.pem"))],
    )
    assert config.state_dir == tmp_path / "data" / "ledger"
    assert config.routes[0].ca_file == tmp_path / "tls" / "ca.pem"
    assert config.mailboxes[0].ca_file == tmp_path / "tls" / "ca.pem"


def test_config_home_relative_paths_expand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _load(state_dir="~/agent-state").state_dir == tmp_path / "agent-state"


def test_config_pairs_default_to_every_route_to_every_mailbox() -> None:
    config = _load(routes=[_route("a"), _route("b")], mailboxes=[_mailbox("x"), _mailbox("y")])
    names = [(route.name, mailbox.name) for route, mailbox in config.pairs()]
    assert names == [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")]


def test_config_explicit_pairs_are_kept_in_order() -> None:
    config = _load(
        routes=[_route("a"), _route("b")],
        mailboxes=[_mailbox("x"), _mailbox("y")],
        probes={"pairs": [{"route": "b", "mailbox": "y"}, {"route": "a", "mailbox": "y"}]},
    )
    pairs = config.pairs()
    assert [(route.name, mailbox.name) for route, mailbox in pairs] == [("b", "y"), ("a", "y")]
    assert pairs[0][0] is config.route("b")
    assert pairs[0][1] is config.mailbox("y")


def test_config_lookup_of_an_unknown_name_is_a_key_error() -> None:
    config = _load()
    with pytest.raises(KeyError):
        config.route("nope")
    with pytest.raises(KeyError):
        config.mailbox("nope")


def test_config_is_immutable_and_hashable() -> None:
    config = _load()
    with pytest.raises(ValidationError):
        config.routes[0].port = 25  # type: ignore[misc]
    assert hash(config.routes[0]) == hash(_load().routes[0])


def test_config_folders_and_trusted_ids_are_kept() -> None:
    mailbox = _load(
        mailboxes=[
            _mailbox(
                provider="gmail",
                folders={"junk": "[Gmail]/Spam", "extra": ["[Gmail]/All Mail"]},
                trusted_authserv_ids=["mx.google.com"],
            )
        ]
    ).mailboxes[0]
    assert mailbox.provider == "gmail"
    assert mailbox.folders.junk == "[Gmail]/Spam"
    assert mailbox.folders.extra == ("[Gmail]/All Mail",)
    assert mailbox.trusted_authserv_ids == ("mx.google.com",)


def test_config_trust_rules_come_from_the_provider_unless_listed() -> None:
    def rules(**fields: Any) -> tuple[str, ...]:
        return _load(mailboxes=[_mailbox(**fields)]).mailboxes[0].trust_rules

    assert rules(provider="yahoo") == ("*.yahoo.com", "*.aol.com")
    assert rules(provider="microsoft") == ("topmost",)
    assert rules(provider="other") == ("topmost",)
    assert rules(provider="yahoo", trusted_authserv_ids=["topmost", "*.Example.COM"]) == (
        "topmost",
        "*.example.com",
    )


def test_config_ipv6_hosts_are_accepted_without_brackets() -> None:
    assert _load(routes=[_route(host="[::1]")]).routes[0].host == "::1"


# --- provider profiles ---------------------------------------------------------------------------


def _bare_mailbox(provider: str, **extra: Any) -> dict[str, Any]:
    mailbox = _mailbox(provider=provider, **extra)
    del mailbox["host"]
    return mailbox


def _bare_route(provider: str, **extra: Any) -> dict[str, Any]:
    route = _route(provider=provider, **extra)
    del route["host"]
    return route


def test_config_provider_fills_the_imap_server_of_a_mailbox() -> None:
    mailbox = _load(mailboxes=[_bare_mailbox("gmail")]).mailboxes[0]
    assert (mailbox.host, mailbox.port, mailbox.tls) == ("imap.gmail.com", 993, TlsMode.IMPLICIT)


@pytest.mark.parametrize(
    ("provider", "server"),
    [
        ("microsoft365", ("smtp.office365.com", 587, TlsMode.STARTTLS)),
        ("yahoo", ("smtp.mail.yahoo.com", 465, TlsMode.IMPLICIT)),
        ("icloud", ("smtp.mail.me.com", 587, TlsMode.STARTTLS)),
    ],
)
def test_config_provider_fills_the_submission_server_of_a_route(
    provider: str, server: tuple[str, int, TlsMode]
) -> None:
    route = _load(routes=[_bare_route(provider)]).routes[0]
    assert route.provider == provider
    assert (route.host, route.port, route.tls) == server


def test_config_explicit_keys_override_the_profile() -> None:
    # Zoho's EU data centre, over IMAP STARTTLS: tls follows the given port, not the profile.
    mailbox = _load(mailboxes=[_mailbox(provider="zoho", host="imap.zoho.eu", port=143)])
    assert (mailbox.mailboxes[0].host, mailbox.mailboxes[0].port) == ("imap.zoho.eu", 143)
    assert mailbox.mailboxes[0].tls is TlsMode.STARTTLS
    route = _load(routes=[_bare_route("gmail", port=465)]).routes[0]
    assert (route.host, route.port, route.tls) == ("smtp.gmail.com", 465, TlsMode.IMPLICIT)


def test_config_provider_aliases_and_case_resolve_to_the_profile_name() -> None:
    config = _load(
        mailboxes=[_bare_mailbox("microsoft", name="a"), _bare_mailbox("Google", name="b")]
    )
    assert [m.provider for m in config.mailboxes] == ["microsoft365", "google-workspace"]
    assert config.mailboxes[0].host == "outlook.office365.com"


def test_config_without_provider_is_other_and_needs_its_host() -> None:
    config = _load()
    assert (config.routes[0].provider, config.mailboxes[0].provider) == ("other", "other")


def test_config_provider_leaves_the_junk_folder_to_discovery() -> None:
    # Junk folder names are translated per account language; SPECIAL-USE \Junk is not.
    assert _load(mailboxes=[_bare_mailbox("gmail")]).mailboxes[0].folders.junk is None


def _prepared(model: type[Mailbox | Route], data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    model._prepare(data, _Problems(), Path("/etc/agent"))
    return data


@pytest.mark.parametrize(
    ("provider", "preset"),
    [("gmail", "google"), ("google-workspace", "google"), ("outlook", "microsoft")],
)
def test_config_provider_names_the_oauth_preset_of_an_oauth2_section(
    provider: str, preset: str
) -> None:
    auth = {"username": "seed@example.com", "oauth2": {"client_id": "app"}}
    for model in (Mailbox, Route):
        data = _prepared(model, {"provider": provider, "auth": auth})
        assert data["auth"] == {
            "username": "seed@example.com",
            "oauth2": {"client_id": "app", "provider": preset},
        }
    assert auth == {"username": "seed@example.com", "oauth2": {"client_id": "app"}}  # not changed


@pytest.mark.parametrize(
    ("provider", "oauth2"),
    [
        ("microsoft365", {"provider": "google"}),  # an explicit preset stays
        ("microsoft365", {"token_url": "https://login.example.com/token"}),  # its own endpoint
        ("yahoo", {"client_id": "app"}),  # no preset for this provider
        ("other", {"client_id": "app"}),
    ],
)
def test_config_provider_leaves_an_oauth2_section_alone_when_it_has_no_preset_to_add(
    provider: str, oauth2: dict[str, str]
) -> None:
    auth = {"username": "seed@example.com", "oauth2": oauth2}
    assert _prepared(Mailbox, {"provider": provider, "auth": auth})["auth"] == auth


def test_config_provider_does_not_add_oauth2_to_a_password_login() -> None:
    auth = {"username": "seed@example.com", "password": "app-password"}
    assert _prepared(Mailbox, {"provider": "gmail", "auth": auth})["auth"] == auth
