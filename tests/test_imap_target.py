"""The description of a seed mailbox: what it refuses and what its repr keeps out."""

from __future__ import annotations

import pytest

from agent.imap import ImapTarget
from agent.model import TlsMode


def test_target_repr_hides_the_password_and_opportunistic_tls_is_refused() -> None:
    target = ImapTarget(
        mailbox="m", host="h", port=1, tls=TlsMode.NONE, username="u", password="hunter2-secret"
    )
    assert "hunter2-secret" not in repr(target)
    # Opportunistic would send the password in clear text to a server without STARTTLS.
    with pytest.raises(ValueError, match="'opportunistic'"):
        ImapTarget(
            mailbox="m", host="h", port=1, tls=TlsMode.OPPORTUNISTIC, username="u", password="p"
        )
    assert (
        ImapTarget(
            mailbox="m", host="h", port=143, tls=TlsMode.STARTTLS, username="u", password="p"
        ).tls
        is TlsMode.STARTTLS
    )


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
