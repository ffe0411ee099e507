"""Install, configure, start and stop the real mail system used by the integration tests.

One instance = NSD (DNS for the test domains), a sending Postfix (submission + OpenDKIM signing), a
receiving Postfix MX with rspamd as milter (SPF/DKIM/DMARC, Authentication-Results, spam verdict),
and Dovecot (IMAP, LMTP with Sieve filing spam into Junk). Everything listens on high ports of
127.0.0.1, and every config file and all state lives under one directory. Daemons are started
directly (no systemd) with their logs in files, and stopped by PID.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import imaplib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.mailsystem import configs
from tests.mailsystem.configs import Layout, Ports
from tests.mailsystem.topology import (
    BAD_DOMAIN,
    BOUNCE_ACCOUNT,
    GOOD_DOMAIN,
    HELD_ACCOUNTS,
    MX_HOSTNAME,
    POOL_ACCOUNTS,
    SEED_ACCOUNTS,
    SEED_DOMAIN,
    SENDER_ACCOUNTS,
    SUBMISSION_HOSTNAME,
    Account,
)

__all__ = ["DEBIAN_PACKAGES", "MailSystem", "MailSystemError", "ensure_installed"]

# Debian packages of the stack, and a binary of each that proves it is installed.
DEBIAN_PACKAGES: dict[str, str] = {
    "nsd": "/usr/sbin/nsd",
    "postfix": "/usr/sbin/postfix",
    "dovecot-imapd": "/usr/lib/dovecot/imap",
    "dovecot-lmtpd": "/usr/lib/dovecot/lmtp",
    "dovecot-sieve": "/usr/bin/sievec",
    "rspamd": "/usr/bin/rspamd",
    "opendkim": "/usr/sbin/opendkim",
    # Not mail: the monitoring proof scrapes the agent with a real Prometheus and checks the
    # example Alertmanager config with amtool.
    "prometheus": "/usr/bin/prometheus",
    "prometheus-alertmanager": "/usr/bin/amtool",
    # Not mail either: the status page is tested in a real headless browser.
    "chromium": "/usr/bin/chromium",
    "chromium-driver": "/usr/bin/chromedriver",
}
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
# Where Dovecot's fs dict finds the key for shared/default/HS256/default (no azp, no kid).
OAUTH2_KEY_PATH = Path("default") / "HS256" / "default"
START_TIMEOUT = 60.0
STOP_GRACE = 3.0  # SIGTERM gets this long before SIGKILL
STOP_TIMEOUT = 15.0


class MailSystemError(RuntimeError):
    """The mail system could not be installed, configured or started; says which part."""


def _missing_packages() -> list[str]:
    return [pkg for pkg, binary in DEBIAN_PACKAGES.items() if not Path(binary).exists()]


def ensure_installed(*, log: Callable[[str], None] = print) -> float:
    """Install the stack's Debian packages if any is missing; returns the seconds it took.

    A policy-rc.d that forbids starting services is in place during the install, so the packages
    never start daemons on the standard ports (there is no systemd here either).
    """
    missing = _missing_packages()
    if not missing:
        return 0.0
    if os.geteuid() != 0:
        raise MailSystemError(
            "the test mail system needs Debian packages that are not installed: "
            + " ".join(missing)
            + " (run as root, or: apt-get install -y "
            + " ".join(DEBIAN_PACKAGES)
            + ")"
        )
    started = time.monotonic()
    placed_policy = not POLICY_RC_D.exists()
    if placed_policy:
        POLICY_RC_D.write_text("#!/bin/sh\n# installed by the test mail system\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *DEBIAN_PACKAGES]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            update = subprocess.run(
                ["apt-get", "update", "-q"], env=env, capture_output=True, text=True, check=False
            )
            result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise MailSystemError(
                    "apt-get install failed:\n" + update.stderr[-2000:] + result.stderr[-4000:]
                )
    finally:
        if placed_policy:
            POLICY_RC_D.unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    log(f"mailsystem: installed {' '.join(missing)} in {elapsed:.1f} s")
    return elapsed


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out right now; all sockets stay open until every port is picked."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _allocate_ports() -> Ports:
    names = list(Ports.__dataclass_fields__)
    return Ports(**dict(zip(names, free_ports(len(names)), strict=True)))


@dataclass
class Daemon:
    name: str
    pidfile: Path
    ports: tuple[int, ...]
    start: Callable[[], None]
    log: Path


@dataclass
class MailSystem:
    """One instance of the test mail system, rooted at `root`."""

    root: Path
    ports: Ports
    timings: dict[str, float] = field(default_factory=dict)
    _pool_used: int = 0
    _held_used: int = 0

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def create(cls, root: Path | None = None) -> MailSystem:
        """A new instance in a fresh directory (world-traversable: daemons drop privileges)."""
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="mailsystem-"))
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        system = cls(root=root, ports=_allocate_ports())
        system.configure()
        return system

    @classmethod
    def load(cls, root: Path) -> MailSystem:
        """The instance previously created in `root` (ports read back from its state file)."""
        data = json.loads((root / "mailsystem.json").read_text())
        return cls(root=root, ports=Ports(**data["ports"]))

    @property
    def layout(self) -> Layout:
        return Layout(self.root)

    # --- addresses tests use --------------------------------------------------------------------

    def new_mailbox(self) -> Account:
        """A seed mailbox (address and IMAP password) that no other test of this session uses."""
        if self._pool_used >= len(POOL_ACCOUNTS):
            raise MailSystemError(f"all {len(POOL_ACCOUNTS)} pool mailboxes are in use")
        account = POOL_ACCOUNTS[self._pool_used]
        self._pool_used += 1
        return account

    def new_held_mailbox(self) -> Account:
        """A fresh seed mailbox whose mail waits in the submission queue until `release_held()`."""
        if self._held_used >= len(HELD_ACCOUNTS):
            raise MailSystemError(f"all {len(HELD_ACCOUNTS)} held mailboxes are in use")
        account = HELD_ACCOUNTS[self._held_used]
        self._held_used += 1
        return account

    def release_held(self) -> None:
        """Deliver every message on hold in the submission server's queue now."""
        config = str(self.layout.postfix_out)
        self._run(["postsuper", "-c", config, "-H", "ALL"], what="release held mail")
        self._run(["postqueue", "-c", config, "-f"], what="flush the submission queue")

    def held_count(self, address: str) -> int:
        """Messages for `address` on hold in the submission server's queue."""
        result = subprocess.run(
            ["postqueue", "-c", str(self.layout.postfix_out), "-j"],
            capture_output=True,
            text=True,
            check=True,
        )
        return sum(
            1
            for line in result.stdout.splitlines()
            if (entry := json.loads(line))["queue_name"] == "hold"
            and any(r["address"] == address for r in entry["recipients"])
        )

    def append(self, account: Account, raw: bytes, folder: str = "INBOX") -> None:
        """Put `raw` into a mailbox byte for byte (IMAP APPEND): what no MTA would carry."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with imaplib.IMAP4_SSL("127.0.0.1", self.ports.imaps, ssl_context=context) as imap:
            imap.login(account.address, account.password)
            status, detail = imap.append(folder, None, None, raw)
        if status != "OK":
            raise MailSystemError(f"APPEND to {account.address}/{folder} failed: {detail!r}")

    @property
    def ca_file(self) -> Path:
        return self.layout.ca_cert

    @property
    def authserv_id(self) -> str:
        return MX_HOSTNAME

    def describe(self) -> dict[str, object]:
        return {
            "root": str(self.root),
            "ports": asdict(self.ports),
            "ca_file": str(self.ca_file),
            "domains": {"good": GOOD_DOMAIN, "bad": BAD_DOMAIN, "seed": SEED_DOMAIN},
            "senders": {a.address: a.password for a in SENDER_ACCOUNTS},
            "seeds": {a.address: a.password for a in (*SEED_ACCOUNTS, BOUNCE_ACCOUNT)},
            "logs": str(self.layout.logs),
        }

    # --- configuration --------------------------------------------------------------------------

    def configure(self) -> None:
        """Write every config file, the CA and server certificate, and the DKIM key."""
        started = time.monotonic()
        lay = self.layout
        for directory in (
            lay.tls,
            lay.dns,
            lay.postfix_out,
            lay.postfix_in,
            lay.opendkim,
            lay.rspamd,
            lay.dovecot,
            lay.mail,
            lay.logs,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        lay.logs.chmod(0o1777)  # every daemon user writes its own log here
        self._write_tls()
        dkim_public = self._write_dkim_key()

        zones = {
            GOOD_DOMAIN: configs.zone_good(dkim_public),
            BAD_DOMAIN: configs.zone_bad(),
            SEED_DOMAIN: configs.zone_seed(),
            "127.in-addr.arpa": configs.zone_reverse(),
            configs.BROKEN_SPF_DOMAIN: configs.zone_broken_spf(),
            configs.NODKIM_DOMAIN: configs.zone_nodkim(),
            configs.DMARC_NONE_DOMAIN: configs.zone_dmarc_none(),
            configs.DNSBL_ZONE: configs.zone_dnsbl(),
        }
        for zone, text in zones.items():
            (lay.dns / f"{zone}.zone").write_text(text)
        (lay.dns / "nsd.conf").write_text(configs.nsd_conf(lay, self.ports, list(zones)))

        accounts = [*SEED_ACCOUNTS, BOUNCE_ACCOUNT, *POOL_ACCOUNTS, *HELD_ACCOUNTS]
        for config_dir, main_cf, master_cf in (
            (
                lay.postfix_out,
                configs.postfix_out_main(lay, self.ports),
                configs.postfix_out_master(self.ports),
            ),
            (
                lay.postfix_in,
                configs.postfix_in_main(lay, self.ports),
                configs.postfix_in_master(self.ports),
            ),
        ):
            (config_dir / "main.cf").write_text(main_cf)
            (config_dir / "master.cf").write_text(master_cf)
            mx = config_dir == lay.postfix_in
            (config_dir / "rcpt_access").write_text(configs.rcpt_access(mx=mx))
            (config_dir / "mailboxes").write_text(configs.postfix_mailboxes(accounts))
            for sub in ("queue", "data"):
                (config_dir / sub).mkdir(exist_ok=True)
        shutil.chown(lay.postfix_out / "data", "postfix", "postfix")
        shutil.chown(lay.postfix_in / "data", "postfix", "postfix")

        (lay.opendkim / "opendkim.conf").write_text(configs.opendkim_conf(lay, self.ports))

        (lay.rspamd / "rspamd.conf").write_text(configs.rspamd_conf(lay, self.ports))
        (lay.rspamd / "options.inc").write_text(configs.rspamd_options(lay, self.ports))
        (lay.rspamd / "tld.dat").write_text(configs.rspamd_tlds())
        for relative, text in configs.rspamd_local_d().items():
            path = lay.rspamd / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for sub in ("db", "tmp", "run"):
            (lay.rspamd / sub).mkdir(exist_ok=True)
            shutil.chown(lay.rspamd / sub, "_rspamd", "_rspamd")

        instance = f"mailsystem-{self.ports.imaps}"
        (lay.dovecot / "dovecot.conf").write_text(configs.dovecot_conf(lay, self.ports, instance))
        (lay.dovecot / "users").write_text(configs.dovecot_users([*SENDER_ACCOUNTS, *accounts]))
        (lay.dovecot / "oauth2.conf.ext").write_text(configs.dovecot_oauth2(lay))
        self._write_oauth2_key()
        (lay.dovecot / "users").chmod(0o640)
        shutil.chown(lay.dovecot / "users", "root", "dovecot")
        sieve_dir = lay.dovecot / "sieve"
        sieve_dir.mkdir(exist_ok=True)
        (sieve_dir / "before.sieve").write_text(configs.sieve_before())
        shutil.chown(lay.mail, "mail", "mail")
        lay.mail.chmod(0o700)

        (self.root / "mailsystem.json").write_text(
            json.dumps({"ports": asdict(self.ports)}, indent=2)
        )
        # The sieve script is compiled once here so LMTP (running as `mail`) only reads it.
        self._run(
            ["sievec", "-c", str(lay.dovecot / "dovecot.conf"), str(sieve_dir / "before.sieve")],
            what="compile the Sieve script",
        )
        self.timings["configure"] = time.monotonic() - started

    def _write_tls(self) -> None:
        import trustme

        lay = self.layout
        if lay.server_cert.exists():
            return
        ca = trustme.CA(organization_name="deliverability-agent test CA")
        cert = ca.issue_cert(
            SUBMISSION_HOSTNAME, MX_HOSTNAME, f"imap.{SEED_DOMAIN}", "localhost", "127.0.0.1"
        )
        ca.cert_pem.write_to_path(str(lay.ca_cert))
        cert.private_key_pem.write_to_path(str(lay.server_key))
        with lay.server_cert.open("wb") as out:
            for blob in cert.cert_chain_pems:
                out.write(blob.bytes())
        lay.server_key.chmod(0o600)

    def _write_oauth2_key(self) -> None:
        """The HS256 key Dovecot validates access tokens with; kept across restarts."""
        path = self.layout.oauth2_keys / OAUTH2_KEY_PATH
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(base64.b64encode(secrets.token_bytes(32)).decode("ascii"))
        for part in (path, *path.relative_to(self.layout.oauth2_keys).parents):
            target = self.layout.oauth2_keys / part
            shutil.chown(target, "root", "dovecot")
            target.chmod(0o640 if target == path else 0o750)

    def mint_token(
        self,
        user: str,
        *,
        lifetime: float = 3600.0,
        pad_to: int | None = None,
        forged: bool = False,
    ) -> str:
        """An OAuth 2.0 access token (a JWT, HS256) that Dovecot accepts for `user` over XOAUTH2
        and OAUTHBEARER, on IMAP and on the submission server's AUTH.

        `lifetime` <= 0 gives an expired token; `pad_to` pads the token with an extra claim to at
        least that many characters (Microsoft's tokens are 1.5-2.5 KB); `forged` signs it with a
        key Dovecot does not know.
        """
        key = base64.b64decode((self.layout.oauth2_keys / OAUTH2_KEY_PATH).read_text())
        if forged:
            key = hashlib.sha256(b"not the key: " + key).digest()
        now = int(time.time())
        claims: dict[str, object] = {
            "sub": user,
            "iat": now - 60 if lifetime > 0 else now - 3600,
            "exp": now + int(lifetime) if lifetime > 0 else now - 60,
        }
        token = _jwt_hs256(claims, key)
        if pad_to is not None and len(token) < pad_to:
            # base64url makes 4 characters of every 3 bytes of the claims.
            claims["pad"] = "x" * ((pad_to - len(token)) * 3 // 4 + 3)
            token = _jwt_hs256(claims, key)
        return token

    def _write_dkim_key(self) -> str:
        """The DKIM private key for OpenDKIM; returns the public key as published in DNS."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        lay = self.layout
        if lay.dkim_key.exists():
            key = serialization.load_pem_private_key(lay.dkim_key.read_bytes(), password=None)
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            lay.dkim_key.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                )
            )
            lay.dkim_key.chmod(0o600)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(public).decode()

    # --- processes ------------------------------------------------------------------------------

    def _daemons(self) -> list[Daemon]:
        lay, ports = self.layout, self.ports
        rspamd_vars = [
            "--var",
            f"LOCAL_CONFDIR={lay.rspamd}",
            "--var",
            f"DBDIR={lay.rspamd / 'db'}",
            "--var",
            f"RUNDIR={lay.rspamd / 'run'}",
            "--var",
            f"LOGDIR={lay.logs}",
        ]
        dovecot_conf = lay.dovecot / "dovecot.conf"
        return [
            Daemon(
                "nsd",
                lay.dns / "nsd.pid",
                (ports.dns,),
                lambda: self._spawn("nsd", ["nsd", "-d", "-c", str(lay.dns / "nsd.conf")]),
                lay.logs / "nsd.log",
            ),
            Daemon(
                "rspamd",
                lay.rspamd / "rspamd.pid",
                (ports.rspamd_milter,),
                lambda: self._spawn(
                    "rspamd",
                    [
                        "rspamd",
                        "-f",
                        "-u",
                        "_rspamd",
                        "-g",
                        "_rspamd",
                        "-c",
                        str(lay.rspamd / "rspamd.conf"),
                        *rspamd_vars,
                    ],
                ),
                lay.logs / "rspamd.log",
            ),
            Daemon(
                "opendkim",
                lay.opendkim / "opendkim.pid",
                (ports.opendkim,),
                lambda: self._spawn(
                    "opendkim", ["opendkim", "-f", "-x", str(lay.opendkim / "opendkim.conf")]
                ),
                lay.logs / "opendkim.out",
            ),
            Daemon(
                "dovecot",
                lay.dovecot / "run" / "master.pid",
                (ports.imap, ports.imaps, ports.lmtp),
                lambda: self._spawn("dovecot", ["dovecot", "-F", "-c", str(dovecot_conf)]),
                lay.logs / "dovecot.log",
            ),
            Daemon(
                "postfix-in",
                lay.postfix_in / "queue" / "pid" / "master.pid",
                (ports.mx,),
                lambda: self._run(
                    ["postfix", "-c", str(lay.postfix_in), "start"], what="start postfix-in"
                ),
                lay.logs / "postfix-in.log",
            ),
            Daemon(
                "postfix-out",
                lay.postfix_out / "queue" / "pid" / "master.pid",
                (ports.submission, ports.submissions, ports.relay),
                lambda: self._run(
                    ["postfix", "-c", str(lay.postfix_out), "start"], what="start postfix-out"
                ),
                lay.logs / "postfix-out.log",
            ),
        ]

    def _spawn(self, name: str, argv: list[str]) -> None:
        # Daemons log to files and never inherit our stdout: a pipe held open would hang callers.
        out = (self.layout.logs / f"{name}.out").open("ab")
        with out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                close_fds=True,
            )
        (self.root / f"{name}.spawned.pid").write_text(str(proc.pid))

    def _run(self, argv: list[str], *, what: str) -> None:
        result = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise MailSystemError(
                f"could not {what}: {' '.join(argv)}\n{result.stdout}{result.stderr}"
            )

    def start(self) -> None:
        """Start every daemon and wait until each one listens; raises with the daemon's log tail."""
        ensure_installed()
        started = time.monotonic()
        for daemon in self._daemons():
            if self._pid(daemon) is not None:
                continue
            t0 = time.monotonic()
            daemon.start()
            self._wait_listening(daemon)
            self.timings[f"start {daemon.name}"] = time.monotonic() - t0
        self._wait_dns()
        self.timings["start"] = time.monotonic() - started

    def _wait_listening(self, daemon: Daemon) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        pending = set(daemon.ports)
        while pending:
            for port in sorted(pending):
                with socket.socket() as sock:
                    sock.settimeout(1.0)
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        pending.discard(port)
            if not pending:
                break
            if time.monotonic() > deadline or self._died(daemon):
                raise MailSystemError(
                    f"{daemon.name} did not listen on {sorted(pending)} within "
                    f"{START_TIMEOUT:.0f} s; log tail:\n{self.log_tail(daemon.name)}"
                )
            time.sleep(0.05)  # no event to await: a daemon's bind is only visible by polling

    def _wait_dns(self) -> None:
        import dns.message
        import dns.query

        query = dns.message.make_query(GOOD_DOMAIN, "TXT")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                answer = dns.query.udp(query, "127.0.0.1", port=self.ports.dns, timeout=1.0)
                if answer.answer:
                    return
            except (OSError, dns.exception.Timeout):
                pass
            if time.monotonic() > deadline:
                raise MailSystemError(f"nsd serves no zone; log tail:\n{self.log_tail('nsd')}")
            time.sleep(0.05)

    def _died(self, daemon: Daemon) -> bool:
        spawned = self.root / f"{daemon.name}.spawned.pid"
        if not spawned.exists():
            return False
        pid = int(spawned.read_text())
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return not _alive(pid)
        return waited == pid

    def _pid(self, daemon: Daemon) -> int | None:
        for path in (daemon.pidfile, self.root / f"{daemon.name}.spawned.pid"):
            try:
                pid = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if _alive(pid):
                return pid
        return None

    def stop(self) -> None:
        """Stop every daemon by PID: SIGTERM to each process group at once, SIGKILL after a grace.

        Each daemon leads its own process group (we start it in a new session, Postfix's master
        calls setsid), so signalling the group also ends workers that a dying master leaves behind.
        """
        started = time.monotonic()
        pids: list[int] = []
        for daemon in self._daemons():
            pid = self._pid(daemon)
            if pid is not None:
                pids.append(pid)
                _signal_group(pid, signal.SIGTERM)
            for path in (daemon.pidfile, self.root / f"{daemon.name}.spawned.pid"):
                path.unlink(missing_ok=True)
        _wait_gone(pids, STOP_GRACE)
        for pid in pids:
            _signal_group(pid, signal.SIGKILL)
        if not _wait_gone(pids, STOP_TIMEOUT):
            raise MailSystemError(f"daemons did not exit: {[p for p in pids if _alive(p)]}")
        self.timings["stop"] = time.monotonic() - started

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, name: str, lines: int = 40) -> str:
        chunks = []
        for path in sorted(self.layout.logs.glob(f"{name}*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            chunks.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(chunks) or "(no log)"

    def timing_report(self) -> str:
        return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.timings.items())

    @contextmanager
    def running(self) -> Iterator[MailSystem]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


def _jwt_hs256(claims: dict[str, object], key: bytes) -> str:
    """A compact JWS (RFC 7515) with HMAC SHA-256: what Dovecot's local validation checks."""

    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(key, f"{header}.{body}".encode("ascii"), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(signature)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        with suppress(ProcessLookupError):
            os.kill(pid, signum)


def _reap(pid: int) -> bool:
    """True when pid is gone (reaping it if it is our child)."""
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return True
    except ChildProcessError:
        pass
    return not _alive(pid)


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if all(_reap(pid) for pid in pids):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)  # processes we are not the parent of can only be polled
