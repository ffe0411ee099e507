"""Trust rules and provider profiles: which Authentication-Results fields a mailbox trusts."""

from __future__ import annotations

import pytest

from agent.providers import (
    PROVIDER_TRUST,
    TrustKind,
    TrustRule,
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
