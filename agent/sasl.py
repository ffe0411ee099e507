"""SASL with an OAuth 2.0 bearer token, shared by the SMTP and IMAP edges (pure: no I/O).

XOAUTH2 is Google's and Microsoft's mechanism; OAUTHBEARER is RFC 7628's. Both send one initial
client response holding the token. A server that refuses the token answers with an error
challenge, a base64 JSON object (RFC 7628 3.2.2; Google and Microsoft do the same for XOAUTH2),
which the client must answer (`abort_response`) before the server sends its final failure.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Final

from agent.oauth import SaslMechanism

__all__ = [
    "OAUTH_PREFERENCE",
    "abort_response",
    "bearer_forms",
    "choose_mechanism",
    "decode_error_challenge",
    "initial_response",
]

# Picked from what the server offers when none is configured: the standard first.
OAUTH_PREFERENCE: Final = (SaslMechanism.OAUTHBEARER, SaslMechanism.XOAUTH2)
_CHALLENGE_MAX: Final = 500  # characters of a decoded error challenge kept for a message


def initial_response(mechanism: SaslMechanism, username: str, token: str) -> bytes:
    """The base64 initial client response: XOAUTH2's `user=..^Aauth=Bearer ..^A^A`, or
    OAUTHBEARER's gs2 header `n,a=<user>,` then `^Aauth=Bearer ..^A^A` (RFC 7628 3.1; the
    optional host and port fields are left out)."""
    if mechanism is SaslMechanism.XOAUTH2:
        text = f"user={username}\x01auth=Bearer {token}\x01\x01"
    else:
        # RFC 5801 saslname: "=" and "," are escaped in the authzid.
        authzid = username.replace("=", "=3D").replace(",", "=2C")
        text = f"n,a={authzid},\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(text.encode("utf-8"))


def abort_response(mechanism: SaslMechanism) -> bytes:
    """The answer to an error challenge that makes the server send its final failure: an empty
    response for XOAUTH2, ^A for OAUTHBEARER (RFC 7628 3.2.3), base64 as sent."""
    return b"" if mechanism is SaslMechanism.XOAUTH2 else base64.b64encode(b"\x01")


def choose_mechanism(
    configured: SaslMechanism | None, offered: Sequence[str]
) -> SaslMechanism | str:
    """The configured mechanism if `offered` (case-insensitive names) has it, else the first of
    `OAUTH_PREFERENCE` offered; a str saying what is missing when there is none."""
    names = {name.upper() for name in offered}
    if configured is not None:
        if configured.value.upper() in names:
            return configured
        return f"{configured.value.upper()} (configured) is not offered"
    for mechanism in OAUTH_PREFERENCE:
        if mechanism.value.upper() in names:
            return mechanism
    return "neither OAUTHBEARER nor XOAUTH2 is offered"


def decode_error_challenge(text: str | bytes) -> str:
    """The text of a base64 error challenge (a JSON object such as
    `{"status":"401","schemes":"bearer"}`); the raw text when it is not base64."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    try:
        decoded = base64.b64decode(raw.strip(), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        decoded = raw.decode("utf-8", "replace")
    return decoded.strip()[:_CHALLENGE_MAX] or "(empty)"


def bearer_forms(token: str) -> tuple[str, ...]:
    """A bearer token as a server or a log could show it, for a `Redactor`: plain and base64.

    The initial responses carry it base64-encoded at an offset, so they are masked whole by the
    edges that send them (`initial_response` values are added to their redactors too).
    """
    if not token:
        return ()
    return (token, base64.b64encode(token.encode("utf-8")).decode("ascii"))
