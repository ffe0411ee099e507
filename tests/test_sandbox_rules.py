"""Sandbox scenario rules: which rule applies at which stage, and how the config is validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError, Sandbox, validate_config
from agent.model import Stage
from agent.sandbox.rules import Reply, reply_at, rule_for, unknown_recipient

SECRET = "rules-test-secret-0123456789"


def _sandbox(rules: list[dict[str, Any]], **extra: Any) -> Sandbox:
    return Sandbox.model_validate(
        {
            "users": [
                {"username": "good", "password": "good-password"},
                {"username": "slow", "password": "slow-password"},
            ],
            "mailboxes": [
                {"address": "seed@sandbox.localhost", "auth": {"username": "s", "password": "p"}},
                {"address": "b@sandbox.localhost", "auth": {"username": "b", "password": "p"}},
            ],
            "rules": rules,
            **extra,
        }
    )


RULES = _sandbox(
    [
        {"match": {"login": "slow"}, "reply": {"stage": "mail", "code": 451, "text": "later"}},
        {
            "match": {"recipient": "Refuse@Sandbox.Localhost"},
            "reply": {"stage": "rcpt", "code": 550, "enhanced_code": "5.7.1", "text": "no"},
        },
        {
            "match": {"recipient": "late@sandbox.localhost"},
            "reply": {"stage": "end_of_data", "code": 554, "text": "spam"},
        },
        {"match": {"recipient": "data@sandbox.localhost"}, "reply": {"stage": "data", "code": 452}},
        {"match": {"recipient": "seed@sandbox.localhost"}, "deliver": {"folder": "Junk"}},
        {"match": {"login": "good", "recipient": "drop@sandbox.localhost"}, "discard": True},
    ]
).rules


def test_sandbox_rules_first_matching_rule_wins_and_login_rules_apply_to_every_recipient() -> None:
    slow = rule_for(RULES, login="slow", recipient="seed@sandbox.localhost")
    assert slow is RULES[0]
    good = rule_for(RULES, login="good", recipient="SEED@sandbox.localhost")
    assert good is RULES[4] and good.action == "deliver"
    assert rule_for(RULES, login="good", recipient="drop@sandbox.localhost") is RULES[5]
    assert rule_for(RULES, login="slow", recipient="drop@sandbox.localhost") is RULES[0]
    assert rule_for(RULES, login="good", recipient="other@sandbox.localhost") is None


def test_sandbox_rules_before_rcpt_only_rules_without_a_recipient_take_part() -> None:
    assert reply_at(RULES, Stage.MAIL, login="slow", recipients=[]) == Reply(451, None, "later")
    assert reply_at(RULES, Stage.MAIL, login="good", recipients=[]) is None
    assert reply_at(RULES, Stage.AUTH, login="slow", recipients=[]) is None  # replies at mail


def test_sandbox_rules_reply_at_rcpt_data_and_end_of_data_per_recipient() -> None:
    refused = reply_at(RULES, Stage.RCPT, login="good", recipients=["refuse@sandbox.localhost"])
    assert refused is not None and refused.line() == "550 5.7.1 no"
    assert reply_at(RULES, Stage.RCPT, login="good", recipients=["late@sandbox.localhost"]) is None
    late = reply_at(
        RULES,
        Stage.END_OF_DATA,
        login="good",
        recipients=["seed@sandbox.localhost", "late@sandbox.localhost"],
    )
    assert late == Reply(554, None, "spam")
    data = reply_at(RULES, Stage.DATA, login="good", recipients=["data@sandbox.localhost"])
    assert data is not None and data.line() == "452 refused by a sandbox rule"


def test_sandbox_reply_lines_never_carry_a_line_break() -> None:
    assert Reply(451, "4.7.1", "two\r\nlines\there").line() == "451 4.7.1 two lines here"
    assert unknown_recipient("x@y").line() == "550 5.1.1 <x@y>: no such mailbox in the sandbox"


def test_sandbox_section_defaults() -> None:
    sandbox = Sandbox.model_validate({})
    assert (sandbox.host, sandbox.hostname, sandbox.authserv_id) == (
        "127.0.0.1",
        "sandbox.localhost",
        "sandbox.localhost",
    )
    assert (sandbox.submission_port, sandbox.submissions_port, sandbox.imaps_port) == (
        2587,
        2465,
        2993,
    )
    assert Sandbox.model_validate({"hostname": "mx.demo.test"}).authserv_id == "mx.demo.test"
    assert Sandbox.model_validate({"host": "::1"}).host == "::1"


def _problems(sandbox: dict[str, Any]) -> list[str]:
    data = {
        "secret": SECRET,
        "routes": [{"name": "r", "host": "127.0.0.1", "from": "p@x.test"}],
        "mailboxes": [
            {
                "name": "m",
                "host": "127.0.0.1",
                "auth": {"username": "u", "password": "sekret"},
                "address": "m@x.test",
            }
        ],
        "sandbox": sandbox,
    }
    with pytest.raises(ConfigError) as caught:
        validate_config(data, base_dir=Path("/"), environ={})
    return list(caught.value.problems)


@pytest.mark.parametrize(
    ("sandbox", "expected"),
    [
        (
            {"host": "0.0.0.0"},
            "<config>: sandbox.host: expected a loopback IP address such as 127.0.0.1 or ::1 "
            "(the sandbox serves this machine only), got '0.0.0.0'",
        ),
        (
            {"imaps_port": 2587},
            "<config>: sandbox.imaps_port: expected a port not already used by submission_port, "
            "got 2587",
        ),
        (
            {"rules": [{"match": {}, "discard": True}]},
            "<config>: sandbox.rules[0].match: expected login, recipient or both",
        ),
        (
            {"rules": [{"match": {"recipient": "a@b.test"}}]},
            "<config>: sandbox.rules[0]: expected exactly one of 'deliver', 'reply', 'discard' "
            "or 'bounce'",
        ),
        (
            {"rules": [{"match": {"recipient": "a@b.test"}, "discard": True, "deliver": {}}]},
            "<config>: sandbox.rules[0]: expected exactly one of 'deliver', 'reply', 'discard' "
            "or 'bounce', got deliver and discard",
        ),
        (
            {
                "rules": [
                    {"match": {"recipient": "a@b.test"}, "reply": {"stage": "mail", "code": 451}}
                ]
            },
            "<config>: sandbox.rules[0].reply.stage: expected 'rcpt', 'data' or 'end_of_data' in a "
            "rule that matches a recipient (the recipient is not known before RCPT), got 'mail'",
        ),
        (
            {
                "rules": [
                    {"match": {"recipient": "a@b.test"}, "reply": {"stage": "ehlo", "code": 421}}
                ]
            },
            "<config>: sandbox.rules[0].reply.stage: expected 'auth', 'mail', 'rcpt', 'data' or "
            "'end_of_data' (before AUTH the sandbox cannot tell routes apart), got 'ehlo'",
        ),
        (
            {
                "rules": [
                    {
                        "match": {"recipient": "a@b.test"},
                        "reply": {"stage": "rcpt", "code": 550, "enhanced_code": "4.1.1"},
                    }
                ]
            },
            "<config>: sandbox.rules[0].reply.enhanced_code: expected an enhanced status code of "
            "the class of 550, such as 5.7.1, got '4.1.1'",
        ),
        (
            {"rules": [{"match": {"login": "nobody"}, "discard": True}]},
            "<config>: sandbox.rules[0].match.login: expected the username of a sandbox user "
            "(none), got 'nobody'",
        ),
        (
            {"rules": [{"match": {"recipient": "a@b.test"}, "bounce": {"mailbox": "c@d.test"}}]},
            "<config>: sandbox.rules[0].bounce.mailbox: expected the address of a sandbox mailbox, "
            "got 'c@d.test'",
        ),
    ],
)
def test_sandbox_section_problems_name_the_key(sandbox: dict[str, Any], expected: str) -> None:
    assert _problems(sandbox) == [expected]


def test_sandbox_section_never_echoes_a_password() -> None:
    problems = _problems(
        {
            "users": [
                {"username": "u", "password": "sekret-one"},
                {"username": "u", "password": "sekret-two"},
            ]
        }
    )
    assert problems == [
        "<config>: sandbox.users[1].username: expected a unique username (also used by "
        "users[0]), got 'u'"
    ]
    assert "sekret" not in "".join(problems)
