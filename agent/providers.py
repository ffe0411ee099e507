"""What the agent knows about the big mailbox providers: their IMAP and SMTP submission servers,
junk folder, OAuth preset, whether they still take app passwords, and whose
Authentication-Results fields to trust.

A `provider:` of a mailbox or route names a profile (`PROFILES`); the configuration fills the
servers from it (agent.config.models) and explicit keys override. Every value has its source, the
provider's own help page, beside it here and in docs/providers.md.

A trust rule names which fields at the top of a message the receiving side wrote (RFC 8601
section 7.1). Three forms:

- `mx.google.com`: a field whose authserv-id is exactly this (case-insensitive);
- `*.yahoo.com`: a field whose authserv-id is any host under this suffix (not the suffix itself),
  for receivers that write their own host name (`atlas-production….yahoo.com`);
- `topmost`: the topmost field, whatever its authserv-id or none: for receivers that write no id
  (Microsoft) or when nothing better is known.

The trust rules of the profiles below come from real headers (tests/corpus/authresults/); a
mailbox at `other` (or a provider name unknown to `trust_rules_for`, as `inspect --provider` may
pass) trusts the topmost field only.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.model import TlsMode

__all__ = [
    "ALIASES",
    "PROFILES",
    "PROVIDER_TRUST",
    "TOPMOST",
    "Endpoint",
    "Profile",
    "TrustKind",
    "TrustRule",
    "canonical_provider",
    "parse_trust_rule",
    "trust_rules_for",
]

TOPMOST = "topmost"

# A host name as an authserv-id is written: labels of letters, digits, "-" and "_" (seen in real
# ids), at least one label. Case is ignored.
_HOST = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*")


class TrustKind(enum.StrEnum):
    EXACT = "exact"
    SUFFIX = "suffix"
    TOPMOST = "topmost"


@dataclass(frozen=True, slots=True)
class TrustRule:
    """One parsed rule; `value` is the lowercase id (EXACT), ".suffix" (SUFFIX) or "" (TOPMOST)."""

    kind: TrustKind
    value: str = ""

    def matches(self, authserv_id: str | None, *, index: int) -> bool:
        """Whether the field at `index` (0 = topmost) with this authserv-id (None: it has none)
        was written by the receiver."""
        if self.kind is TrustKind.TOPMOST:
            return index == 0
        if authserv_id is None:
            return False
        if self.kind is TrustKind.EXACT:
            return authserv_id == self.value
        return authserv_id.endswith(self.value) and len(authserv_id) > len(self.value)

    def __str__(self) -> str:
        if self.kind is TrustKind.TOPMOST:
            return TOPMOST
        return f"*{self.value}" if self.kind is TrustKind.SUFFIX else self.value


def parse_trust_rule(text: str) -> TrustRule:
    """`text` as a rule; ValueError with the reason when it is none of the three forms."""
    value = text.strip().lower()
    if value == TOPMOST:
        return TrustRule(TrustKind.TOPMOST)
    if value.startswith("*."):
        if not _HOST.fullmatch(value[2:]):
            raise ValueError(
                f"{text!r}: expected '*.' followed by a host name, as in '*.yahoo.com'"
            )
        return TrustRule(TrustKind.SUFFIX, value[1:])
    if "*" in value:
        raise ValueError(f"{text!r}: '*' is only allowed as a leading '*.', as in '*.yahoo.com'")
    if not _HOST.fullmatch(value):
        raise ValueError(
            f"{text!r}: expected an authserv-id (a host name such as mx.google.com), "
            f"'*.suffix' or '{TOPMOST}'"
        )
    return TrustRule(TrustKind.EXACT, value)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A server of a provider: host, port and how the connection is protected."""

    host: str
    port: int
    tls: TlsMode


@dataclass(frozen=True, slots=True)
class Profile:
    """What a user would otherwise look up for one provider.

    `imap` and `smtp` are None where the servers differ per customer (`other`, `sandbox`).
    `junk_folder` is the junk folder's name in an English-language account, for the docs only: it
    does not fill `folders.junk`, because the names are translated per account language (Gmail's
    is "[Gmail]/&j,dg0TDhMPww6w-" in Japanese) while the watcher finds the folder by its
    SPECIAL-USE flag `\\Junk` in any language, then by the known English names.
    `oauth` is the preset of `auth.oauth2.provider` (`google`, `microsoft`), None where the agent
    has none. `app_passwords`: whether a password (an app password) still signs in over IMAP and
    SMTP. `trust`: the Authentication-Results trust rules.
    """

    name: str
    title: str
    imap: Endpoint | None
    smtp: Endpoint | None
    junk_folder: str | None
    oauth: str | None
    app_passwords: bool
    trust: tuple[str, ...]


_IMPLICIT, _STARTTLS = TlsMode.IMPLICIT, TlsMode.STARTTLS

# The profiles, in the order of the docs table. Trust rules come from real headers; their sources
# are in tests/corpus/authresults/manifest.yaml. Gmail, Exchange Online and Yahoo flag their junk
# folder `\Junk` in real LIST answers (quoted in public IMAP clients' tests); every name below is
# also one of agent.imap.folders.JUNK_FOLDER_NAMES.
PROFILES: Mapping[str, Profile] = {
    profile.name: profile
    for profile in (
        # Servers: https://support.google.com/mail/answer/7126229 (IMAP 993 SSL, SMTP 587 TLS or
        # 465 SSL). OAuth: https://developers.google.com/gmail/imap/xoauth2-protocol. App
        # passwords only with 2-Step Verification: https://support.google.com/accounts/answer/185833
        # Gmail writes one Authentication-Results field, authserv-id "mx.google.com".
        Profile(
            "gmail",
            "Gmail",
            Endpoint("imap.gmail.com", 993, _IMPLICIT),
            Endpoint("smtp.gmail.com", 587, _STARTTLS),
            "[Gmail]/Spam",
            "google",
            True,
            ("mx.google.com",),
        ),
        # The same servers as Gmail; an admin can turn IMAP off and forbid app passwords, and a
        # service account with domain-wide delegation can sign in for any user:
        # https://support.google.com/a/answer/105694,
        # https://developers.google.com/identity/protocols/oauth2/service-account
        Profile(
            "google-workspace",
            "Google Workspace",
            Endpoint("imap.gmail.com", 993, _IMPLICIT),
            Endpoint("smtp.gmail.com", 587, _STARTTLS),
            "[Gmail]/Spam",
            "google",
            True,
            ("mx.google.com",),
        ),
        # IMAP: https://learn.microsoft.com/en-us/exchange/clients-and-mobile-in-exchange-online/pop3-and-imap4/pop3-and-imap4
        # SMTP AUTH: https://learn.microsoft.com/en-us/exchange/mail-flow-best-practices/how-to-set-up-a-multifunction-device-or-application-to-send-email-using-microsoft-365-or-office-365
        # Basic authentication is off for IMAP; for SMTP AUTH it ends (550 5.7.30):
        # https://learn.microsoft.com/en-us/exchange/clients-and-mobile-in-exchange-online/deprecation-of-basic-authentication-exchange-online
        # Exchange Online writes no authserv-id (or a tenant token), so only its position
        # identifies its field: EOP adds it on top of the message.
        Profile(
            "microsoft365",
            "Microsoft 365 (Exchange Online)",
            Endpoint("outlook.office365.com", 993, _IMPLICIT),
            Endpoint("smtp.office365.com", 587, _STARTTLS),
            "Junk Email",
            "microsoft",
            False,
            (TOPMOST,),
        ),
        # https://support.microsoft.com/en-us/office/pop-imap-and-smtp-settings-for-outlook-com-d088b986-291d-42b8-9564-9c414e2aa040
        # Passwords stopped working on 16 September 2024:
        # https://support.microsoft.com/en-us/office/modern-authentication-methods-now-needed-to-continue-syncing-outlook-email-in-non-microsoft-email-apps-c5d65390-9676-4763-b41f-d7986499a90d
        Profile(
            "outlook",
            "Outlook.com (Hotmail, Live)",
            Endpoint("outlook.office365.com", 993, _IMPLICIT),
            Endpoint("smtp-mail.outlook.com", 587, _STARTTLS),
            "Junk",
            "microsoft",
            False,
            (TOPMOST,),
        ),
        # https://help.yahoo.com/kb/SLN4075.html (IMAP 993 SSL, SMTP 465 or 587 SSL); third-party
        # apps sign in with an app password: https://help.yahoo.com/kb/SLN15241.html. Yahoo's
        # OAuth needs an app Yahoo approved for mail, so no preset. Yahoo and AOL (one platform)
        # write the receiving host as authserv-id: mtaNNNN.mail.xx1.yahoo.com, old AOL hosts
        # under aol.com.
        Profile(
            "yahoo",
            "Yahoo Mail",
            Endpoint("imap.mail.yahoo.com", 993, _IMPLICIT),
            Endpoint("smtp.mail.yahoo.com", 465, _IMPLICIT),
            "Bulk Mail",
            None,
            True,
            ("*.yahoo.com", "*.aol.com"),
        ),
        # https://help.aol.com/articles/how-do-i-use-other-email-applications-to-send-and-receive-my-aol-mail
        # App passwords: https://help.aol.com/articles/Create-and-manage-app-password
        Profile(
            "aol",
            "AOL Mail",
            Endpoint("imap.aol.com", 993, _IMPLICIT),
            Endpoint("smtp.aol.com", 465, _IMPLICIT),
            "Bulk Mail",
            None,
            True,
            ("*.yahoo.com", "*.aol.com"),
        ),
        # https://support.apple.com/en-us/102525 (IMAP 993 SSL, SMTP 587 STARTTLS); an
        # app-specific password is required: https://support.apple.com/en-us/102654. iCloud
        # writes one field per method (spf.icloud.com, dkim-verifier.icloud.com, ...); older ones
        # came from its milter hosts (mr21p00im-dkimmilter005.me.com).
        Profile(
            "icloud",
            "iCloud Mail",
            Endpoint("imap.mail.me.com", 993, _IMPLICIT),
            Endpoint("smtp.mail.me.com", 587, _STARTTLS),
            "Junk",
            None,
            True,
            ("*.icloud.com", "*.me.com"),
        ),
        # https://www.fastmail.help/hc/en-us/articles/1500000278342 (IMAP 993, SMTP 465 SSL);
        # third-party apps need an app password:
        # https://www.fastmail.help/hc/en-us/articles/360058752854. Fastmail writes the
        # receiving MX's name, mxN.messagingengine.com.
        Profile(
            "fastmail",
            "Fastmail",
            Endpoint("imap.fastmail.com", 993, _IMPLICIT),
            Endpoint("smtp.fastmail.com", 465, _IMPLICIT),
            "Spam",
            None,
            True,
            ("*.messagingengine.com",),
        ),
        # https://www.zoho.com/mail/help/imap-access.html (imap.zoho.com 993 SSL, smtp.zoho.com
        # 465 SSL; organisation accounts use imappro / smtppro, other regions zoho.eu, zoho.in,
        # ...: set host); with two-factor authentication an app-specific password. No real
        # Zoho header in the corpus yet, so it trusts the topmost field.
        Profile(
            "zoho",
            "Zoho Mail",
            Endpoint("imap.zoho.com", 993, _IMPLICIT),
            Endpoint("smtp.zoho.com", 465, _IMPLICIT),
            "Spam",
            None,
            True,
            (TOPMOST,),
        ),
        # Any other server: host (and port) must be given.
        Profile("other", "any other server", None, None, None, None, True, (TOPMOST,)),
        # The agent's embedded sandbox (docs/sandbox.md): its servers come from the sandbox
        # section.
        Profile("sandbox", "the embedded sandbox", None, None, "Junk", None, True, (TOPMOST,)),
    )
}

# Older names that trust rules keyed on before the profiles existed; they keep working.
ALIASES: Mapping[str, str] = {
    "google": "google-workspace",
    "microsoft": "microsoft365",
    "office365": "microsoft365",
    "hotmail": "outlook",
}

# Per provider name, aliases included, the trust rules of its profile.
PROVIDER_TRUST: Mapping[str, tuple[str, ...]] = {
    **{name: profile.trust for name, profile in PROFILES.items()},
    **{alias: PROFILES[name].trust for alias, name in ALIASES.items()},
}


def canonical_provider(name: str) -> str:
    """The profile name `name` stands for (case-insensitive; aliases resolved); ValueError
    listing the known names when there is none."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in PROFILES:
        raise ValueError(f"expected one of {', '.join(PROFILES)}")
    return key


def trust_rules_for(provider: str, configured: Sequence[str] = ()) -> tuple[TrustRule, ...]:
    """The rules for a mailbox: `configured` when given (it replaces the profile), else the
    provider's profile, else `topmost`."""
    texts = configured or PROVIDER_TRUST.get(provider.strip().lower(), (TOPMOST,))
    return tuple(parse_trust_rule(text) for text in texts)
