"""Deliverability overview: every route and seed mailbox at a glance, filtered by route and mailbox.

Ratios come from the recording rules in deploy/prometheus/recording.rules.yml (1h windows: probes
are sparse); event counts over time use `increase` over Grafana's `$__rate_interval`. Dashed red
lines are the alert thresholds, read from the same `deliverability:*:threshold` series the alerts
use. The provider variable narrows the mailbox variable (deliverability_mailbox_info), so it
filters every per-mailbox panel; a seed mailbox lives at one provider, so the per-mailbox panels
are per-provider ones. The DNS
and reputation row shows the agent's DNS checks (docs/dns-checks.md), which are per domain and IP,
not per route.
"""

from __future__ import annotations

from grafanalib.core import Dashboard, Templating, Time

from agent.dns.records import DKIM_MIN_RSA_BITS, SPF_LOOKUP_LIMIT, DnsCheck
from dashboards.common import (
    ACCEPTANCE_RATIO,
    BOUNCE_RATIO_1H,
    MAILBOX,
    PAIR,
    ROUTE,
    SMTP_5XX_BASELINE_LIMIT,
    SMTP_5XX_RATIO_15M,
    SMTP_REPLIES_BY_STAGE_CLASS,
    Grid,
    datasource_variable,
    heatmap,
    label_variable,
    limit,
    provider_and_mailbox_variables,
    stat,
    table,
    target,
    threshold,
    timeseries,
)

# The DNS checks DeliverabilityDnsRecordBroken alerts on (deploy/prometheus/alerts.rules.yml).
_DELIVERY_CHECKS = (
    DnsCheck.SPF,
    DnsCheck.SPF_LOOKUPS,
    DnsCheck.SPF_AUTHORIZED,
    DnsCheck.DKIM,
    DnsCheck.DMARC,
    DnsCheck.MX,
    DnsCheck.FCRDNS,
)
_DELIVERY_CHECKS_TEXT = ", ".join(check.value for check in _DELIVERY_CHECKS)
_CHECK_MATCHER = f'check=~"{"|".join(check.value for check in _DELIVERY_CHECKS)}"'
_DELIVERY_CHECKS_OK = f"min by (target, check) (deliverability_dns_check_ok{{{_CHECK_MATCHER}}})"
_FAILING_DELIVERY_CHECKS = f"{_DELIVERY_CHECKS_OK} == 0"

grid = Grid()

# --- at a glance ----------------------------------------------------------------------------------
grid.row("At a glance (last hour)")
grid.add(
    stat(
        "Acceptance rate",
        shows="Share of probes (selected routes and mailboxes) that the SMTP servers accepted "
        "over the last hour; the rest were rejected (5xx), deferred (4xx) or failed (error).",
        when_bad="Open the SMTP row below: which route, which stage, which enhanced code. A drop "
        "to 0 on one route is usually credentials, TLS or a block list.",
        targets=[target(ACCEPTANCE_RATIO)],
        unit="percentunit",
    ),
    w=4,
    h=4,
)
grid.add(
    stat(
        "Inbox placement",
        shows="Share of accepted probes that reached the inbox over the last hour.",
        when_bad="See which route/mailbox pair drops in the placement panels and follow the "
        "runbook of the inbox placement alert.",
        targets=[
            target(
                "sum(route_mailbox_outcome:deliverability_probes:rate1h"
                f'{{{PAIR}, outcome="inbox"}})'
                f" / sum(route_mailbox:deliverability_probes_accepted:rate1h{{{PAIR}}})"
            )
        ],
        unit="percentunit",
        alerts=["DeliverabilityInboxPlacementLow"],
    ),
    w=4,
    h=4,
)
grid.add(
    stat(
        "Spam placement",
        shows="Share of accepted probes filed as spam over the last hour.",
        when_bad="Check SPF/DKIM/DMARC below, then content and sending reputation; follow the "
        "spam placement runbook.",
        targets=[
            target(
                "sum(route_mailbox_outcome:deliverability_probes:rate1h"
                f'{{{PAIR}, outcome="spam"}})'
                f" / sum(route_mailbox:deliverability_probes_accepted:rate1h{{{PAIR}}})"
            )
        ],
        unit="percentunit",
        alerts=["DeliverabilitySpamPlacementHigh"],
    ),
    w=4,
    h=4,
)
grid.add(
    stat(
        "Bounce rate",
        shows="Bounces per probe sent through the selected routes over the last hour.",
        when_bad="See bounces by type and source below; follow the bounce rate runbook.",
        targets=[
            target(
                f"sum(route:deliverability_bounces:rate1h{{{ROUTE}}})"
                f" / sum(route:deliverability_probes_sent:rate1h{{{ROUTE}}})"
            )
        ],
        unit="percentunit",
        alerts=["DeliverabilityBounceRateHigh"],
    ),
    w=4,
    h=4,
)
grid.add(
    stat(
        "Delivery latency p95",
        shows="95th percentile of the time from the server accepting a probe to its arrival in "
        "the seed mailbox, over the last hour, across the selected seed mailboxes (the latency "
        "buckets are per mailbox, all routes together).",
        when_bad="Find the slow mailbox in the latency panels and the slow route in the mean "
        "latency per route; queues at the route or greylisting at the receiver are the usual "
        "causes.",
        targets=[
            target(
                "histogram_quantile(0.95, sum by (le) ("
                f"mailbox_le:deliverability_delivery_seconds_bucket:rate1h{{{MAILBOX}}}))"
            )
        ],
        unit="s",
        alerts=["DeliverabilityDeliveryLatencyHigh"],
    ),
    w=4,
    h=4,
)
grid.add(
    stat(
        "Probes in flight now",
        shows="Probes accepted and not yet found nor past their deadline, right now.",
        when_bad="A number that only grows means probes are not being found: check IMAP health "
        "below and the probes missing runbook.",
        targets=[target(f"sum(deliverability_probes_in_flight{{{PAIR}}})")],
    ),
    w=4,
    h=4,
)

# --- placement ------------------------------------------------------------------------------------
grid.row("Placement")
grid.add(
    timeseries(
        "Acceptance rate per route",
        shows="Share of each route's probes accepted by the server (not rejected, deferred or "
        "failed), over a sliding hour.",
        when_bad="Drill into the route (Deliverability route dashboard) to see the failing "
        "stage and reply codes.",
        targets=[
            target(
                f"sum by (route) (route_mailbox:deliverability_probes_accepted:rate1h{{{PAIR}}})"
                f" / sum by (route) (route_mailbox:deliverability_probes:rate1h{{{PAIR}}})",
                "{{route}}",
            )
        ],
        ratio=True,
    )
)
grid.add(
    timeseries(
        "Probes by outcome",
        shows="Final outcomes of probes over time (inbox, spam, other, missing, rejected, "
        "deferred, error, ...), stacked.",
        when_bad="Anything but inbox growing: the outcome names the next panel to look at.",
        targets=[
            target(
                f"sum by (outcome) (increase(deliverability_probes_total{{{PAIR}}}"
                "[$__rate_interval]))",
                "{{outcome}}",
            )
        ],
        stacked=True,
        bars=True,
    )
)
grid.add(
    timeseries(
        "Inbox placement per route and mailbox",
        shows="Share of accepted probes that reached the inbox, per route and seed mailbox, "
        "over a sliding hour. The dashed line is the alert threshold.",
        when_bad="One mailbox low on all routes: that provider filters you (content, "
        "reputation). One route low everywhere: that route's IP/domain. Follow the runbook.",
        targets=[
            target(
                "route_mailbox_outcome:deliverability_placement:ratio_rate1h"
                f'{{{PAIR}, outcome="inbox"}}',
                "{{route}} → {{mailbox}}",
            ),
            threshold("inbox_placement_ratio_min"),
        ],
        ratio=True,
        alerts=["DeliverabilityInboxPlacementLow"],
    )
)
grid.add(
    timeseries(
        "Spam placement per route and mailbox",
        shows="Share of accepted probes filed as spam, per route and seed mailbox, over a "
        "sliding hour. The dashed line is the alert threshold.",
        when_bad="Check the authentication panels first (a DMARC fail is the usual cause), then "
        "content and reputation. Follow the runbook.",
        targets=[
            target(
                "route_mailbox_outcome:deliverability_placement:ratio_rate1h"
                f'{{{PAIR}, outcome="spam"}}',
                "{{route}} → {{mailbox}}",
            ),
            threshold("spam_placement_ratio_max"),
        ],
        ratio=True,
        alerts=["DeliverabilitySpamPlacementHigh"],
    )
)
grid.add(
    timeseries(
        "Missing probes per route and mailbox",
        shows="Share of accepted probes not seen in the seed mailbox by their deadline, per "
        "route and mailbox, over a sliding hour. The dashed line is the alert threshold.",
        when_bad="Check IMAP health below (a watcher that cannot log in finds nothing), then "
        "late probes (a deadline too short), then the receiver silently dropping mail.",
        targets=[
            target(
                "route_mailbox_outcome:deliverability_placement:ratio_rate1h"
                f'{{{PAIR}, outcome="missing"}}',
                "{{route}} → {{mailbox}}",
            ),
            threshold("missing_ratio_max"),
        ],
        ratio=True,
        alerts=["DeliverabilityProbesMissing"],
    )
)
grid.add(
    timeseries(
        "Inbox placement per seed mailbox (provider)",
        shows="Share of accepted probes that reached the inbox of each seed mailbox, all "
        "selected routes together, over a sliding hour. Each seed mailbox lives at one provider, "
        "so this is placement per provider.",
        when_bad="A single provider dropping points at that provider's filtering of your mail: "
        "compare its spam panel and authentication verdicts.",
        targets=[
            target(
                "sum by (mailbox) (route_mailbox_outcome:deliverability_probes:rate1h"
                f'{{{PAIR}, outcome="inbox"}})'
                " / sum by (mailbox) (route_mailbox:deliverability_probes_accepted:rate1h"
                f"{{{PAIR}}})",
                "{{mailbox}}",
            )
        ],
        ratio=True,
    )
)

grid.add(
    timeseries(
        "Gmail inbox tabs",
        shows="Probes delivered to the inbox per seed mailbox over a sliding hour, stacked by "
        "Gmail tab (primary, promotions, social, updates, forums). Only mailboxes whose IMAP "
        "server advertises X-GM-EXT-1 (Gmail) have these series; others stay empty.",
        when_bad="Probes moving from primary to promotions or updates: Gmail reads them as bulk "
        "or automated mail. Compare with the content and sending pattern of your real mail; the "
        "tab is not spam, but fewer people open it.",
        targets=[
            target(
                "sum by (mailbox, category) (increase(deliverability_inbox_category_total"
                f"{{{MAILBOX}}}[1h]))",
                "{{mailbox}} {{category}}",
            )
        ],
        stacked=True,
    )
)

# --- latency --------------------------------------------------------------------------------------
grid.row("Delivery latency")
grid.add(
    timeseries(
        "Delivery latency p50 / p95 / p99 per seed mailbox",
        shows="Time from the server accepting a probe to its arrival in the seed mailbox, "
        "percentiles per seed mailbox (all routes together) over a sliding hour. The dashed "
        "line is the p95 alert threshold.",
        when_bad="p50 fine but p99 high: a few slow deliveries (greylisting, retries). All high: "
        "queueing at the route or the receiver; the mean per route says which route. Follow "
        "the latency runbook.",
        targets=[
            target(
                f"histogram_quantile({q}, sum by (mailbox, le) ("
                f"mailbox_le:deliverability_delivery_seconds_bucket:rate1h{{{MAILBOX}}}))",
                f"{{{{mailbox}}}} p{label}",
            )
            for q, label in (("0.5", "50"), ("0.95", "95"), ("0.99", "99"))
        ]
        + [threshold("delivery_p95_seconds_max")],
        unit="s",
        alerts=["DeliverabilityDeliveryLatencyHigh"],
    )
)
grid.add(
    timeseries(
        "Mean delivery latency per route",
        shows="Mean time from the server accepting a probe to its arrival, per route over the "
        "selected seed mailboxes, over a sliding hour (each pair keeps a count and a sum, not "
        "buckets: the series budget).",
        when_bad="One route above the others at every mailbox: that route queues or is "
        "throttled. Every route slow: look at the mailbox percentiles instead.",
        targets=[
            target(
                "sum by (route) (rate(deliverability_pair_delivery_seconds_sum"
                f"{{{PAIR}}}[1h])) / sum by (route) (rate("
                f"deliverability_pair_delivery_seconds_count{{{PAIR}}}[1h]))",
                "{{route}}",
            )
        ],
        unit="s",
        alerts=["DeliverabilityDeliveryLatencyHigh"],
    )
)
grid.add(
    heatmap(
        "Delivery latency distribution",
        shows="How many probes arrived within each latency bucket over time (all selected "
        "seed mailboxes, all routes); darker cells hold more probes.",
        when_bad="Mass moving to the upper buckets means deliveries slow down; a band at the top "
        "bucket means probes are held somewhere (greylisting, queues).",
        targets=[
            target(
                f"sum by (le) (increase(deliverability_delivery_seconds_bucket{{{MAILBOX}}}"
                "[$__rate_interval]))",
                "{{le}}",
            )
        ],
    )
)

# --- SMTP -----------------------------------------------------------------------------------------
grid.row("SMTP")
grid.add(
    timeseries(
        "SMTP replies by stage and class",
        shows="Replies the routes' SMTP servers gave, by stage (banner, ehlo, auth, mail, rcpt, "
        "data, ...) and class (2xx, 3xx, 4xx, 5xx), stacked.",
        when_bad="4xx/5xx concentrated at one stage: auth = credentials, rcpt = recipient or "
        "policy, end_of_data = content or reputation. Drill into the route dashboard.",
        targets=[
            target(
                SMTP_REPLIES_BY_STAGE_CLASS,
                "{{stage}} {{class}}",
            )
        ],
        stacked=True,
        bars=True,
    )
)
grid.add(
    timeseries(
        "4xx and 5xx replies per route",
        shows="Transient (4xx) and permanent (5xx) replies per route over time.",
        when_bad="5xx: the message or sender is refused (read the enhanced codes in the table "
        "next). 4xx: throttling or greylisting; persistent 4xx becomes deferrals.",
        targets=[
            target(
                "sum by (route, class) (increase(deliverability_smtp_replies_total"
                f'{{{ROUTE}, class=~"4xx|5xx"}}[$__rate_interval]))',
                "{{route}} {{class}}",
            )
        ],
        bars=True,
    )
)
grid.add(
    table(
        "Top 4xx/5xx enhanced status codes",
        shows="The ten most frequent 4xx/5xx replies in the selected time range, by route, stage, "
        "code and enhanced status code (RFC 3463).",
        when_bad="Look the enhanced code up (5.7.x = policy/authentication, 5.1.x = address, "
        "4.7.x = throttling) and follow the 5xx runbook.",
        targets=[
            target(
                "topk(10, sum by (route, stage, code, enhanced_code) (increase("
                f'deliverability_smtp_replies_total{{{ROUTE}, class=~"4xx|5xx"}}[$__range])))',
                instant=True,
                table=True,
            )
        ],
    )
)
grid.add(
    timeseries(
        "5xx replies per probe vs the route's baseline",
        shows="5xx replies per probe sent over 15 minutes, per route, against the alert's "
        "limit: the route's own average of the last day times the baseline factor (the alert "
        "also needs the absolute floor to be exceeded).",
        when_bad="Above the baseline line: something changed at the receiver or in what you "
        "send. Follow the 5xx spike runbook.",
        targets=[
            target(
                SMTP_5XX_RATIO_15M,
                "{{route}}",
            ),
            target(
                SMTP_5XX_BASELINE_LIMIT,
                "{{route}} baseline limit",
            ),
            threshold("smtp_5xx_ratio_floor"),
        ],
        ratio=True,
        alerts=["DeliverabilitySmtp5xxSpike"],
    )
)
grid.add(
    timeseries(
        "SMTP errors by kind",
        shows="Transactions that ended without a server verdict, per route and kind (connect, "
        "timeout, tls, auth, protocol, closed, token).",
        when_bad="connect/timeout: network or server down. tls: certificate or TLS settings. "
        "auth: credentials (an OAuth token the server refused). token: no OAuth token to send "
        "(the token source failed). Follow the TLS/auth runbook.",
        targets=[
            target(
                f"sum by (route, kind) (increase(deliverability_smtp_errors_total{{{ROUTE}}}"
                "[$__rate_interval]))",
                "{{route}} {{kind}}",
            )
        ],
        bars=True,
    )
)
grid.add(
    timeseries(
        "TLS and AUTH errors per probe",
        shows="Share of each route's probes over 15 minutes that failed at TLS or AUTH. The "
        "dashed line is the alert threshold.",
        when_bad="Rotate/fix the route's credentials or TLS settings; check the certificate "
        "panel. Follow the TLS/auth runbook.",
        targets=[
            target(
                "route_kind:deliverability_smtp_errors_per_sent:ratio_rate15m"
                f'{{{ROUTE}, kind=~"tls|auth"}}',
                "{{route}} {{kind}}",
            ),
            threshold("smtp_tls_auth_error_ratio_max"),
        ],
        ratio=True,
        alerts=["DeliverabilityRouteTlsOrAuthErrors"],
    )
)
grid.add(
    timeseries(
        "Bounce rate per route",
        shows="Bounces per probe sent, per route, over a sliding hour. The dashed line is the "
        "alert threshold.",
        when_bad="Read the bounce types and sources next to this panel and follow the bounce "
        "rate runbook.",
        targets=[
            target(BOUNCE_RATIO_1H, "{{route}}"),
            threshold("bounce_ratio_max"),
        ],
        ratio=True,
        alerts=["DeliverabilityBounceRateHigh"],
    )
)
grid.add(
    timeseries(
        "Bounces by type and source",
        shows="Bounces over time per route, by type and by how the agent learned of them.",
        when_bad="Hard bounces to seed addresses mean the route or sender is refused; soft ones "
        "are often throttling. Follow the bounce rate runbook.",
        targets=[
            target(
                "sum by (route, type, source) (increase(deliverability_bounces_total"
                f"{{{ROUTE}}}[$__rate_interval]))",
                "{{route}} {{type}} {{source}}",
            )
        ],
        bars=True,
    )
)

# --- authentication -------------------------------------------------------------------------------
grid.row("Authentication (SPF, DKIM, DMARC)")
grid.add(
    timeseries(
        "SPF / DKIM / DMARC pass rate",
        shows="Share of each method's verdicts that passed, per route and seed mailbox, as the "
        "receiver reported them in Authentication-Results, over a sliding hour.",
        when_bad="SPF: the route's IP is missing from the domain's SPF record. DKIM: signing "
        "off or key/DNS mismatch. DMARC: neither aligned. Follow the runbook.",
        targets=[
            target(
                "route_mailbox_method:deliverability_auth_results_pass:ratio_rate1h"
                f'{{{PAIR}, method=~"spf|dkim|dmarc"}}',
                "{{route}} → {{mailbox}} {{method}}",
            ),
            threshold("auth_pass_ratio_min"),
        ],
        ratio=True,
        alerts=["DeliverabilityAuthenticationFailing"],
    )
)
grid.add(
    timeseries(
        "Authentication results by method and result",
        shows="Verdicts over time by method (spf, dkim, dmarc, arc) and result (pass, fail, "
        "softfail, none, ...; absent: not reported by the trusted fields).",
        when_bad="Any fail/softfail/none growing for spf, dkim or dmarc: see the pass-rate "
        "panel for the pair and the authentication runbook.",
        targets=[
            target(
                "sum by (method, result) (increase(deliverability_auth_results_total"
                f"{{{PAIR}}}[$__rate_interval])) > 0",
                "{{method}} {{result}}",
            )
        ],
        bars=True,
    )
)

grid.add(
    timeseries(
        "Probes without a trusted verdict",
        shows="Share of SPF, DKIM and DMARC verdicts that the trusted Authentication-Results "
        "fields did not report (`absent`), per route and seed mailbox, over a sliding hour. "
        "1: no probe carried any trusted verdict.",
        when_bad="At 1: the receiver stopped writing Authentication-Results, or the mailbox's "
        "provider or trusted_authserv_ids no longer match its fields. Follow the runbook.",
        targets=[
            target(
                f"route_mailbox:deliverability_auth_results_absent:ratio_rate1h{{{PAIR}}}",
                "{{route}} → {{mailbox}}",
            ),
        ],
        ratio=True,
        alerts=["DeliverabilityAuthResultsAbsent"],
    )
)

# --- spam filters ---------------------------------------------------------------------------------
grid.row("Spam filters (the receiving hop's verdicts)")
grid.add(
    timeseries(
        "Spam-filter verdicts by filter and category",
        shows="Verdicts the receiver's spam filters (rspamd, SpamAssassin, Microsoft) wrote into "
        "delivered probes, by category (ham, spam, bulk, phish, ...). Only fields the receiving "
        "hop wrote count (docs/monitoring.md, spam-filter verdicts). No data: the receivers write "
        "none that the agent reads (Gmail's verdict is the folder).",
        when_bad="Anything but ham growing: the per-pair share panel names the pair; the "
        "probe's fields on the status page or `once --json` give the score and threshold.",
        targets=[
            target(
                "sum by (source, category) (increase(deliverability_spam_verdicts_total"
                f"{{{PAIR}}}[$__rate_interval])) > 0",
                "{{source}} {{category}}",
            )
        ],
        bars=True,
    )
)
grid.add(
    timeseries(
        "Share of probes a spam filter did not call ham",
        shows="Per route, seed mailbox and filter, the share of verdicts over a sliding hour "
        "that were anything but ham (spam, bulk, phish, ... or a score without a verdict).",
        when_bad="Rising while placement still says inbox: the receiver is close to filing "
        "probes as junk; compare the score panel with the filter's threshold.",
        targets=[
            target(
                "sum by (route, mailbox, source) (increase(deliverability_spam_verdicts_total"
                f'{{{PAIR}, category!="ham"}}[1h])) / sum by (route, mailbox, source) '
                f"(increase(deliverability_spam_verdicts_total{{{PAIR}}}[1h]))",
                "{{route}} → {{mailbox}} {{source}}",
            )
        ],
        ratio=True,
    )
)
grid.add(
    timeseries(
        "Spam-filter score (p50, p95) per filter",
        shows="Scores of delivered probes on each filter's own scale (rspamd and SpamAssassin "
        "points, Microsoft SCL -1..9), from a six-bucket histogram per seed mailbox (0, 2, 4, 6, "
        "10, 15; all routes): read it as a band, not an exact value.",
        when_bad="Above 4-6: near rspamd's add-header (6) and SpamAssassin's default (5) "
        "thresholds, or Microsoft's spam SCL (5); the probe's filter fields say which rules hit.",
        targets=[
            target(
                "histogram_quantile(0.5, sum by (source, le) (rate(deliverability_spam_score_bucket"
                f"{{{MAILBOX}}}[$__rate_interval])))",
                "{{source}} p50",
            ),
            target(
                "histogram_quantile(0.95, sum by (source, le) "
                f"(rate(deliverability_spam_score_bucket{{{MAILBOX}}}[$__rate_interval])))",
                "{{source}} p95",
            ),
        ],
    )
)

# --- DNS and reputation ---------------------------------------------------------------------------
# The DNS checks are per sending domain, seed domain and sending IP, not per route: these panels
# ignore the route and mailbox variables.
grid.row("DNS and reputation (all routes)")
grid.add(
    stat(
        "DNS checks failing",
        shows="How many (target, check) pairs fail among the DNS checks that matter for "
        f"delivery ({_DELIVERY_CHECKS_TEXT}), by the last run that decided them. No data: the "
        "agent has no `dns` section.",
        when_bad="Above 0: the table next names the target and check; the agent's log says what "
        "is wrong with the record. Follow the DNS record broken runbook.",
        targets=[
            target(
                f"count({_FAILING_DELIVERY_CHECKS}) or count({_DELIVERY_CHECKS_OK}) * 0",
            )
        ],
        mappings=[{"type": "value", "options": {"0": {"text": "none", "color": "green"}}}],
        alerts=["DeliverabilityDnsRecordBroken"],
    ),
    w=8,
    h=4,
)
grid.add(
    stat(
        "Blocklist listings",
        shows="How many (sending IP or domain, blocklist zone) pairs are listed, by the last "
        "run. No data: no blocklist zones are configured.",
        when_bad="Above 0: a listed IP or domain gets mail refused or junked wherever that list "
        "is used. Follow the blocklisted runbook.",
        targets=[
            target(
                "count(max by (target, zone) (deliverability_dnsbl_listed) == 1)"
                " or count(max by (target, zone) (deliverability_dnsbl_listed)) * 0"
            )
        ],
        mappings=[{"type": "value", "options": {"0": {"text": "none", "color": "green"}}}],
        alerts=["DeliverabilitySendingIpBlocklisted"],
    ),
    w=8,
    h=4,
)
grid.add(
    stat(
        "Last DNS check run took",
        shows="How long the agent's last run of every DNS check took (each check is bounded "
        "by `dns.timeout`).",
        when_bad="Close to `dns.timeout`: lookups time out and checks are left undecided; see "
        "the undecided checks panel and the DNS checks failing runbook.",
        targets=[target("max(deliverability_dns_check_duration_seconds)")],
        unit="s",
        alerts=["DeliverabilityDnsChecksFailing"],
    ),
    w=8,
    h=4,
)
grid.add(
    table(
        "Failing DNS checks by target",
        shows="Every DNS check whose last decided run failed, by target (domain or IP) and "
        "check, informational ones included (dmarc_enforced, dmarc_reporting, mta_sts, tls_rpt "
        "and rdns do not alert). Empty: every check passes.",
        when_bad="Read the agent's log line for the target and check ('DNS check ... failed: "
        "...'), fix the record, and wait for the next run (`dns.interval`). Follow the DNS "
        "record broken runbook.",
        targets=[target("deliverability_dns_check_ok == 0", instant=True, table=True)],
        alerts=["DeliverabilityDnsRecordBroken"],
        hidden=["Value"],
    )
)
grid.add(
    table(
        "Blocklisted IPs and domains",
        shows="Every sending IP and sending domain that the last run found listed, with the "
        "blocklist zone. Empty: nothing listed.",
        when_bad="Look the target up on the blocklist's site for the reason and the removal "
        "procedure; fix the cause first. Follow the blocklisted runbook.",
        targets=[target("deliverability_dnsbl_listed == 1", instant=True, table=True)],
        alerts=["DeliverabilitySendingIpBlocklisted"],
        hidden=["Value"],
    )
)
grid.add(
    timeseries(
        "SPF DNS lookups per domain",
        shows="DNS lookups an SPF evaluation of each sending domain may need over its whole "
        f"include tree. The dashed line is the limit of {SPF_LOOKUP_LIMIT} (RFC 7208): above "
        "it receivers return permerror and the spf_lookups check fails.",
        when_bad="Creeping towards the line: flatten includes you control, drop providers you "
        "no longer use, replace a and mx terms by ip4/ip6 networks.",
        targets=[
            target("max by (domain) (deliverability_spf_dns_lookups)", "{{domain}}"),
            limit(SPF_LOOKUP_LIMIT),
        ],
        alerts=["DeliverabilityDnsRecordBroken"],
    )
)
grid.add(
    timeseries(
        "Undecided DNS checks by check",
        shows="DNS checks left undecided (lookups timed out, SERVFAIL or REFUSED) and blocklist "
        "error answers (check dnsbl), by check. Undecided checks keep their last verdict.",
        when_bad="At every run: the resolver in `dns.nameservers` is down or too slow, or "
        "(dnsbl) the blocklist refuses your resolver. Follow the DNS checks failing runbook.",
        targets=[
            target(
                "sum by (check) (increase(deliverability_dns_check_errors_total"
                "[$__rate_interval]))",
                "{{check}}",
            )
        ],
        bars=True,
        alerts=["DeliverabilityDnsChecksFailing"],
    )
)
grid.add(
    table(
        "DKIM keys",
        shows="The key each configured DKIM selector publishes: domain, selector, key type "
        "and size in bits. A selector without a usable key has no row.",
        when_bad="A configured selector missing: publish the signer's key (the dkim check "
        f"fails). RSA under 2048 bits: rotate to a 2048-bit key; under {DKIM_MIN_RSA_BITS} "
        "verifiers refuse it.",
        targets=[
            target(
                "max by (domain, selector, type) (deliverability_dkim_key_bits)",
                instant=True,
                table=True,
            )
        ],
        alerts=["DeliverabilityDnsRecordBroken"],
        renamed={"Value": "bits"},
    )
)
grid.add(
    table(
        "DMARC policies",
        shows="The DMARC policy that applies to each sending domain (its own record or a "
        "parent's), the subdomain policy and the DKIM and SPF alignment modes (r relaxed, "
        "s strict). A domain without a DMARC record has no row.",
        when_bad="Policy none: receivers do not act on failures; move to quarantine or reject "
        "once aggregate reports show aligned mail. No row: publish a DMARC record (the dmarc "
        "check fails).",
        targets=[
            target(
                "max by (domain, policy, subdomain_policy, adkim, aspf) "
                "(deliverability_dmarc_policy_info)",
                instant=True,
                table=True,
            )
        ],
        alerts=["DeliverabilityDnsRecordBroken"],
        hidden=["Value"],
    )
)

# --- probes and mailboxes -------------------------------------------------------------------------
grid.row("Probes and seed mailboxes")
grid.add(
    timeseries(
        "Probes in flight per pair",
        shows="Probes accepted and awaiting arrival, per pair.",
        when_bad="Growing without bound: probes are not being found (IMAP health) or the "
        "reaper is not running (agent health).",
        targets=[
            target(
                f"sum by (route, mailbox) (deliverability_probes_in_flight{{{PAIR}}})",
                "{{route}} → {{mailbox}}",
            )
        ],
    )
)
grid.add(
    timeseries(
        "Time since the last outcome",
        shows="Seconds since each pair last finished a probe, whatever the outcome. The dashed "
        "line is the staleness threshold (counted from the agent's configuration load when "
        "that is later).",
        when_bad="Above the threshold: the pair is no longer probed although the agent runs; "
        "follow the probes stale runbook.",
        targets=[
            target(
                "time() - max by (route, mailbox) ("
                f"deliverability_last_outcome_timestamp_seconds{{{PAIR}}})",
                "{{route}} → {{mailbox}}",
            ),
            threshold("probes_stale_seconds_max"),
        ],
        unit="s",
        alerts=["DeliverabilityProbesStale"],
    )
)
grid.add(
    timeseries(
        "Late probes",
        shows="Probes found in the seed mailbox after they had already been counted missing, "
        "per pair, over a sliding hour.",
        when_bad="Steadily above 0: the deadline (probes.deadline) is shorter than the real "
        "delivery time; raise it, or look at the latency panels.",
        targets=[
            target(
                f"sum by (route, mailbox) (increase(deliverability_late_probes_total{{{PAIR}}}"
                "[1h]))",
                "{{route}} → {{mailbox}}",
            )
        ],
        alerts=["DeliverabilityProbesMissing"],
    )
)
grid.add(
    timeseries(
        "IMAP connection up",
        shows="1 while the agent's watcher of the seed mailbox has a working IMAP connection "
        "for every watched folder, 0 otherwise. Sharded replicas: the lowest of the replicas "
        "that watch it (every replica watches each bounce mailbox).",
        when_bad="0 for minutes: check the mailbox's credentials, host, TLS and the IMAP errors "
        "next. Follow the IMAP runbook.",
        targets=[target(f"min by (mailbox) (deliverability_imap_up{{{MAILBOX}}})", "{{mailbox}}")],
        alerts=["DeliverabilityImapMailboxUnreachable"],
    )
)
grid.add(
    timeseries(
        "IMAP errors, forged and malformed messages",
        shows="Errors that cost a watcher its connection, by kind; messages that looked like "
        "probes with a bad token (forged); messages skipped as unparseable (malformed).",
        when_bad="auth/tls errors: fix the mailbox settings. Forged: someone sends look-alike "
        "probes (check the secret). Malformed: usually harmless junk in the seed mailbox.",
        targets=[
            target(
                "sum by (mailbox, kind) (increase(deliverability_imap_errors_total"
                f"{{{MAILBOX}}}[$__rate_interval]))",
                "{{mailbox}} {{kind}}",
            ),
            target(
                f"sum by (mailbox) (increase(deliverability_forged_messages_total{{{MAILBOX}}}"
                "[$__rate_interval]))",
                "{{mailbox}} forged",
            ),
            target(
                "sum by (mailbox) (increase(deliverability_malformed_messages_total"
                f"{{{MAILBOX}}}[$__rate_interval]))",
                "{{mailbox}} malformed",
            ),
        ],
        bars=True,
    )
)
grid.add(
    timeseries(
        "How probes are found",
        shows="Probes found per seed mailbox over a sliding hour, by what made the watcher look: "
        "an IDLE push, the periodic check out of IDLE (no push came), a poll, or selecting the "
        "folder (at start or after a reconnect).",
        when_bad="check instead of push: the server's IDLE push is slow or absent, and probes "
        "wait up to idle_check_interval (lower it for that mailbox). select rising with IMAP "
        "timeout errors: the server keeps going silent and each reconnect finds the probes.",
        targets=[
            target(
                "sum by (mailbox, found_by) (increase(deliverability_probes_found_total"
                f"{{{MAILBOX}}}[1h]))",
                "{{mailbox}} {{found_by}}",
            )
        ],
    )
)

# --- agent ----------------------------------------------------------------------------------------
grid.row("Agent and TLS")
grid.add(
    stat(
        "Config reload",
        shows="Whether every agent's last configuration load or reload succeeded.",
        when_bad="Failed: the agent runs on its previous configuration. Run `deliverability-"
        "agent check-config` on the file and follow the config reload runbook.",
        targets=[target("min(deliverability_config_last_reload_successful)")],
        mappings=[
            {
                "type": "value",
                "options": {
                    "0": {"text": "failed", "color": "red"},
                    "1": {"text": "ok", "color": "green"},
                },
            }
        ],
        alerts=["DeliverabilityConfigReloadFailed"],
    ),
    w=4,
    h=4,
)
grid.add(
    stat(
        "Config loaded",
        shows="Time since the oldest of the agents' last successful configuration loads.",
        when_bad="Not what you expect after a deploy: the new configuration was not loaded "
        "(restart or SIGHUP the agent).",
        targets=[
            target("time() - min(deliverability_config_last_reload_success_timestamp_seconds)")
        ],
        unit="s",
    ),
    w=4,
    h=4,
)
grid.add(
    timeseries(
        "Shards: seed mailboxes per replica",
        shows="How many seed mailboxes each replica owns (all of them when not sharded), how "
        "many replicas run with each shard count, and how many mailboxes have no owner or two.",
        when_bad="More than one shard count, or mailboxes without exactly one owner for longer "
        "than a rollout: set the shard count to the replica count (docs/scaling.md).",
        targets=[
            target("deliverability_shard_owned_mailboxes", "{{instance}} owns"),
            target(
                "count by (total) (deliverability_shard_info)",
                "replicas with shard count {{total}}",
            ),
            target(
                "count(sum by (mailbox) (deliverability_shard_mailbox_owned) != 1) or vector(0)",
                "mailboxes without exactly one owner",
            ),
        ],
        alerts=["DeliverabilityShardCountMismatch", "DeliverabilityMailboxOwnerMissingOrDoubled"],
    ),
    w=24,
)
grid.add(
    table(
        "Agents (build info)",
        shows="Every agent Prometheus scrapes, with its version.",
        when_bad="Empty: no agent is scraped (follow the agent absent runbook). Mixed "
        "versions: a rollout in progress or a forgotten instance.",
        targets=[target("deliverability_build_info", instant=True, table=True)],
    ),
    w=8,
    h=4,
)
grid.add(
    table(
        "TLS versions per route",
        shows="The TLS version each route's SMTP server negotiated last.",
        when_bad="TLS 1.0/1.1, or no row for a route that should use TLS: fix the route's TLS "
        "settings or the server.",
        # One row per route and version, not per replica: every replica sends through every route.
        targets=[
            target(
                f"max by (route, version) (deliverability_tls_version_info{{{ROUTE}}})",
                instant=True,
                table=True,
            )
        ],
    ),
    w=8,
    h=4,
)
grid.add(
    timeseries(
        "TLS certificate time left per route",
        shows="Time until the certificate each route's SMTP server presented expires. The "
        "dashed line is the alert threshold.",
        when_bad="Renew the server's certificate (or tell its operator). Follow the certificate "
        "runbook.",
        targets=[
            target(
                "min by (route) (deliverability_tls_cert_expiry_timestamp_seconds"
                f"{{{ROUTE}}}) - time()",
                "{{route}}",
            ),
            threshold("tls_cert_expiry_seconds_min"),
        ],
        unit="s",
        alerts=["DeliverabilityTlsCertificateExpiringSoon"],
    ),
    w=24,
)
grid.add(
    timeseries(
        "Ledger writes",
        shows="Per agent: whether its last write to the probe ledger succeeded (1) or failed "
        "(0), and its failed ledger operations by kind (disk_full, read_only, io, busy, corrupt, "
        "other).",
        when_bad="Writable 0: the agent sends no probe until a write succeeds (a full disk, most "
        "often); free space on its state directory's volume, no restart needed. Follow the "
        "ledger runbook.",
        targets=[
            target("min by (instance) (deliverability_ledger_writable)", "{{instance}} writable"),
            target(
                "sum by (instance, kind) (increase(deliverability_ledger_errors_total"
                "[$__rate_interval])) > 0",
                "{{instance}} {{kind}}",
            ),
        ],
        alerts=["DeliverabilityLedgerNotWritable"],
    ),
    w=24,
)

grid.add(
    timeseries(
        "OAuth token requests",
        shows="Per OAuth credential (a route's or mailbox's auth.oauth2, token_command or "
        "token_file): its token requests by result (ok, or the error kind), and how long ago it "
        "last got an access token.",
        when_bad="Failures with no success for 30 min: every route and mailbox signing in with "
        "the credential fails once its token expires. The result names the cause (invalid_grant: "
        "sign in again; invalid_client: a new client secret). Follow the OAuth runbook.",
        targets=[
            target(
                "sum by (credential, result) (increase("
                "deliverability_oauth_token_refreshes_total[$__rate_interval])) > 0",
                "{{credential}} {{result}}",
            ),
            target(
                "time() - max by (credential) "
                "(deliverability_oauth_token_last_success_timestamp_seconds > 0)",
                "{{credential}} since last success (s)",
            ),
        ],
        alerts=["DeliverabilityOAuthTokenRefreshFailing"],
    ),
    w=24,
)

# --- DMARC aggregate and SMTP TLS reports (docs/reports.md) ---------------------------------------
# Reports cover a day each and arrive once: counters jump when one is read, so these panels use
# windows of days, like the alerts. Report mailboxes are not seed mailboxes: no $mailbox filter.
_DMARC = "deliverability_dmarc_source_messages_total"
_TLSRPT = "deliverability_tlsrpt_sessions_total"
grid.row("DMARC and TLS reports")
grid.add(
    timeseries(
        "DMARC-failing share per domain",
        shows="Per header-from domain, the share of messages in the DMARC aggregate reports of "
        "the last two days that failed DMARC (no aligned DKIM or SPF pass). The dashed line is "
        "the alert threshold.",
        when_bad="Find the failing sources in the table beside it; follow the DMARC failing "
        "runbook (a sender of yours not signing or not in SPF, or spoofing).",
        targets=[
            target(
                f'sum by (header_from) (increase({_DMARC}{{dmarc="fail"}}[2d]))'
                f" / sum by (header_from) (increase({_DMARC}[2d]))",
                "{{header_from}}",
            ),
            threshold("dmarc_fail_ratio_max"),
        ],
        ratio=True,
        alerts=["DeliverabilityDmarcFailing"],
    ),
)
grid.add(
    table(
        "DMARC messages by source IP and result (2 days)",
        shows="Messages in the DMARC aggregate reports of the last two days by header-from "
        "domain, source IP (the report mailbox's top sources, the rest other) and DMARC result.",
        when_bad="A source of yours with dmarc=fail: fix its DKIM signing or add it to SPF. "
        "Unknown sources failing: spoofing or forwarding; your DMARC policy handles them.",
        targets=[
            target(
                f"sum by (header_from, source_ip, dmarc) (increase({_DMARC}[2d])) > 0",
                instant=True,
                table=True,
            )
        ],
        renamed={"Value": "messages"},
        alerts=["DeliverabilityDmarcFailing"],
    ),
)
grid.add(
    timeseries(
        "TLS-RPT failing share per policy domain",
        shows="Per policy domain, the share of TLS sessions other servers reported as failed in "
        "the SMTP TLS reports of the last two days. The dashed line is the alert threshold.",
        when_bad="See the failure results beside it; follow the TLS-RPT failures runbook "
        "(certificates, STARTTLS, the MTA-STS policy host).",
        targets=[
            target(
                f'sum by (policy_domain) (increase({_TLSRPT}{{result!="success"}}[2d]))'
                f" / sum by (policy_domain) (increase({_TLSRPT}[2d]))",
                "{{policy_domain}}",
            ),
            threshold("tlsrpt_failure_ratio_max"),
        ],
        ratio=True,
        alerts=["DeliverabilityTlsRptFailures"],
    ),
)
grid.add(
    table(
        "TLS-RPT sessions by result (2 days)",
        shows="TLS sessions in the SMTP TLS reports of the last two days by policy domain, "
        "policy type and result (success or the RFC 8460 failure result type).",
        when_bad="certificate-*: renew or fix the MX certificates; starttls-not-supported: "
        "re-enable STARTTLS; sts-policy-*: fix the MTA-STS policy host or file.",
        targets=[
            target(
                f"sum by (policy_domain, policy_type, result) (increase({_TLSRPT}[2d])) > 0",
                instant=True,
                table=True,
            )
        ],
        renamed={"Value": "sessions"},
        alerts=["DeliverabilityTlsRptFailures"],
    ),
)
grid.add(
    timeseries(
        "Reports read by kind and result",
        shows="Reports read from the report mailboxes: counted, duplicate (resent by the "
        "reporter) or skipped, by reason (malformed, too large, forbidden XML, no report).",
        when_bad="Skipped reports: the agent's log names each one and why (warning 'skipped a "
        "... report'). forbidden_xml or too_large in numbers: someone is mailing hostile "
        "attachments to the report address.",
        targets=[
            target(
                "sum by (kind, result) (increase(deliverability_reports_total"
                "[$__rate_interval])) > 0",
                "{{kind}} {{result}}",
            )
        ],
        bars=True,
    ),
    w=16,
)
grid.add(
    stat(
        "Newest report's period ended",
        shows="Per kind, time since the end of the period of the newest report counted: a "
        "day or two is normal (reports cover a day and arrive hours later).",
        when_bad="Several days: reports stopped arriving. Check the rua= addresses in your "
        "_dmarc and _smtp._tls records and the report mailbox's IMAP connection.",
        targets=[
            target(
                "time() - max by (kind) (deliverability_report_newest_end_timestamp_seconds)",
                "{{kind}}",
            )
        ],
        unit="s",
    ),
    w=8,
)

grid.row("Gmail Postmaster Tools and Microsoft SNDS (the receivers' view)")
grid.add(
    timeseries(
        "Gmail user-reported spam rate per domain",
        shows="Per configured domain, the share of its mail Gmail users reported as spam, as "
        "Postmaster Tools published it for the domain's newest day (a day or two late). Gaps: "
        "no data that day (too little Gmail traffic). Dashed lines: Google's 0.1 % guideline "
        "and 0.3 % limit.",
        when_bad="Over 0.1 %: follow the Gmail spam rate runbook (engagement, list hygiene, "
        "one-click unsubscribe); over 0.3 % Gmail stops delivering.",
        targets=[
            target("max by (domain) (deliverability_postmaster_spam_ratio)", "{{domain}}"),
            limit(0.001),
            limit(0.003),
        ],
        ratio=True,
        alerts=["DeliverabilityGmailSpamRateHigh", "DeliverabilityGmailSpamRateCritical"],
    ),
)
grid.add(
    timeseries(
        "Gmail authentication and TLS per domain",
        shows="Per configured domain, the share of its mail that passed SPF, DKIM and DMARC at "
        "Gmail, and that arrived over TLS, on the newest day of Postmaster Tools data.",
        when_bad="A drop: a sender of yours stopped signing or is missing from SPF; compare "
        "with the seed probes' authentication row and the DMARC reports.",
        targets=[
            target(
                "max by (domain, method) (deliverability_postmaster_auth_success_ratio)",
                "{{domain}} {{method}}",
            ),
            target(
                "max by (domain) (deliverability_postmaster_tls_inbound_ratio)", "{{domain}} tls"
            ),
        ],
        ratio=True,
    ),
)
grid.add(
    table(
        "Gmail compliance needing work and delivery errors",
        shows="Bulk-sender requirements Postmaster Tools says need work, per domain, and the "
        "newest day's rejected or deferred share by Google's reason.",
        when_bad="Fix each requirement listed (the runbook says how per requirement); "
        "low_domain_reputation or ip_in_rbls rejections: see the spam rate and blocklists.",
        targets=[
            target(
                "max by (domain, requirement) (deliverability_postmaster_compliant) == 0",
                instant=True,
                table=True,
            ),
            target(
                "max by (domain, type, reason) "
                "(deliverability_postmaster_delivery_error_ratio) > 0",
                instant=True,
                table=True,
            ),
        ],
        alerts=["DeliverabilityGmailComplianceNeedsWork"],
    ),
)
grid.add(
    table(
        "SNDS per IP: filter result, complaints, traps, blocks",
        shows="Per SNDS IP (configured, or the first max_ips; the rest as other): the filter "
        "result of its newest activity period (1 = that result), complaint rate, trap hits, "
        "and whether it is in a blocked range.",
        when_bad="RED or blocked: follow the SNDS runbook (stop the stream, clean the list, "
        "ask Microsoft for mitigation). Trap hits: remove stale and unconfirmed addresses.",
        targets=[
            target(
                'max by (ip, result) (deliverability_snds_filter_result{result=~"yellow|red"}) '
                "== 1",
                instant=True,
                table=True,
            ),
            target("max by (ip) (deliverability_snds_complaint_ratio)", instant=True, table=True),
            target("max by (ip) (deliverability_snds_trap_hits) > 0", instant=True, table=True),
            target("max by (ip) (deliverability_snds_blocked) == 1", instant=True, table=True),
        ],
        alerts=["DeliverabilitySndsIpRedOrBlocked", "DeliverabilitySndsTrapHits"],
    ),
)
grid.add(
    stat(
        "Reputation feeds: time since last read",
        shows="Per feed (postmaster, snds), time since the agent last read it; it fetches "
        "every 6 hours by default. The data itself is a day or two older.",
        when_bad="Over a day: fetches fail; the errors panel beside it and the status page say "
        "why (auth, permission_denied, quota, ...).",
        targets=[
            target(
                "time() - max by (feed) "
                "(deliverability_reputation_feed_last_success_timestamp_seconds)",
                "{{feed}}",
            )
        ],
        unit="s",
        alerts=["DeliverabilityReputationFeedStale"],
    ),
    w=8,
)
grid.add(
    timeseries(
        "Reputation feed errors by kind",
        shows="Failed fetches per feed and kind, and entries or rows skipped as malformed.",
        when_bad="auth: the token or key was refused; permission_denied: the domain is not "
        "shared with the credential's user; quota: rate limited (the agent backs off).",
        targets=[
            target(
                "sum by (feed, kind) (increase(deliverability_reputation_feed_errors_total"
                "[$__rate_interval])) > 0",
                "{{feed}} {{kind}}",
            )
        ],
        bars=True,
        alerts=["DeliverabilityReputationFeedStale"],
    ),
    w=16,
)

dashboard = Dashboard(
    title="Deliverability overview",
    uid="deliverability-overview",
    description="Email deliverability measured by the deliverability agent's probes.",
    tags=["deliverability"],
    timezone="browser",
    refresh="1m",
    graphTooltip=1,
    time=Time("now-24h", "now"),
    templating=Templating(
        [
            datasource_variable(),
            label_variable("route", label="Route", metric="deliverability_probes_sent_total"),
            *provider_and_mailbox_variables(),
        ]
    ),
    panels=grid.panels,
).auto_panel_ids()
