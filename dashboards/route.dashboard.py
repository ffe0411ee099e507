"""Deliverability route drill-down: one route's SMTP transcript (every stage's reply classes, codes
and error kinds), transaction timing, and what became of its probes at each seed mailbox.

Open it from the overview when one route misbehaves. Same conventions as the overview: ratios from
the recording rules over 1h, counts with `increase` over `$__rate_interval` or the whole range.
"""

from __future__ import annotations

from grafanalib.core import Dashboard, Templating, Time

from dashboards.common import (
    ACCEPTANCE_RATIO,
    BOUNCE_RATIO_1H,
    PAIR,
    ROUTE,
    SMTP_5XX_BASELINE_LIMIT,
    SMTP_5XX_RATIO_15M,
    SMTP_REPLIES_BY_STAGE_CLASS,
    Grid,
    datasource_variable,
    heatmap,
    label_variable,
    provider_and_mailbox_variables,
    stat,
    table,
    target,
    threshold,
    timeseries,
)

grid = Grid()

# --- at a glance ----------------------------------------------------------------------------------
grid.row("Route $route (last hour)")
grid.add(
    stat(
        "Probes sent per hour",
        shows="Probes this route sent over the last hour, all seed mailboxes.",
        when_bad="0: the route is not probed (agent down, route removed from the "
        "configuration, or every send skipped). See the agent panels of the overview.",
        targets=[target(f"sum(route:deliverability_probes_sent:rate1h{{{ROUTE}}}) * 3600")],
    ),
    w=4,
    h=4,
)
grid.add(
    stat(
        "Acceptance rate",
        shows="Share of this route's probes the server accepted over the last hour.",
        when_bad="Read the transcript tables below: the stage and enhanced code of the "
        "refusals say why.",
        targets=[target(ACCEPTANCE_RATIO)],
        unit="percentunit",
    ),
    w=4,
    h=4,
)
grid.add(
    stat(
        "5xx replies per probe (15m)",
        shows="5xx replies per probe sent through this route over the last 15 minutes.",
        when_bad="Compare with the baseline panel below; follow the 5xx spike runbook.",
        targets=[target(SMTP_5XX_RATIO_15M)],
        unit="percentunit",
        alerts=["DeliverabilitySmtp5xxSpike"],
    ),
    w=4,
    h=4,
)
grid.add(
    stat(
        "Bounce rate",
        shows="Bounces per probe sent through this route over the last hour.",
        when_bad="See bounces by type and source below; follow the bounce rate runbook.",
        targets=[target(BOUNCE_RATIO_1H)],
        unit="percentunit",
        alerts=["DeliverabilityBounceRateHigh"],
    ),
    w=4,
    h=4,
)
grid.add(
    stat(
        "SMTP transaction p95",
        shows="95th percentile of the whole SMTP transaction's duration (connect to end of "
        "data) over the last hour.",
        when_bad="Seconds where it used to be milliseconds: tarpitting, greylisting or a slow "
        "network; check the stage of the errors below (timeout).",
        targets=[
            target(
                "histogram_quantile(0.95, sum by (le) (rate("
                f"deliverability_smtp_transaction_seconds_bucket{{{ROUTE}}}[1h])))"
            )
        ],
        unit="s",
    ),
    w=4,
    h=4,
)
grid.add(
    stat(
        "TLS certificate expires in",
        shows="Time until the certificate this route's SMTP server presented last expires.",
        when_bad="Under two weeks: renew it (or tell its operator); follow the certificate "
        "runbook.",
        targets=[
            target(f"min(deliverability_tls_cert_expiry_timestamp_seconds{{{ROUTE}}}) - time()")
        ],
        unit="s",
        alerts=["DeliverabilityTlsCertificateExpiringSoon"],
    ),
    w=4,
    h=4,
)

# --- transcript -----------------------------------------------------------------------------------
grid.row("SMTP transcript")
grid.add(
    timeseries(
        "Replies by stage and class",
        shows="Every reply of this route's SMTP server over time, by transaction stage "
        "(banner, ehlo, starttls, auth, mail, rcpt, data, end_of_data, quit) and class.",
        when_bad="Find the first stage whose class is not 2xx/3xx: that is where transactions "
        "fail. The table next gives the exact codes.",
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
    table(
        "Replies by stage, code and enhanced code",
        shows="How many replies of each stage, reply code and enhanced status code this route's "
        "server gave in the selected time range.",
        when_bad="Any 4xx/5xx row: its enhanced code (RFC 3463) names the reason, e.g. 5.7.1 "
        "policy refusal, 5.1.1 unknown user, 4.7.0 throttling.",
        targets=[
            target(
                "sum by (stage, code, enhanced_code, class) (increase("
                f"deliverability_smtp_replies_total{{{ROUTE}}}[$__range])) > 0",
                instant=True,
                table=True,
            )
        ],
    )
)
grid.add(
    timeseries(
        "Errors by stage and kind",
        shows="Transactions that ended without a server verdict, by the stage they reached and "
        "the kind of error (connect, timeout, tls, auth, protocol, closed, token).",
        when_bad="connect/timeout at connect or banner: server or network down. tls at "
        "starttls: certificate or TLS settings. auth at auth: credentials. Follow the runbook.",
        targets=[
            target(
                f"sum by (stage, kind) (increase(deliverability_smtp_errors_total{{{ROUTE}}}"
                "[$__rate_interval])) > 0",
                "{{stage}} {{kind}}",
            )
        ],
        bars=True,
        alerts=["DeliverabilityRouteTlsOrAuthErrors"],
    )
)
grid.add(
    timeseries(
        "Errors per probe by kind",
        shows="Share of this route's probes over 15 minutes that ended with each kind of "
        "error. The dashed line is the TLS/AUTH alert threshold.",
        when_bad="tls or auth above the line pages; other kinds: check the server's health and "
        "the route's timeouts.",
        targets=[
            target(
                f"route_kind:deliverability_smtp_errors_per_sent:ratio_rate15m{{{ROUTE}}}",
                "{{kind}}",
            ),
            threshold("smtp_tls_auth_error_ratio_max"),
        ],
        ratio=True,
        alerts=["DeliverabilityRouteTlsOrAuthErrors"],
    )
)
grid.add(
    timeseries(
        "SMTP transaction duration p50 / p95 / p99",
        shows="Duration of whole SMTP transactions of this route, percentiles over a sliding hour.",
        when_bad="Rising: the server tarpits or greylists, or the network is slow; very long "
        "ones end as timeouts.",
        targets=[
            target(
                f"histogram_quantile({q}, sum by (le) (rate("
                f"deliverability_smtp_transaction_seconds_bucket{{{ROUTE}}}[1h])))",
                f"p{label}",
            )
            for q, label in (("0.5", "50"), ("0.95", "95"), ("0.99", "99"))
        ],
        unit="s",
    )
)
grid.add(
    heatmap(
        "SMTP transaction duration distribution",
        shows="How many transactions of this route took each duration bucket, over time.",
        when_bad="A band moving up means the server got slower; a band at the top bucket means "
        "transactions run into the route's timeouts.",
        targets=[
            target(
                "sum by (le) (increase(deliverability_smtp_transaction_seconds_bucket"
                f"{{{ROUTE}}}[$__rate_interval]))",
                "{{le}}",
            )
        ],
    )
)
grid.add(
    timeseries(
        "5xx replies per probe vs baseline",
        shows="5xx replies per probe over 15 minutes against the alert's limit: this route's "
        "average of the last day times the baseline factor, and the absolute floor.",
        when_bad="Above both lines for 10 minutes pages. Read the enhanced codes in the "
        "transcript table and follow the 5xx spike runbook.",
        targets=[
            target(SMTP_5XX_RATIO_15M, "5xx"),
            target(
                SMTP_5XX_BASELINE_LIMIT,
                "baseline limit",
            ),
            threshold("smtp_5xx_ratio_floor"),
        ],
        ratio=True,
        alerts=["DeliverabilitySmtp5xxSpike"],
    )
)
grid.add(
    timeseries(
        "Bounces by type, source and reason",
        shows="Bounces of this route's probes over time, by type, by how the agent learned "
        "of them and by reason (recipient_invalid, policy, mailbox_full, other).",
        when_bad="policy: the receiver refuses this route (reputation, SPF/DKIM/DMARC). "
        "recipient_invalid: the seed address or its domain is gone, fix the config. "
        "mailbox_full: empty the seed mailbox. Follow the bounce rate runbook.",
        targets=[
            target(
                "sum by (type, source, reason) (increase(deliverability_bounces_total"
                f"{{{ROUTE}}}[$__rate_interval]))",
                "{{type}} {{source}} {{reason}}",
            )
        ],
        bars=True,
        alerts=["DeliverabilityBounceRateHigh"],
    )
)

# --- per seed mailbox -----------------------------------------------------------------------------
grid.row("Per seed mailbox")
grid.add(
    timeseries(
        "Outcomes by mailbox",
        shows="Final outcomes of this route's probes over time, per seed mailbox, stacked.",
        when_bad="One mailbox with spam/missing while others get inbox: that provider treats "
        "this route differently; see placement and authentication next.",
        targets=[
            target(
                "sum by (mailbox, outcome) (increase(deliverability_probes_total"
                f"{{{PAIR}}}[$__rate_interval]))",
                "{{mailbox}} {{outcome}}",
            )
        ],
        stacked=True,
        bars=True,
    )
)
grid.add(
    timeseries(
        "Placement by mailbox",
        shows="Where this route's accepted probes ended up at each seed mailbox (inbox, spam, "
        "other, missing, ...), as shares over a sliding hour.",
        when_bad="Follow the runbook of the placement alert that matches (inbox, spam, missing).",
        targets=[
            target(
                f"route_mailbox_outcome:deliverability_placement:ratio_rate1h{{{PAIR}}}",
                "{{mailbox}} {{outcome}}",
            )
        ],
        ratio=True,
        alerts=[
            "DeliverabilityInboxPlacementLow",
            "DeliverabilitySpamPlacementHigh",
            "DeliverabilityProbesMissing",
        ],
    )
)
grid.add(
    timeseries(
        "Mean delivery latency by mailbox",
        shows="Mean time from acceptance to arrival of this route's probes at each seed "
        "mailbox, over a sliding hour (per pair a count and a sum, not buckets: the series "
        "budget; the p95 alert is per mailbox, on the overview).",
        when_bad="One mailbox slow: that provider delays (greylisting, throttling). All slow: "
        "the route queues. Follow the latency runbook.",
        targets=[
            target(
                f"route_mailbox:deliverability_pair_delivery_seconds:mean1h{{{PAIR}}}",
                "{{mailbox}}",
            ),
        ],
        unit="s",
        alerts=["DeliverabilityDeliveryLatencyHigh"],
    )
)
grid.add(
    timeseries(
        "Authentication pass rate by mailbox and method",
        shows="Share of SPF, DKIM, DMARC and ARC verdicts that passed at each seed mailbox, "
        "over a sliding hour. The dashed line is the alert threshold (SPF, DKIM, DMARC only).",
        when_bad="Fix the sending domain's DNS (SPF, DKIM key, DMARC policy) or the route's "
        "signing; follow the authentication runbook.",
        targets=[
            target(
                f"route_mailbox_method:deliverability_auth_results_pass:ratio_rate1h{{{PAIR}}}",
                "{{mailbox}} {{method}}",
            ),
            threshold("auth_pass_ratio_min"),
        ],
        ratio=True,
        alerts=["DeliverabilityAuthenticationFailing"],
    )
)

# --- ESP webhook (routes with an `esp` section; empty for the others) ---------------------------
grid.row("ESP webhook")
grid.add(
    timeseries(
        "ESP events by type",
        shows="Verified events the route's ESP webhook took, by type (delivered, bounce, "
        "soft_bounce, deferred, dropped, complaint, other). Empty for routes without an ESP.",
        when_bad="Nothing while probes are sent: the ESP stopped posting or its posts are "
        "refused (next panel); follow the webhook quiet runbook.",
        targets=[
            target(
                "sum by (type) (increase(deliverability_esp_events_total"
                f"{{{ROUTE}}}[$__rate_interval]))",
                "{{type}}",
            )
        ],
        stacked=True,
        bars=True,
        alerts=["DeliverabilityEspWebhookQuiet"],
    )
)
grid.add(
    timeseries(
        "Webhook refusals by reason",
        shows="Posts the route's webhook refused: unsigned, bad_signature, replayed, too_large, "
        "malformed, certificate. None of them changed a probe.",
        when_bad="bad_signature or unsigned after a key rotation: update the key in the config; "
        "replayed: check the agent's clock; see the webhook quiet runbook.",
        targets=[
            target(
                "sum by (reason) (increase(deliverability_webhook_refusals_total"
                f"{{{ROUTE}}}[$__rate_interval]))",
                "{{reason}}",
            )
        ],
        stacked=True,
        bars=True,
        alerts=["DeliverabilityEspWebhookQuiet"],
    )
)
grid.add(
    timeseries(
        "ESP delivery p95 (250 to delivered by the ESP)",
        shows="95th percentile, over a sliding hour, of the ESP's own stage (its 250 to end of "
        "data -> its delivered event) and of the receiver's (that event -> seen in the mailbox).",
        when_bad="The ESP's stage rising: it queues (throttling, its own backlog). The "
        "receiver's rising: the receiving provider delays (greylisting, filtering).",
        targets=[
            target(
                "histogram_quantile(0.95, sum by (le) (rate("
                f"deliverability_esp_delivery_seconds_bucket{{{ROUTE}}}[1h])))",
                "ESP: 250 -> delivered",
            ),
            target(
                "histogram_quantile(0.95, sum by (le) (rate("
                f"deliverability_esp_receiver_seconds_bucket{{{ROUTE}}}[1h])))",
                "receiver: delivered -> seen",
            ),
        ],
        unit="s",
    )
)
grid.add(
    timeseries(
        "Suppression drops and complaints",
        shows="Probes the ESP dropped because the seed address is suppressed, and complaints "
        "about probes the ESP reported.",
        when_bad="Any drop: remove the seed address from the ESP's suppression list; follow "
        "the suppression drops runbook.",
        targets=[
            target(
                f"sum(increase(deliverability_esp_suppressed_total{{{ROUTE}}}[$__rate_interval]))",
                "suppressed",
            ),
            target(
                f"sum(increase(deliverability_esp_complaints_total{{{ROUTE}}}[$__rate_interval]))",
                "complaints",
            ),
        ],
        bars=True,
        alerts=["DeliverabilityEspSuppressionDrops"],
    )
)

dashboard = Dashboard(
    title="Deliverability route",
    uid="deliverability-route",
    description="One SMTP route of the deliverability agent, stage by stage.",
    tags=["deliverability"],
    timezone="browser",
    refresh="1m",
    graphTooltip=1,
    time=Time("now-24h", "now"),
    templating=Templating(
        [
            datasource_variable(),
            label_variable(
                "route",
                label="Route",
                metric="deliverability_probes_sent_total",
                multi=False,
                include_all=False,
            ),
            *provider_and_mailbox_variables(),
        ]
    ),
    panels=grid.panels,
).auto_panel_ids()
