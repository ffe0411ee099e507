"""Trust rules and provider profiles: which Authentication-Results fields a mailbox trusts."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.imap.folders import JUNK_FOLDER_NAMES
from agent.model import TlsMode
from agent.providers import (
    ALIASES,
    PROFILES,
    PROVIDER_TRUST,
    Endpoint,
    TrustKind,
    TrustRule,
    canonical_provider,
    parse_trust_rule,
    trust_rules_for,
)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("mx.google.com", TrustRule(TrustKind.EXACT, "mx.google.com")),
        (" MX.Google.COM ", TrustRule(TrustKind.EXACT, "mx.google.com")),
        ("*.yahoo.com", TrustRule(TrustKind.SUFFIX, ".yahoo.com")),
        ("topmost", TrustRule(TrustKind.TOPMOST)),
        ("TOPMOST", TrustRule(TrustKind.TOPMOST)),
    ],
)
def test_rules_parse_into_their_three_forms(text: str, rule: TrustRule) -> None:
    assert parse_trust_rule(text) == rule


@pytest.mark.parametrize("text", ["", "*", "*.", "*yahoo.com", "mx.*.test", "a b", "mx.test;"])
def test_malformed_rules_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_trust_rule(text)


def test_an_exact_rule_matches_only_its_id_at_any_position() -> None:
    rule = parse_trust_rule("mx.google.com")
    assert rule.matches("mx.google.com", index=3)
    assert not rule.matches("mx2.google.com", index=0)
    assert not rule.matches(None, index=0)


def test_a_suffix_rule_matches_hosts_under_the_suffix_but_not_the_suffix_itself() -> None:
    rule = parse_trust_rule("*.yahoo.com")
    assert rule.matches("mta4007.mail.ne1.yahoo.com", index=2)
    assert rule.matches("atlas-production.v2.mail-production.bf1.yahoo.com", index=0)
    assert not rule.matches("yahoo.com", index=0)
    assert not rule.matches("evilyahoo.com", index=0)
    assert not rule.matches(None, index=0)


def test_topmost_matches_the_first_field_whatever_its_id() -> None:
    rule = parse_trust_rule("topmost")
    assert rule.matches(None, index=0)
    assert rule.matches("anything.test", index=0)
    assert not rule.matches("anything.test", index=1)


def test_configured_rules_replace_the_provider_profile() -> None:
    assert trust_rules_for("gmail", ("mx.test",)) == (parse_trust_rule("mx.test"),)


def test_a_known_provider_gets_its_profile_and_an_unknown_one_topmost() -> None:
    assert trust_rules_for("Gmail") == (parse_trust_rule("mx.google.com"),)
    assert trust_rules_for("microsoft") == (parse_trust_rule("topmost"),)
    assert trust_rules_for("someprovider") == (parse_trust_rule("topmost"),)
    assert trust_rules_for("other") == (parse_trust_rule("topmost"),)


@pytest.mark.parametrize("provider", sorted(PROVIDER_TRUST))
def test_every_profile_is_made_of_valid_rules(provider: str) -> None:
    assert trust_rules_for(provider)
    assert [str(rule) for rule in trust_rules_for(provider)] == list(PROVIDER_TRUST[provider])


# --- profiles ------------------------------------------------------------------------------------


def test_each_profile_is_filed_under_its_own_name_and_every_alias_names_a_profile() -> None:
    assert all(name == profile.name for name, profile in PROFILES.items())
    assert set(ALIASES.values()) <= set(PROFILES)
    assert not set(ALIASES) & set(PROFILES)


def test_the_issue_s_providers_all_have_a_profile() -> None:
    wanted = {"gmail", "google-workspace", "microsoft365", "outlook", "yahoo", "aol", "icloud"}
    assert wanted | {"fastmail", "zoho", "other"} <= set(PROFILES)


@pytest.mark.parametrize(
    ("name", "profile"),
    [
        ("Gmail", "gmail"),
        (" microsoft ", "microsoft365"),
        ("google", "google-workspace"),
        ("Outlook", "outlook"),
    ],
)
def test_provider_names_resolve_case_insensitively_with_old_names_as_aliases(
    name: str, profile: str
) -> None:
    assert canonical_provider(name) == profile


def test_an_unknown_provider_is_refused_with_the_list_of_known_ones() -> None:
    with pytest.raises(ValueError) as caught:
        canonical_provider("mystery-mail")
    assert all(name in str(caught.value) for name in PROFILES)


def test_old_provider_names_keep_their_trust_rules() -> None:
    assert trust_rules_for("microsoft") == trust_rules_for("microsoft365")
    assert trust_rules_for("google") == trust_rules_for("gmail")


def test_only_google_and_microsoft_profiles_have_an_oauth_preset() -> None:
    presets = {name: profile.oauth for name, profile in PROFILES.items() if profile.oauth}
    assert presets == {
        "gmail": "google",
        "google-workspace": "google",
        "microsoft365": "microsoft",
        "outlook": "microsoft",
    }
    # Microsoft refuses passwords: OAuth is the only way in.
    assert not PROFILES["microsoft365"].app_passwords
    assert not PROFILES["outlook"].app_passwords


@pytest.mark.parametrize("name", [n for n, p in PROFILES.items() if p.imap is not None])
def test_a_profile_with_servers_has_both_and_its_junk_name_is_one_the_watcher_knows(
    name: str,
) -> None:
    profile = PROFILES[name]
    assert profile.imap is not None and profile.smtp is not None
    assert profile.imap.tls is TlsMode.IMPLICIT  # every one of them: IMAPS on 993
    assert (profile.smtp.port, profile.smtp.tls) in {
        (587, TlsMode.STARTTLS),
        (465, TlsMode.IMPLICIT),
    }
    assert profile.junk_folder in JUNK_FOLDER_NAMES


def _endpoint_cell(endpoint: Endpoint | None) -> str:
    if endpoint is None:
        return "set `host`"
    return f"`{endpoint.host}:{endpoint.port}` {endpoint.tls.value}"


def test_the_docs_table_shows_every_profile_as_the_code_has_it() -> None:
    text = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text("utf-8")
    table = text.split("<!-- provider-profiles -->\n", 1)[1].split("<!-- /provider-profiles -->")[0]
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in table.splitlines()[2:]
        if line.startswith("|")
    ]
    assert [row[0] for row in rows] == [f"`{name}`" for name in PROFILES]
    for row in rows:
        profile = PROFILES[row[0].strip("`")]
        assert row[1:6] == [
            _endpoint_cell(profile.imap),
            _endpoint_cell(profile.smtp),
            f"`{profile.junk_folder}`" if profile.junk_folder else "",
            f"`{profile.oauth}`" if profile.oauth else "none",
            "yes" if profile.app_passwords else "no",
        ], row[0]
        assert row[6], f"{row[0]}: no source"
