"""What the agent knows about the big mailbox providers: for now, whose Authentication-Results
fields to trust.

A trust rule names which fields at the top of a message the receiving side wrote (RFC 8601
section 7.1). Three forms:

- `mx.google.com`: a field whose authserv-id is exactly this (case-insensitive);
- `*.yahoo.com`: a field whose authserv-id is any host under this suffix (not the suffix itself),
  for receivers that write their own host name (`atlas-production….yahoo.com`);
- `topmost`: the topmost field, whatever its authserv-id or none: for receivers that write no id
  (Microsoft) or when nothing better is known.

The profiles below come from real headers (tests/corpus/authresults/); a mailbox whose
`provider` is not listed, or is `other`, trusts the topmost field only.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "PROVIDER_TRUST",
    "TOPMOST",
    "TrustKind",
    "TrustRule",
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


# Per provider label (`mailboxes[].provider`), the rules that fit its real headers; the sources
# are in tests/corpus/authresults/manifest.yaml.
PROVIDER_TRUST: Mapping[str, tuple[str, ...]] = {
    # Gmail and Google Workspace: one field, always "mx.google.com".
    "gmail": ("mx.google.com",),
    "google": ("mx.google.com",),
    # Exchange Online writes no authserv-id (or a tenant token in the middle of the field), so
    # only its position identifies it: EOP adds its field on top of the message.
    "microsoft": (TOPMOST,),
    "outlook": (TOPMOST,),
    # Yahoo and AOL (one platform): the host that received the message, mtaNNNN.mail.xx1.yahoo.com
    # or atlas-production….yahoo.com; old AOL hosts under aol.com.
    "yahoo": ("*.yahoo.com", "*.aol.com"),
    "aol": ("*.yahoo.com", "*.aol.com"),
    # iCloud writes one field per method: spf.icloud.com, dkim-verifier.icloud.com,
    # dmarc.icloud.com, arc.icloud.com, bimi.icloud.com; older ones came from its milter hosts
    # (mr21p00im-dkimmilter005.me.com).
    "icloud": ("*.icloud.com", "*.me.com"),
    # Fastmail: the receiving MX's name, mxN.messagingengine.com.
    "fastmail": ("*.messagingengine.com",),
    "other": (TOPMOST,),
}


def trust_rules_for(provider: str, configured: Sequence[str] = ()) -> tuple[TrustRule, ...]:
    """The rules for a mailbox: `configured` when given (it replaces the profile), else the
    provider's profile, else `topmost`."""
    texts = configured or PROVIDER_TRUST.get(provider.strip().lower(), (TOPMOST,))
    return tuple(parse_trust_rule(text) for text in texts)
