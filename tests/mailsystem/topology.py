"""The fixed names of the test mail system: domains, accounts, special recipients.

Tests import these to address mail; the ports and paths of a running instance are in `MailSystem`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "AUTHSERV_ID",
    "BAD_DOMAIN",
    "BOUNCE_ACCOUNT",
    "DKIM_SELECTOR",
    "GOOD_DOMAIN",
    "HELD_ACCOUNTS",
    "MX_HOSTNAME",
    "MX_ONLY_RCPT_CODES",
    "POOL_ACCOUNTS",
    "RCPT_CODES",
    "SEED_ACCOUNTS",
    "SEED_DOMAIN",
    "SENDER_ACCOUNTS",
    "SPAM_SUBJECT_TOKEN",
    "SUBMISSION_HOSTNAME",
    "Account",
]

GOOD_DOMAIN = "good.test"  # SPF, DKIM and DMARC (p=reject) all set up right
BAD_DOMAIN = "bad.test"  # SPF excludes the sending IP, no DKIM key, DMARC p=quarantine
SEED_DOMAIN = "seed.test"  # the seed mailboxes' domain, MX is the receiving Postfix
SUBMISSION_HOSTNAME = f"mail.{GOOD_DOMAIN}"
MX_HOSTNAME = f"mx.{SEED_DOMAIN}"
AUTHSERV_ID = MX_HOSTNAME  # rspamd names the MTA (Postfix myhostname) in Authentication-Results
DKIM_SELECTOR = "sel1"
# A Subject containing this token scores as spam in rspamd (GTUBE would skip every other check).
SPAM_SUBJECT_TOKEN = "XSPAMTRIGGERX"

# Recipients that answer a fixed reply at RCPT, on the submission server and on the MX.
# Answered by the MX only: the submission server queues the mail, then bounces it (a DSN).
MX_ONLY_RCPT_CODES: dict[str, str] = {
    f"defer-mx-451@{SEED_DOMAIN}": "451 4.7.1 Try again later (test recipient, MX only)",
    f"reject-mx-550@{SEED_DOMAIN}": "550 5.7.1 Rejected by policy (test recipient, MX only)",
}
RCPT_CODES: dict[str, str] = {
    f"defer-451@{SEED_DOMAIN}": "451 4.7.1 Try again later (test recipient)",
    f"reject-550@{SEED_DOMAIN}": "550 5.7.1 Rejected by policy (test recipient)",
    f"full-552@{SEED_DOMAIN}": "552 5.2.2 Mailbox full (test recipient)",
}


@dataclass(frozen=True)
class Account:
    address: str
    password: str = field(repr=False)

    @property
    def domain(self) -> str:
        return self.address.rsplit("@", 1)[1]


# Submission (SMTP AUTH) accounts: one per sending domain.
SENDER_ACCOUNTS = (
    Account(f"sender@{GOOD_DOMAIN}", "good-sender-password"),
    Account(f"sender@{BAD_DOMAIN}", "bad-sender-password"),
)
# Seed mailboxes on the MX, read over IMAP.
SEED_ACCOUNTS = (
    Account(f"seed1@{SEED_DOMAIN}", "seed1-password"),
    Account(f"seed2@{SEED_DOMAIN}", "seed2-password"),
)
BOUNCE_ACCOUNT = Account(f"bounces@{SEED_DOMAIN}", "bounces-password")
# A pool of further seed mailboxes: each test takes fresh ones (MailSystem.new_mailbox()) so no
# test ever sees another's leftovers.
# Held seed mailboxes: the submission server accepts mail for them but puts it on hold in its queue
# until MailSystem.release_held(): a probe that is accepted, then delivered when a test decides.
HELD_ACCOUNTS = tuple(
    Account(f"held{i:02d}@{SEED_DOMAIN}", f"held{i:02d}-password") for i in range(20)
)
POOL_ACCOUNTS = tuple(
    Account(f"box{i:03d}@{SEED_DOMAIN}", f"box{i:03d}-password") for i in range(200)
)
