"""The pure SASL part of OAuth sign-in: initial responses, mechanism choice, error challenges."""

from __future__ import annotations

import base64

import pytest

from agent.oauth import SaslMechanism
from agent.sasl import (
    abort_response,
    bearer_forms,
    choose_mechanism,
    decode_error_challenge,
    initial_response,
)

# Google's documented XOAUTH2 example (developers.google.com/workspace/gmail/imap/xoauth2-protocol,
# "Initial client response"; page content CC BY 4.0): the user, the token and the base64 the
# client sends.
GOOGLE_USER = "someuser@example.com"
GOOGLE_TOKEN = "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
GOOGLE_INITIAL = (
    "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJo"
    "ZG1semRHRXVZMjl0Q2cBAQ=="
)
# RFC 7628 section 4.3, the server's error challenge in the failed IMAP exchange (IETF Trust
# licence: code components BSD).
RFC7628_CHALLENGE = (
    "eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NvcGUiOiJleGFtcGxlX3Njb3BlIiwib3BlbmlkLWNvbmZpZ3VyYXRp"
    "b24iOiJodHRwczovL2V4YW1wbGUuY29tLy53ZWxsLWtub3duL29wZW5pZC1jb25maWd1cmF0aW9uIn0="
)


def test_the_xoauth2_initial_response_is_googles_documented_one() -> None:
    assert initial_response(SaslMechanism.XOAUTH2, GOOGLE_USER, GOOGLE_TOKEN).decode() == (
        GOOGLE_INITIAL
    )


def test_the_oauthbearer_initial_response_has_the_gs2_header_and_no_host_or_port() -> None:
    sent = base64.b64decode(initial_response(SaslMechanism.OAUTHBEARER, "user@example.com", "t0k"))
    assert sent == b"n,a=user@example.com,\x01auth=Bearer t0k\x01\x01"


def test_the_oauthbearer_authzid_escapes_comma_and_equals() -> None:
    sent = base64.b64decode(initial_response(SaslMechanism.OAUTHBEARER, "a,b=c", "t"))
    assert sent.startswith(b"n,a=a=2Cb=3Dc,\x01")


def test_the_error_challenge_is_answered_empty_for_xoauth2_and_with_ctrl_a_for_oauthbearer() -> (
    None
):
    assert abort_response(SaslMechanism.XOAUTH2) == b""
    assert base64.b64decode(abort_response(SaslMechanism.OAUTHBEARER)) == b"\x01"


def test_the_rfc_7628_error_challenge_decodes_to_its_json() -> None:
    assert decode_error_challenge(RFC7628_CHALLENGE) == (
        '{"status":"invalid_token","scope":"example_scope",'
        '"openid-configuration":"https://example.com/.well-known/openid-configuration"}'
    )


def test_a_challenge_that_is_not_base64_is_kept_as_text_and_cut() -> None:
    assert decode_error_challenge("not base64!") == "not base64!"
    assert decode_error_challenge("") == "(empty)"
    assert len(decode_error_challenge("x" * 5000)) == 500


@pytest.mark.parametrize(
    ("configured", "offered", "chosen"),
    [
        (None, ["PLAIN", "XOAUTH2", "OAUTHBEARER"], SaslMechanism.OAUTHBEARER),
        (None, ["plain", "xoauth2"], SaslMechanism.XOAUTH2),
        (SaslMechanism.XOAUTH2, ["OAUTHBEARER", "XOAUTH2"], SaslMechanism.XOAUTH2),
        (None, ["PLAIN", "LOGIN"], "neither OAUTHBEARER nor XOAUTH2 is offered"),
        (SaslMechanism.OAUTHBEARER, ["XOAUTH2"], "OAUTHBEARER (configured) is not offered"),
    ],
)
def test_the_mechanism_is_the_configured_one_or_the_first_offered_oauthbearer_first(
    configured: SaslMechanism | None, offered: list[str], chosen: SaslMechanism | str
) -> None:
    assert choose_mechanism(configured, offered) == chosen


def test_a_token_is_masked_plain_and_in_base64() -> None:
    assert bearer_forms("abc") == ("abc", "YWJj")
    assert bearer_forms("") == ()
