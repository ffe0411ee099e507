"""What `oauth2.provider` fills in: each provider's token endpoint and default scopes per grant.

Sources:
- Microsoft: "Authenticate an IMAP, POP or SMTP connection using OAuth" (learn.microsoft.com,
  exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-
  by-using-oauth): delegated scopes `https://outlook.office.com/IMAP.AccessAsUser.All` and
  `https://outlook.office.com/SMTP.Send` (plus `offline_access` for a refresh token); app-only
  (client credentials) scope `https://outlook.office365.com/.default`; token endpoint
  `https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token`.
- Google: "OAuth 2.0 Mechanism" for IMAP and SMTP (developers.google.com/gmail/imap/xoauth2-
  protocol): scope `https://mail.google.com/`; "Using OAuth 2.0 for Server to Server
  Applications" (developers.google.com/identity/protocols/oauth2/service-account): token
  endpoint `https://oauth2.googleapis.com/token`, the JWT bearer grant with `sub` for domain-wide
  delegation; "OAuth 2.0 for Mobile & Desktop Apps" (developers.google.com/identity/protocols/
  oauth2/native-app): authorization endpoint `https://accounts.google.com/o/oauth2/v2/auth`,
  loopback redirect with PKCE; "OAuth 2.0 for TV and Limited-Input Device Applications" lists
  the scopes its device flow allows, and `https://mail.google.com/` is not one of them.
- Microsoft's device authorization endpoint: "OAuth 2.0 device authorization grant"
  (learn.microsoft.com/entra/identity-platform/v2-oauth2-device-code):
  `https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_MICROSOFT_TENANT",
    "Grant",
    "OAuthPreset",
    "Provider",
    "preset",
]


class Provider(enum.StrEnum):
    """`oauth2.provider`: whose token endpoint and scopes to use."""

    GOOGLE = "google"
    MICROSOFT = "microsoft"


class Grant(enum.StrEnum):
    """`oauth2.grant`: how the agent obtains access tokens."""

    REFRESH_TOKEN = "refresh_token"  # delegated: a user's refresh token (RFC 6749 section 6)
    CLIENT_CREDENTIALS = "client_credentials"  # app-only (RFC 6749 section 4.4)
    SERVICE_ACCOUNT = "service_account"  # Google JWT bearer grant (RFC 7523), sub = the user


# Delegated sign-in without a tenant: any work, school or personal Microsoft account.
DEFAULT_MICROSOFT_TENANT: Final = "common"

_MICROSOFT_TOKEN_URL: Final = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
_GOOGLE_TOKEN_URL: Final = "https://oauth2.googleapis.com/token"
_GOOGLE_MAIL_SCOPE: Final = "https://mail.google.com/"
_MICROSOFT_DELEGATED_SCOPE: Final = (
    "https://outlook.office.com/IMAP.AccessAsUser.All "
    "https://outlook.office.com/SMTP.Send offline_access"
)
_MICROSOFT_APP_SCOPE: Final = "https://outlook.office365.com/.default"


_MICROSOFT_DEVICE_URL: Final = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode"
_GOOGLE_AUTHORIZATION_URL: Final = "https://accounts.google.com/o/oauth2/v2/auth"


@dataclass(frozen=True, slots=True)
class OAuthPreset:
    """A provider's token endpoint and default scope for one grant, and for the refresh-token
    grant where `oauth login` gets the first refresh token: Microsoft's device authorization
    endpoint (RFC 8628), Google's authorization endpoint (its device flow does not allow the
    mail scope, so a loopback redirect, RFC 8252)."""

    token_url: str
    scope: str
    device_authorization_url: str | None = None
    authorization_url: str | None = None


def preset(provider: Provider, grant: Grant, *, tenant: str | None = None) -> OAuthPreset | None:
    """The preset for `provider` and `grant`; None where the provider has no such grant
    (a Google service account is Google's only; Microsoft has no service-account grant)."""
    if provider is Provider.GOOGLE:
        # Client credentials without a user cannot reach Gmail: Google has no app-only mail scope.
        if grant is Grant.CLIENT_CREDENTIALS:
            return None
        if grant is Grant.SERVICE_ACCOUNT:
            return OAuthPreset(_GOOGLE_TOKEN_URL, _GOOGLE_MAIL_SCOPE)
        return OAuthPreset(
            _GOOGLE_TOKEN_URL, _GOOGLE_MAIL_SCOPE, authorization_url=_GOOGLE_AUTHORIZATION_URL
        )
    if grant is Grant.SERVICE_ACCOUNT:
        return None
    tenant = tenant or DEFAULT_MICROSOFT_TENANT
    url = _MICROSOFT_TOKEN_URL.format(tenant=tenant)
    if grant is Grant.CLIENT_CREDENTIALS:
        return OAuthPreset(url, _MICROSOFT_APP_SCOPE)
    return OAuthPreset(
        url,
        _MICROSOFT_DELEGATED_SCOPE,
        device_authorization_url=_MICROSOFT_DEVICE_URL.format(tenant=tenant),
    )
