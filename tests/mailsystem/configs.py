"""Configuration files of the test mail system, rendered from the ports and paths of one instance.

Each function returns the text of one file. The files only ever live in the instance's temporary
directory: nothing here writes under /etc.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from tests.mailsystem.topology import (
    AUTHSERV_ID,
    BAD_DOMAIN,
    DKIM_SELECTOR,
    GOOD_DOMAIN,
    HELD_ACCOUNTS,
    MX_HOSTNAME,
    MX_ONLY_RCPT_CODES,
    RCPT_CODES,
    SEED_DOMAIN,
    SPAM_SUBJECT_TOKEN,
    SUBMISSION_HOSTNAME,
    Account,
)

__all__ = ["Layout", "Ports"]


@dataclass(frozen=True)
class Ports:
    """Every listening port of one instance; all bound on 127.0.0.1."""

    dns: int
    submission: int  # sending Postfix: STARTTLS + AUTH
    submissions: int  # sending Postfix: implicit TLS + AUTH
    relay: int  # sending Postfix: plain port 25-style, no AUTH, for fault tests
    mx: int  # receiving Postfix MX (port 25 role), opportunistic STARTTLS
    opendkim: int
    rspamd_milter: int
    rspamd_controller: int
    imap: int  # plain IMAP (+STARTTLS)
    imaps: int  # implicit TLS
    lmtp: int


@dataclass(frozen=True)
class Layout:
    """Paths of one instance: everything under root."""

    root: Path

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def dns(self) -> Path:
        return self.root / "nsd"

    @property
    def postfix_out(self) -> Path:
        return self.root / "postfix-out"

    @property
    def postfix_in(self) -> Path:
        return self.root / "postfix-in"

    @property
    def opendkim(self) -> Path:
        return self.root / "opendkim"

    @property
    def rspamd(self) -> Path:
        return self.root / "rspamd"

    @property
    def dovecot(self) -> Path:
        return self.root / "dovecot"

    @property
    def mail(self) -> Path:
        return self.root / "mail"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def ca_cert(self) -> Path:
        return self.tls / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.tls / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.tls / "server.key"

    @property
    def dkim_key(self) -> Path:
        return self.opendkim / f"{GOOD_DOMAIN}.{DKIM_SELECTOR}.key"

    @property
    def auth_socket(self) -> Path:
        return self.dovecot / "run" / "auth-postfix"

    @property
    def oauth2_keys(self) -> Path:
        """Dovecot's dict of JWT validation keys (the HS256 key that `mint_token` signs with)."""
        return self.dovecot / "oauth2-keys"


def _dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# --- DNS (NSD) ------------------------------------------------------------------------------------


def nsd_conf(layout: Layout, ports: Ports, zones: list[str]) -> str:
    zone_blocks = "".join(
        f"zone:\n    name: {zone}\n    zonefile: {layout.dns / (zone + '.zone')}\n"
        for zone in zones
    )
    return (
        _dedent(f"""
        server:
            ip-address: 127.0.0.1@{ports.dns}
            port: {ports.dns}
            do-ip6: no
            username: ""
            chroot: ""
            zonesdir: "{layout.dns}"
            database: ""
            zonelistfile: "{layout.dns / "zone.list"}"
            xfrdfile: "{layout.dns / "xfrd.state"}"
            xfrdir: "{layout.dns}"
            pidfile: "{layout.dns / "nsd.pid"}"
            logfile: "{layout.logs / "nsd.log"}"
            server-count: 1
            verbosity: 1
            hide-version: yes
        remote-control:
            control-enable: no
        """)
        + zone_blocks
    )


def _soa(origin: str) -> str:
    return _dedent(f"""
        $ORIGIN {origin}.
        $TTL 60
        @ IN SOA ns.{origin}. hostmaster.{origin}. ( 1 3600 600 86400 60 )
        @ IN NS ns.{origin}.
        ns IN A 127.0.0.1
        """)


def _txt(value: str) -> str:
    # TXT strings are limited to 255 bytes each; long DKIM keys are split into several strings.
    chunks = [value[i : i + 250] for i in range(0, len(value), 250)]
    return "( " + " ".join(f'"{chunk}"' for chunk in chunks) + " )"


def zone_good(dkim_public_key_b64: str) -> str:
    return _soa(GOOD_DOMAIN) + _dedent(f"""
        @ IN MX 10 {SUBMISSION_HOSTNAME}.
        @ IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
        mail IN A 127.0.0.1
        {DKIM_SELECTOR}._domainkey IN TXT {_txt("v=DKIM1; k=rsa; p=" + dkim_public_key_b64)}
        _dmarc IN TXT "v=DMARC1; p=reject; adkim=r; aspf=r; rua=mailto:dmarc@{GOOD_DOMAIN}"
        _mta-sts IN TXT "v=STSv1; id=20260101T000000"
        _smtp._tls IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@{GOOD_DOMAIN}"
        """)


def zone_bad() -> str:
    # Misconfigured on purpose: SPF does not list the sending IP, no DKIM key, DMARC quarantine.
    return _soa(BAD_DOMAIN) + _dedent(f"""
        @ IN MX 10 mail.{BAD_DOMAIN}.
        @ IN TXT "v=spf1 ip4:192.0.2.1 -all"
        mail IN A 127.0.0.1
        _dmarc IN TXT "v=DMARC1; p=quarantine; adkim=s; aspf=s"
        """)


def zone_seed() -> str:
    return _soa(SEED_DOMAIN) + _dedent(f"""
        @ IN MX 10 {MX_HOSTNAME}.
        @ IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
        mx IN A 127.0.0.1
        imap IN A 127.0.0.1
        _dmarc IN TXT "v=DMARC1; p=none"
        """)


def zone_reverse() -> str:
    # 127.0.0.4 has a PTR whose name does not resolve back to it (no FCrDNS).
    return _soa("127.in-addr.arpa") + _dedent(f"""
        1.0.0 IN PTR {SUBMISSION_HOSTNAME}.
        4.0.0 IN PTR mail.{BAD_DOMAIN}.
        """)


# Zones for the DNS checks' tests (agent.dns.checks), each wrong in one way.
BROKEN_SPF_DOMAIN = "broken-spf.test"  # SPF needing 12 DNS lookups over its include tree
NODKIM_DOMAIN = "nodkim.test"  # selector sel1 missing, selector "revoked" revoked
DMARC_NONE_DOMAIN = "dmarc-none.test"  # DMARC p=none without reports
DNSBL_ZONE = "dnsbl.test"  # lists 127.0.0.2 and bad.test; answers an error code for 127.0.0.3


def zone_broken_spf() -> str:
    hosts = "".join(f"h{i} IN A 192.0.2.{i}\n" for i in range(1, 9))
    return (
        _soa(BROKEN_SPF_DOMAIN)
        + _dedent(f"""
        @ IN MX 10 mail.{BROKEN_SPF_DOMAIN}.
        @ IN TXT "v=spf1 include:_spf1.{BROKEN_SPF_DOMAIN} include:_spf2.{BROKEN_SPF_DOMAIN} a mx -all"
        mail IN A 127.0.0.1
        _spf1 IN TXT "v=spf1 a:h1.{BROKEN_SPF_DOMAIN} a:h2.{BROKEN_SPF_DOMAIN} a:h3.{BROKEN_SPF_DOMAIN} a:h4.{BROKEN_SPF_DOMAIN} ~all"
        _spf2 IN TXT "v=spf1 a:h5.{BROKEN_SPF_DOMAIN} a:h6.{BROKEN_SPF_DOMAIN} a:h7.{BROKEN_SPF_DOMAIN} a:h8.{BROKEN_SPF_DOMAIN} ~all"
        """)
        + hosts
    )


def zone_nodkim() -> str:
    return _soa(NODKIM_DOMAIN) + _dedent(f"""
        @ IN MX 10 mail.{NODKIM_DOMAIN}.
        @ IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
        mail IN A 127.0.0.1
        revoked._domainkey IN TXT "v=DKIM1; k=rsa; p="
        _dmarc IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@{NODKIM_DOMAIN}"
        """)


def zone_dmarc_none() -> str:
    return _soa(DMARC_NONE_DOMAIN) + _dedent(f"""
        @ IN MX 10 mail.{DMARC_NONE_DOMAIN}.
        @ IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
        mail IN A 127.0.0.1
        _dmarc IN TXT "v=DMARC1; p=none"
        """)


def zone_dnsbl() -> str:
    # RFC 5782: 127.0.0.2 is every blocklist's test entry; 127.255.255.254 is Spamhaus' answer
    # to a query through a public resolver, an error and not a listing.
    return _soa(DNSBL_ZONE) + _dedent(f"""
        2.0.0.127 IN A 127.0.0.2
        2.0.0.127 IN TXT "Listed for testing (RFC 5782 test entry)"
        3.0.0.127 IN A 127.255.255.254
        {BAD_DOMAIN} IN A 127.0.1.2
        """)


# --- Postfix --------------------------------------------------------------------------------------


def _postfix_common(*, config_dir: Path, tls: Path, logs: Path, name: str, hostname: str) -> str:
    return _dedent(f"""
        compatibility_level = 3.6
        queue_directory = {config_dir / "queue"}
        data_directory = {config_dir / "data"}
        daemon_directory = /usr/lib/postfix/sbin
        command_directory = /usr/sbin
        shlib_directory = /usr/lib/postfix
        meta_directory = /etc/postfix
        mail_owner = postfix
        setgid_group = postdrop
        syslog_name = {name}
        maillog_file = {logs / (name + ".log")}
        maillog_file_prefixes = {logs}
        myhostname = {hostname}
        mydomain = {hostname.split(".", 1)[1]}
        myorigin = $myhostname
        mydestination =
        local_recipient_maps =
        local_transport = error:local delivery is disabled
        alias_maps =
        alias_database =
        inet_interfaces = 127.0.0.1
        inet_protocols = ipv4
        biff = no
        append_dot_mydomain = no
        readme_directory = no
        smtputf8_enable = no
        # The DNS of the test domains is our NSD on a high port; Postfix never resolves them.
        smtp_dns_support_level = disabled
        smtp_host_lookup = native
        lmtp_host_lookup = native
        smtpd_peername_lookup = no
        # Fast turnaround in tests: retry deferred mail quickly and give up quickly.
        queue_run_delay = 5s
        minimal_backoff_time = 5s
        maximal_backoff_time = 10s
        maximal_queue_lifetime = 1h
        bounce_queue_lifetime = 1h
        # Mail deferred by the MX gets a delay DSN at its second attempt (soft bounce tests).
        delay_warning_time = 1s
        # user+detail@ is delivered to user@ (VERP bounce addresses).
        recipient_delimiter = +
        smtpd_tls_cert_file = {tls / "server.pem"}
        smtpd_tls_key_file = {tls / "server.key"}
        smtpd_tls_security_level = may
        smtpd_tls_loglevel = 0
        smtp_tls_security_level = may
        smtp_tls_CAfile = {tls / "ca.pem"}
        """)


def rcpt_access(*, mx: bool) -> str:
    """Recipients that answer a fixed code at RCPT (both instances; some at the MX only), and on
    the submission server the held mailboxes."""
    lines = [f"{address} {reply}\n" for address, reply in RCPT_CODES.items()]
    if mx:
        lines += [f"{address} {reply}\n" for address, reply in MX_ONLY_RCPT_CODES.items()]
    else:
        lines += [f"{account.address} HOLD\n" for account in HELD_ACCOUNTS]
    return "".join(lines)


def postfix_out_main(layout: Layout, ports: Ports) -> str:
    config_dir = layout.postfix_out
    return _postfix_common(
        config_dir=config_dir,
        tls=layout.tls,
        logs=layout.logs,
        name="postfix-out",
        hostname=SUBMISSION_HOSTNAME,
    ) + _dedent(f"""
        relayhost = [127.0.0.1]:{ports.mx}
        mynetworks = 127.0.0.0/8
        smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
        smtpd_sasl_type = dovecot
        smtpd_sasl_path = {layout.auth_socket}
        smtpd_sasl_auth_enable = no
        smtpd_recipient_restrictions = check_recipient_access texthash:{config_dir / "rcpt_access"}
        # DKIM signing of the good domain; OpenDKIM picks the domain from the header From.
        smtpd_milters = inet:127.0.0.1:{ports.opendkim}
        non_smtpd_milters = $smtpd_milters
        milter_default_action = tempfail
        milter_protocol = 6
        """)


def postfix_out_master(ports: Ports) -> str:
    return (
        _dedent(f"""
        127.0.0.1:{ports.submission} inet n - n - - smtpd
          -o syslog_name=postfix-out/submission
          -o smtpd_tls_security_level=encrypt
          -o smtpd_sasl_auth_enable=yes
          -o smtpd_tls_auth_only=yes
          -o smtpd_client_restrictions=permit_sasl_authenticated,reject
          -o smtpd_recipient_restrictions=check_recipient_access,texthash:$config_directory/rcpt_access,permit_sasl_authenticated,reject
        127.0.0.1:{ports.submissions} inet n - n - - smtpd
          -o syslog_name=postfix-out/submissions
          -o smtpd_tls_wrappermode=yes
          -o smtpd_sasl_auth_enable=yes
          -o smtpd_client_restrictions=permit_sasl_authenticated,reject
          -o smtpd_recipient_restrictions=check_recipient_access,texthash:$config_directory/rcpt_access,permit_sasl_authenticated,reject
        127.0.0.1:{ports.relay} inet n - n - - smtpd
          -o syslog_name=postfix-out/relay
        """)
        + _master_services()
    )


def postfix_in_main(layout: Layout, ports: Ports) -> str:
    config_dir = layout.postfix_in
    return _postfix_common(
        config_dir=config_dir,
        tls=layout.tls,
        logs=layout.logs,
        name="postfix-in",
        hostname=MX_HOSTNAME,
    ) + _dedent(f"""
        # The MX accepts mail for the seed domain only and hands it to Dovecot over LMTP.
        mynetworks =
        virtual_mailbox_domains = {SEED_DOMAIN}
        virtual_mailbox_maps = texthash:{config_dir / "mailboxes"}
        virtual_transport = lmtp:inet:127.0.0.1:{ports.lmtp}
        smtpd_relay_restrictions = reject_unauth_destination
        smtpd_recipient_restrictions = check_recipient_access texthash:{config_dir / "rcpt_access"}
        unknown_virtual_mailbox_reject_code = 550
        # rspamd checks SPF, DKIM and DMARC and writes Authentication-Results.
        smtpd_milters = inet:127.0.0.1:{ports.rspamd_milter}
        non_smtpd_milters = $smtpd_milters
        milter_default_action = tempfail
        milter_protocol = 6
        milter_mail_macros = i {{mail_addr}} {{client_addr}} {{client_name}} {{auth_authen}}
        """)


def postfix_in_master(ports: Ports) -> str:
    return (
        _dedent(f"""
        127.0.0.1:{ports.mx} inet n - n - - smtpd
        """)
        + _master_services()
    )


def _master_services() -> str:
    # Debian's defaults minus chroot (our queue lives in a temp dir) and local delivery.
    return _dedent("""
        pickup    unix  n       -       n       60      1       pickup
        cleanup   unix  n       -       n       -       0       cleanup
        qmgr      unix  n       -       n       300     1       qmgr
        tlsmgr    unix  -       -       n       1000?   1       tlsmgr
        rewrite   unix  -       -       n       -       -       trivial-rewrite
        bounce    unix  -       -       n       -       0       bounce
        defer     unix  -       -       n       -       0       bounce
        trace     unix  -       -       n       -       0       bounce
        verify    unix  -       -       n       -       1       verify
        flush     unix  n       -       n       1000?   0       flush
        proxymap  unix  -       -       n       -       -       proxymap
        proxywrite unix -       -       n       -       1       proxymap
        smtp      unix  -       -       n       -       -       smtp
        relay     unix  -       -       n       -       -       smtp
        showq     unix  n       -       n       -       -       showq
        error     unix  -       -       n       -       -       error
        retry     unix  -       -       n       -       -       error
        discard   unix  -       -       n       -       -       discard
        lmtp      unix  -       -       n       -       -       lmtp
        anvil     unix  -       -       n       -       1       anvil
        scache    unix  -       -       n       -       1       scache
        postlog   unix-dgram n  -       n       -       1       postlogd
        """)


def postfix_mailboxes(accounts: list[Account]) -> str:
    return "".join(f"{account.address} {account.address}\n" for account in accounts)


# --- OpenDKIM (signs the good domain on the sending side) -----------------------------------------


def opendkim_conf(layout: Layout, ports: Ports) -> str:
    return _dedent(f"""
        Syslog no
        Mode s
        Domain {GOOD_DOMAIN}
        Selector {DKIM_SELECTOR}
        KeyFile {layout.dkim_key}
        Socket inet:{ports.opendkim}@127.0.0.1
        PidFile {layout.opendkim / "opendkim.pid"}
        Canonicalization relaxed/relaxed
        InternalHosts 127.0.0.0/8
        RequireSafeKeys no
        UMask 022
        """)


# --- rspamd (checks on the receiving side) --------------------------------------------------------


def rspamd_conf(layout: Layout, ports: Ports) -> str:
    # Our own top-level file: stock modules and scores from /etc/rspamd, our workers and overrides.
    return _dedent(f"""
        .include "$CONFDIR/common.conf"

        options {{
            pidfile = "{layout.rspamd / "rspamd.pid"}";
            .include "$CONFDIR/options.inc"
            .include(priority=10) "{layout.rspamd / "options.inc"}"
        }}

        logging {{
            type = "file";
            filename = "{layout.logs / "rspamd.log"}";
            level = "info";
        }}

        worker "rspamd_proxy" {{
            bind_socket = "127.0.0.1:{ports.rspamd_milter}";
            milter = yes;
            timeout = 120s;
            self_scan = yes;
            count = 1;
            upstream "local" {{
                default = yes;
                self_scan = yes;
            }}
        }}

        worker "controller" {{
            bind_socket = "127.0.0.1:{ports.rspamd_controller}";
            count = 1;
        }}
        """)


def rspamd_options(layout: Layout, ports: Ports) -> str:
    return _dedent(f"""
        dns {{
            nameserver = ["127.0.0.1:{ports.dns}"];
            timeout = 1s;
            retransmits = 2;
        }}
        # Every client here is 127.0.0.1: nothing may count as a trusted local network.
        local_addrs = [];
        check_local = true;
        check_authed = true;
        # PCRE instead of hyperscan: no 13 s database compile on a fresh start.
        disable_hyperscan = true;
        hs_cache_dir = "{layout.rspamd / "db"}/";
        # The public suffix list takes rspamd ~15 s to compile at every fresh start; the test
        # domains need only a few suffixes.
        url_tld = "{layout.rspamd / "tld.dat"}";
        tempdir = "{layout.rspamd / "tmp"}";
        """)


def rspamd_tlds() -> str:
    return "".join(f"{suffix}\n" for suffix in ("test", "com", "org", "net", "example", "invalid"))


def rspamd_local_d() -> dict[str, str]:
    """Files for $LOCAL_CONFDIR/local.d and override.d, keyed by relative path."""
    disabled = [
        "fuzzy_check",
        "rbl",
        "surbl",
        "emails",
        "asn",
        "phishing",
        "greylist",
        "ratelimit",
        "neural",
        "dcc",
        "mx_check",
        "url_redirector",
        "rspamd_update",
        "reputation",
        "replies",
        "history_redis",
        "bimi",
        "dkim_signing",
        "arc",
        "spamassassin",
        "external_services",
        "antivirus",
        "metric_exporter",
        "clickhouse",
        "elastic",
    ]
    files = {f"override.d/{module}.conf": "enabled = false;\n" for module in disabled}
    files["override.d/actions.conf"] = _dedent("""
        reject = 50;
        add_header = 6;
        greylist = null;
        "rewrite subject" = null;
        """)
    files["local.d/milter_headers.conf"] = _dedent("""
        use = ["authentication-results", "x-spam-status", "x-spamd-result"];
        skip_local = false;
        skip_authenticated = false;
        extended_spam_headers = false;
        """)
    files["local.d/dmarc.conf"] = _dedent("""
        actions {
            quarantine = "add_header";
            reject = "add_header";
        }
        """)
    files["local.d/spf.conf"] = "check_local = true;\ncheck_authed = true;\n"
    files["local.d/dkim.conf"] = "check_local = true;\ncheck_authed = true;\n"
    files["local.d/multimap.conf"] = _dedent(f"""
        TEST_SPAM_TRIGGER {{
            type = "header";
            header = "Subject";
            map = ["/.*{SPAM_SUBJECT_TOKEN}.*/"];
            regexp = true;
            score = 20.0;
            description = "Test spam trigger token in the Subject";
        }}
        """)
    return files


# --- Dovecot --------------------------------------------------------------------------------------


def dovecot_conf(layout: Layout, ports: Ports, instance: str) -> str:
    d = layout.dovecot
    return _dedent(f"""
        instance_name = {instance}
        base_dir = {d / "run"}
        state_dir = {d / "state"}
        log_path = {layout.logs / "dovecot.log"}
        info_log_path = {layout.logs / "dovecot.log"}
        protocols = imap lmtp
        listen = 127.0.0.1
        ssl = yes
        ssl_cert = <{layout.server_cert}
        ssl_key = <{layout.server_key}
        ssl_min_protocol = TLSv1.2
        disable_plaintext_auth = no
        auth_mechanisms = plain login xoauth2 oauthbearer
        auth_failure_delay = 0
        login_trusted_networks =
        first_valid_uid = 1
        mail_uid = mail
        mail_gid = mail
        mail_location = maildir:{layout.mail}/%d/%n/Maildir
        default_login_user = dovenull
        default_internal_user = dovecot
        mail_plugins = $mail_plugins
        imap_idle_notify_interval = 2 mins
        auth_verbose = yes

        # Passwords and OAuth 2.0 bearer tokens side by side: each passdb serves its mechanisms.
        passdb {{
          driver = passwd-file
          mechanisms = plain login
          args = scheme=PLAIN username_format=%u {d / "users"}
        }}
        passdb {{
          driver = oauth2
          mechanisms = xoauth2 oauthbearer
          args = {d / "oauth2.conf.ext"}
        }}
        # The users file, not a static userdb: a static one asks the passdbs whether a user exists,
        # and with a mechanisms filter on each passdb that lookup (LMTP's) would find none.
        userdb {{
          driver = passwd-file
          args = username_format=%u {d / "users"}
          override_fields = uid=mail gid=mail home={layout.mail}/%d/%n
        }}

        namespace inbox {{
          inbox = yes
          separator = /
          mailbox Junk {{
            special_use = \\Junk
            auto = subscribe
          }}
          mailbox Trash {{
            special_use = \\Trash
            auto = subscribe
          }}
          mailbox Sent {{
            special_use = \\Sent
            auto = subscribe
          }}
          mailbox Archive {{
            special_use = \\Archive
            auto = subscribe
          }}
        }}

        service imap-login {{
          inet_listener imap {{
            address = 127.0.0.1
            port = {ports.imap}
          }}
          inet_listener imaps {{
            address = 127.0.0.1
            port = {ports.imaps}
            ssl = yes
          }}
        }}
        service lmtp {{
          inet_listener lmtp {{
            address = 127.0.0.1
            port = {ports.lmtp}
          }}
        }}
        service auth {{
          unix_listener auth-postfix {{
            mode = 0666
          }}
        }}
        # Tests try wrong passwords on purpose: no per-IP penalty slowing every later login.
        service anvil {{
          unix_listener anvil-auth-penalty {{
            mode = 0
          }}
        }}
        service stats {{
          unix_listener stats-reader {{
            mode = 0600
          }}
          unix_listener stats-writer {{
            mode = 0666
          }}
        }}

        protocol lmtp {{
          mail_plugins = $mail_plugins sieve
          postmaster_address = postmaster@{SEED_DOMAIN}
          lmtp_save_to_detail_mailbox = no
          recipient_delimiter = +
        }}

        plugin {{
          sieve_before = {d / "sieve" / "before.sieve"}
          sieve = file:~/sieve;active=~/.dovecot.sieve
        }}
        """)


def dovecot_oauth2(layout: Layout) -> str:
    # Local validation of JWT access tokens (Dovecot >= 2.3.16): the HS256 key is looked up in a
    # dict under shared/<azp or "default">/<alg>/<kid or "default">; `sub` must be the login name.
    return _dedent(f"""
        introspection_mode = local
        local_validation_key_dict = fs:posix:prefix={layout.oauth2_keys}/
        username_attribute = sub
        """)


def dovecot_users(accounts: list[Account]) -> str:
    # nodelay: wrong-password tests must not slow down every later login from 127.0.0.1.
    return "".join(
        f"{account.address}:{{PLAIN}}{account.password}::::::nodelay=yes\n" for account in accounts
    )


def sieve_before() -> str:
    # rspamd's add_header action (spam score, or a DMARC quarantine/reject policy) files into Junk.
    return (
        _dedent("""
        require ["fileinto"];
        if header :is "X-Spam" "Yes" {
          fileinto "Junk";
          stop;
        }
        if header :contains "X-Spam-Status" "Yes" {
          fileinto "Junk";
          stop;
        }
        """)
        + f"# rspamd on {AUTHSERV_ID} sets these headers\n"
    )
