"""OAuth 2.0 sign-in: access-token sources and their lifecycle.

`token_source` is the contract between the SMTP and IMAP edges (which sign in with a token) and
the token sources (which get, cache and refresh tokens); neither side imports the other.
"""

from agent.oauth.token_source import (
    AccessToken,
    OAuthSignIn,
    SaslMechanism,
    StaticTokenSource,
    TokenError,
    TokenErrorKind,
    TokenSource,
)

__all__ = [
    "AccessToken",
    "OAuthSignIn",
    "SaslMechanism",
    "StaticTokenSource",
    "TokenError",
    "TokenErrorKind",
    "TokenSource",
]
