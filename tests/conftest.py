"""Session fixtures shared by the whole suite: the real mail system on loopback."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.agent_process import AgentProcess
from tests.mailsystem import MailSystem

_TIMINGS: list[str] = []


@pytest.fixture(scope="session")
def mail_system() -> Iterator[MailSystem]:
    """The real mail system (NSD, Postfix x2, OpenDKIM, rspamd, Dovecot), started once per session.

    Set MAILSYSTEM_KEEP=1 to leave its directory (configs and logs) behind for inspection.
    """
    system = MailSystem.create()
    try:
        system.start()
    except Exception:
        system.stop()
        raise
    _TIMINGS.append(f"mail system at {system.root}: {system.timing_report()}")
    try:
        yield system
    finally:
        system.stop()
        _TIMINGS.append(f"mail system stopped in {system.timings.get('stop', 0.0):.2f} s")
        if not os.environ.get("MAILSYSTEM_KEEP"):
            _remove_tree(system.root)


def _remove_tree(root: Path) -> None:
    import shutil

    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def processes() -> Iterator[list[AgentProcess]]:
    """Agent processes a test starts; any still running at the end are killed."""
    started: list[AgentProcess] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.kill()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _TIMINGS:
        terminalreporter.write_line(line)


# A throwaway CA and a server certificate for 127.0.0.1 / localhost, for the TLS tests of the
# SMTP sender and the IMAP connection against scripted servers.
@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture
def server_tls(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    """The scripted server's side of TLS."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    """The CA as a PEM file, as a config's `ca_file` names it."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path
