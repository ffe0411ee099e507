"""The SMTP sender against the real submission server (Postfix), beyond the scripted faults."""

from __future__ import annotations

import pytest

from agent.model import TlsMode
from agent.smtp.sender import SmtpTarget, send_probe
from tests.agent_setup import GOOD_SENDER
from tests.mailsystem import MailSystem

pytestmark = pytest.mark.mailsystem


async def test_many_starttls_transactions_in_one_loop_all_succeed(mail_system: MailSystem) -> None:
    # Regression: after QUIT the TLS transport still owns the socket while its shutdown runs;
    # closing the socket then freed its descriptor under that transport, and the next
    # transaction to get the same descriptor failed at connect ("used by transport").
    target = SmtpTarget(
        route="good",
        host="127.0.0.1",
        port=mail_system.ports.submission,
        tls=TlsMode.STARTTLS,
        tls_verify=True,
        ca_file=mail_system.ca_file,
        username=GOOD_SENDER.address,
        password=GOOD_SENDER.password,
        ehlo_name="agent.client.test",
        connect_timeout=5.0,
        stage_timeout=10.0,
        total_timeout=30.0,
    )
    seed = mail_system.new_mailbox()
    message = f"From: {GOOD_SENDER.address}\r\nTo: {seed.address}\r\nSubject: x\r\n\r\nx\r\n"
    errors = []
    for _ in range(12):
        result = await send_probe(
            target,
            envelope_from=GOOD_SENDER.address,
            recipients=[seed.address],
            message=message.encode(),
        )
        errors.append(result.error)
    assert errors == [None] * 12
