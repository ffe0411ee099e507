"""An embedded sandbox mail provider: local SMTP submission and IMAP seed mailboxes, for demos.

Started by the agent when the config has a `sandbox` section (docs/sandbox.md). It listens on
loopback only, with TLS (a CA and certificate generated into `<state_dir>/sandbox/`) and AUTH like
a real provider, and plays the configured scenario rules: deliver to the inbox or Junk after a
delay with given Authentication-Results verdicts, answer a 4xx/5xx at a stage, accept and drop,
or bounce with a DSN. Mail lives in memory only. It is a demo and a fast test aid, never a
stand-in for the real mail system of the integration tests.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from agent.config import Sandbox
from agent.errors import AgentError, ErrorCategory
from agent.sandbox.imap import JUNK, ImapStore
from agent.sandbox.smtp import SmtpServer
from agent.sandbox.tls import SandboxTlsError, ensure_certificates, server_context

__all__ = ["SandboxAddresses", "SandboxError", "SandboxServer"]

CERT_SUBDIR = "sandbox"


class SandboxError(AgentError):
    """The sandbox cannot start; the message says which part and why."""

    category = ErrorCategory.SERVER


@dataclass(frozen=True, slots=True)
class SandboxAddresses:
    """Where the running sandbox listens, and the CA file that verifies its certificate."""

    host: str
    submission_port: int  # SMTP, STARTTLS required
    submissions_port: int  # SMTP over implicit TLS
    imaps_port: int  # IMAP over implicit TLS
    ca_file: Path

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (
            f"SMTP submission {host}:{self.submission_port} (STARTTLS) and "
            f"{host}:{self.submissions_port} (TLS), IMAP {host}:{self.imaps_port} (TLS); "
            f"CA {self.ca_file}"
        )


class SandboxServer:
    """A running sandbox; `close()` it when the agent stops."""

    def __init__(self, addresses: SandboxAddresses, smtp: SmtpServer, store: ImapStore) -> None:
        self.addresses = addresses
        self.store = store
        self._smtp = smtp

    @classmethod
    async def start(
        cls, settings: Sandbox, *, state_dir: Path, any_port: bool = False
    ) -> SandboxServer:
        """Make or reuse the certificates, create the mailboxes and start listening.

        `any_port` binds every listener to a free port instead of the configured ones (tests);
        read them back from `addresses`. Raises SandboxError.
        """
        try:
            files = ensure_certificates(
                state_dir / CERT_SUBDIR, hosts=[settings.host, "localhost", settings.hostname]
            )
            tls = server_context(files)
        except SandboxTlsError as exc:
            raise SandboxError(f"sandbox: {exc}") from exc
        store = ImapStore(hostname=settings.hostname, tls=tls)
        folders = [rule.deliver.folder for rule in settings.rules if rule.deliver is not None]
        await store.add_mailboxes(settings.mailboxes, folders=[JUNK, *folders])
        smtp = SmtpServer(settings, store=store, tls=tls)
        host = settings.host
        listeners = (
            ("SMTP submission (STARTTLS)", settings.submission_port, smtp.listen_starttls),
            ("SMTP submission (TLS)", settings.submissions_port, smtp.listen_implicit),
            ("IMAP (TLS)", settings.imaps_port, store.start),
        )
        bound: list[int] = []
        for what, port, listen in listeners:
            try:
                bound.append(await listen(host, 0 if any_port else port))
            except OSError as exc:
                await smtp.close()
                await store.close()
                reason = (
                    "the address is already in use"
                    if exc.errno == errno.EADDRINUSE
                    else (exc.strerror or str(exc))
                )
                shown = f"[{host}]" if ":" in host else host
                raise SandboxError(
                    f"sandbox: cannot listen on {shown}:{port} for {what}: {reason}"
                ) from exc
        addresses = SandboxAddresses(host, bound[0], bound[1], bound[2], files.ca_file)
        return cls(addresses, smtp, store)

    async def close(self) -> None:
        """Stop both servers; mail not yet delivered and every mailbox are gone."""
        await self._smtp.close()
        await self.store.close()
