"""A config with one route `r` and one seed mailbox `m` on loopback ports, for tests that drive the
agent against scripted servers (or against nothing: port 1, where nobody listens)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.config import Config, validate_config
from agent.probing.probe_message import build_probe_message
from agent.reading.probe_token import new_probe_id

__all__ = ["SECRET", "one_pair_config", "signed_probe"]

SECRET = "one-pair-test-secret-0123456789"


def one_pair_config(
    tmp_path: Path,
    *,
    smtp_port: int = 1,
    imap_port: int = 1,
    route: Mapping[str, Any] | None = None,
    mailbox: Mapping[str, Any] | None = None,
    probes: Mapping[str, Any] | None = None,
) -> Config:
    """Route `r` on `smtp_port`, mailbox `m` on `imap_port`, both plain TCP; the keys of `route`,
    `mailbox` and `probes` are merged over the defaults (`calibrate: false` among them)."""
    data = {
        "listen": "127.0.0.1:0",
        "state_dir": str(tmp_path / "state"),
        "secret": SECRET,
        "routes": [
            {
                "name": "r",
                "host": "127.0.0.1",
                "port": smtp_port,
                "tls": "none",
                "ehlo_name": "client.test",
                "from": "probe@client.test",
                **(route or {}),
            }
        ],
        "mailboxes": [
            {
                "name": "m",
                "host": "127.0.0.1",
                "port": imap_port,
                "tls": "none",
                "allow_plaintext_auth": True,
                "auth": {"username": "u", "password": "imap-password-1"},
                "address": "seed@seed.test",
                "folders": {"junk": "Junk"},
                # Scripted servers play the sessions a test names; calibration would add one
                # (tests/test_imap_calibration.py covers it).
                "calibrate": False,
                **(mailbox or {}),
            }
        ],
        "probes": {
            "interval": "1m",
            "jitter": "0s",
            "start": "immediate",  # tests await the first probe, not the pair's phase
            "deadline": "1m",
            **(probes or {}),
        },
    }
    return validate_config(data, base_dir=tmp_path, environ={})


def signed_probe(
    *, secret: str = SECRET, to: str = "seed@seed.test", sender: str = "probe@client.test"
) -> tuple[str, bytes]:
    """A new probe id, and the probe message (CRLF) of route `r` to mailbox `m` as it reaches
    the seed mailbox, signed with `secret`."""
    probe_id = new_probe_id()
    message = build_probe_message(
        probe_id=probe_id,
        secret=secret.encode(),
        header_from=sender,
        to=to,
        route="r",
        mailbox="m",
        sent_at=datetime.now(UTC),
    )
    return probe_id, message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
