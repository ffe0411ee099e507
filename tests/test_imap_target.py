"""The description of a seed mailbox: what it refuses and what its repr keeps out."""

from __future__ import annotations

import pytest

from agent.imap import ImapTarget
from agent.model import TlsMode


def test_target_repr_hides_the_password_and_starttls_is_refused() -> None:
    target = ImapTarget(
        mailbox="m", host="h", port=1, tls=TlsMode.NONE, username="u", password="hunter2-secret"
    )
    assert "hunter2-secret" not in repr(target)
    with pytest.raises(ValueError, match="STARTTLS"):
        ImapTarget(mailbox="m", host="h", port=1, tls=TlsMode.STARTTLS, username="u", password="p")


def test_further_secrets_stay_out_of_the_target_repr() -> None:
    target = ImapTarget(
        mailbox="m",
        host="h",
        port=1,
        tls=TlsMode.NONE,
        username="u",
        password="p",
        secrets=("oauth-refresh-token-xyz",),
    )
    assert "oauth-refresh-token-xyz" not in repr(target)
