"""A generated config of R routes x M seed mailboxes whose servers all refuse (127.0.0.1 port 1),
so the agent's own cost shows without a mail system: the loop-blocking test and the refused-probes
benchmark build it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.config import Config, validate_config

__all__ = ["refused_config"]


def refused_config(state_dir: Path, *, routes: int, mailboxes: int) -> Config:
    """`routes` x `mailboxes` pairs against servers that refuse every connection."""
    refused: dict[str, Any] = {"host": "127.0.0.1", "port": 1, "tls": "none"}
    data = {
        "state_dir": str(state_dir),
        "secret": "refused-servers-config-secret-0123456789",
        "routes": [
            {"name": f"r{i:03d}", "from": "probe@bench.test", "ehlo_name": "bench.test", **refused}
            for i in range(routes)
        ],
        "mailboxes": [
            {
                "name": f"m{i:03d}",
                "address": f"seed{i:03d}@seed.test",
                "allow_plaintext_auth": True,
                "auth": {"username": f"seed{i:03d}", "password": "refused-password-1"},
                **refused,
            }
            for i in range(mailboxes)
        ],
    }
    return validate_config(data, base_dir=state_dir, environ={})
