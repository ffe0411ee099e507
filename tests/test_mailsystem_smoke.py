"""The test mail system really checks mail: proven with the standard library's clients only."""

from __future__ import annotations

import email
import email.policy
import imaplib
import smtplib
import ssl
import time
import uuid
from email.message import EmailMessage

import pytest

from tests.mailsystem import MailSystem
from tests.mailsystem.topology import (
    BAD_DOMAIN,
    GOOD_DOMAIN,
    SEED_ACCOUNTS,
    SENDER_ACCOUNTS,
    Account,
)

pytestmark = pytest.mark.mailsystem

GOOD_SENDER, BAD_SENDER = SENDER_ACCOUNTS
SEED = SEED_ACCOUNTS[0]
ARRIVAL_TIMEOUT = 60.0


def _tls(system: MailSystem) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(system.ca_file))


def _submit(
    system: MailSystem,
    *,
    sender_address: str,
    password: str,
    subject: str,
    to: str = SEED.address,
) -> None:
    msg = EmailMessage()
    msg["From"] = sender_address
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4()}@{sender_address.split('@')[1]}>"
    msg.set_content("smoke test\n")
    with smtplib.SMTP("127.0.0.1", system.ports.submission, timeout=30) as smtp:
        smtp.starttls(context=_tls(system))
        smtp.login(sender_address, password)
        smtp.send_message(msg)


def _wait_for(
    system: MailSystem, subject: str, *, account: Account = SEED
) -> tuple[str, email.message.Message]:
    """The folder and message with this subject; polls, as imaplib (3.11) has no IDLE."""
    with imaplib.IMAP4_SSL("127.0.0.1", system.ports.imaps, ssl_context=_tls(system)) as imap:
        imap.login(account.address, account.password)
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while time.monotonic() < deadline:
            for folder in ("INBOX", "Junk"):
                imap.select(folder, readonly=True)
                _, data = imap.search(None, "SUBJECT", f'"{subject}"')
                for number in data[0].split():
                    _, fetched = imap.fetch(number, "(RFC822)")
                    part = fetched[0]
                    assert isinstance(part, tuple)
                    raw = part[1]
                    return folder, email.message_from_bytes(raw, policy=email.policy.default)
            time.sleep(0.1)
    pytest.fail(f"no message with subject {subject!r} within {ARRIVAL_TIMEOUT} s")


def _auth_results(message: email.message.Message) -> str:
    headers = message.get_all("Authentication-Results") or []
    assert headers, "no Authentication-Results header"
    top = str(headers[0])
    assert top.startswith("mx.seed.test;"), top
    return " ".join(top.split())


def test_mail_from_the_good_domain_lands_in_inbox_with_spf_dkim_dmarc_pass(
    mail_system: MailSystem,
) -> None:
    subject = f"smoke good {uuid.uuid4()}"
    _submit(
        mail_system,
        sender_address=GOOD_SENDER.address,
        password=GOOD_SENDER.password,
        subject=subject,
    )
    folder, message = _wait_for(mail_system, subject)
    assert folder == "INBOX"
    results = _auth_results(message)
    assert "spf=pass" in results
    assert f"dkim=pass header.d={GOOD_DOMAIN}" in results
    assert "dmarc=pass" in results


def test_mail_from_the_misconfigured_domain_lands_in_junk_with_dmarc_fail(
    mail_system: MailSystem,
) -> None:
    subject = f"smoke bad {uuid.uuid4()}"
    _submit(
        mail_system,
        sender_address=BAD_SENDER.address,
        password=BAD_SENDER.password,
        subject=subject,
    )
    folder, message = _wait_for(mail_system, subject)
    assert folder == "Junk"
    results = _auth_results(message)
    assert "dmarc=fail" in results
    assert "spf=fail" in results
    assert f"header.from={BAD_DOMAIN}" in results


def test_unknown_recipient_at_the_mx_gets_550_5_1_1(mail_system: MailSystem) -> None:
    with smtplib.SMTP("127.0.0.1", mail_system.ports.mx, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail(GOOD_SENDER.address)
        code, text = smtp.rcpt("nobody@seed.test")
    assert code == 550
    assert text.startswith(b"5.1.1"), text


def test_wrong_password_at_submission_gets_535(mail_system: MailSystem) -> None:
    with smtplib.SMTP("127.0.0.1", mail_system.ports.submission, timeout=30) as smtp:
        smtp.starttls(context=_tls(mail_system))
        with pytest.raises(smtplib.SMTPAuthenticationError) as raised:
            smtp.login(GOOD_SENDER.address, "not-the-password")
    assert raised.value.smtp_code == 535


def test_implicit_tls_submission_accepts_authenticated_mail(mail_system: MailSystem) -> None:
    with smtplib.SMTP_SSL(
        "127.0.0.1", mail_system.ports.submissions, timeout=30, context=_tls(mail_system)
    ) as smtp:
        smtp.login(GOOD_SENDER.address, GOOD_SENDER.password)
        code, _ = smtp.mail(GOOD_SENDER.address)
        assert code == 250
        code, text = smtp.rcpt("reject-550@seed.test")
    assert (code, text[:5]) == (550, b"5.7.1")


def test_mail_for_a_held_mailbox_waits_until_released(mail_system: MailSystem) -> None:
    held = mail_system.new_held_mailbox()
    subject = f"smoke held {uuid.uuid4()}"
    _submit(
        mail_system,
        sender_address=GOOD_SENDER.address,
        password=GOOD_SENDER.password,
        subject=subject,
        to=held.address,
    )
    assert mail_system.held_count(held.address) == 1
    mail_system.release_held()
    folder, _ = _wait_for(mail_system, subject, account=held)
    assert folder == "INBOX"
    assert mail_system.held_count(held.address) == 0
