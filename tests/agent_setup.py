"""Agent configurations pointing at the real test mail system, for integration tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.config import Config, load_config
from tests.mailsystem import MailSystem
from tests.mailsystem.topology import AUTHSERV_ID, SENDER_ACCOUNTS, Account

__all__ = ["BAD_SENDER", "GOOD_SENDER", "TEST_SECRET", "AgentSetup"]

GOOD_SENDER, BAD_SENDER = SENDER_ACCOUNTS
TEST_SECRET = "integration-test-secret-0123456789"


@dataclass
class AgentSetup:
    """Builds a config file in `directory` for routes and seed mailboxes of the mail system."""

    system: MailSystem
    directory: Path
    routes: list[dict[str, Any]] = field(default_factory=list)
    mailboxes: list[dict[str, Any]] = field(default_factory=list)
    probes: dict[str, Any] = field(
        default_factory=lambda: {
            "interval": "1m",
            "jitter": "0s",
            "start": "immediate",  # tests wait for the first probe, not for the pair's phase
            "deadline": "60s",
        }
    )

    def route(
        self,
        name: str,
        *,
        sender: Account = GOOD_SENDER,
        password: str | None = None,
        port: int | None = None,
        tls: str = "starttls",
        timeouts: dict[str, str] | None = None,
    ) -> AgentSetup:
        self.routes.append(
            {
                "name": name,
                "host": "127.0.0.1",
                "port": port or self.system.ports.submission,
                "tls": tls,
                "ca_file": str(self.system.ca_file),
                "ehlo_name": "agent.client.test",
                "auth": {"username": sender.address, "password": password or sender.password},
                "from": f"Deliverability probe <{sender.address}>",
                "timeouts": timeouts or {"connect": "5s", "stage": "10s", "total": "30s"},
            }
        )
        return self

    def mailbox(
        self,
        name: str,
        account: Account,
        *,
        address: str | None = None,
        tls: str = "implicit",
    ) -> AgentSetup:
        """A seed mailbox read as `account`; probes go to `address` (default: the same)."""
        self.mailboxes.append(
            {
                "name": name,
                "provider": "other",
                "host": "127.0.0.1",
                "port": self.system.ports.imaps if tls == "implicit" else self.system.ports.imap,
                "tls": tls,
                "ca_file": str(self.system.ca_file),
                "auth": {"username": account.address, "password": account.password},
                "address": address or account.address,
                "trusted_authserv_ids": [AUTHSERV_ID],
                **({"allow_plaintext_auth": True} if tls == "none" else {}),
            }
        )
        return self

    def data(self) -> dict[str, Any]:
        return {
            "listen": "127.0.0.1:0",
            "state_dir": str(self.directory / "state"),
            "secret": TEST_SECRET,
            "log_level": "debug",
            "routes": self.routes,
            "mailboxes": self.mailboxes,
            "probes": self.probes,
        }

    def write(self, name: str = "config.yaml") -> Path:
        path = self.directory / name
        path.write_text(yaml.safe_dump(self.data(), sort_keys=False))
        return path

    def load(self) -> Config:
        return load_config(self.write())
