"""Answers of Gmail Postmaster Tools v2 and Microsoft SNDS, for the feeds' tests.

All CONSTRUCTED: neither provider publishes a complete sample answer. The Google bodies follow the
v2 reference's field lists (https://developers.google.com/workspace/gmail/postmaster/reference/
rest/v2: QueryDomainStatsResponse {domainStats[{name, metric, date{year,month,day},
value{doubleValue}}], nextPageToken}; DomainComplianceStatus {name, complianceData{domainId,
rowData[{requirement, status{status}}]}}; errors in Google's JSON error format
{error{code, message, status}}, https://cloud.google.com/apis/design/errors). The SNDS rows
follow the column order of Microsoft's SNDS data page as read by undersfx/sndslib (MIT), whose
docstring shows a row of real output ("12/31/2019 10:00 AM", "< 0.1%", GREEN, ...); the values
here are made up for the tests, on documentation addresses (RFC 5737).
"""

from __future__ import annotations

from typing import Any


def domain_stat(
    domain: str, metric: str, day: tuple[int, int, int], value: float
) -> dict[str, Any]:
    year, month, dd = day
    return {
        "name": f"domains/{domain}/domainStats/{metric}-{year}{month:02}{dd:02}",
        "metric": metric,
        "date": {"year": year, "month": month, "day": dd},
        "value": {"doubleValue": value},
    }


def stats_answer(domain: str) -> dict[str, Any]:
    """Two days of statistics; the newer one (2026-12-04) is what the metrics show."""
    older, newer = (2026, 12, 3), (2026, 12, 4)
    return {
        "domainStats": [
            domain_stat(domain, "spam_rate", older, 0.0005),
            domain_stat(domain, "spam_rate", newer, 0.0021),
            domain_stat(domain, "auth_spf", newer, 0.998),
            domain_stat(domain, "auth_dkim", newer, 1.0),
            domain_stat(domain, "auth_dmarc", newer, 0.997),
            domain_stat(domain, "tls_inbound", newer, 0.999),
            domain_stat(domain, "error_reject_ip_in_rbls", newer, 0.004),
            domain_stat(domain, "error_temp_fail_anomalous_traffic_pattern", newer, 0.011),
        ]
    }


def compliance_answer(domain: str) -> dict[str, Any]:
    return {
        "name": f"domains/{domain}/complianceStatus",
        "complianceData": {
            "domainId": domain,
            "rowData": [
                {"requirement": "SPF", "status": {"status": "COMPLIANT"}},
                {"requirement": "DKIM", "status": {"status": "COMPLIANT"}},
                {"requirement": "DMARC_POLICY", "status": {"status": "COMPLIANT"}},
                {"requirement": "USER_REPORTED_SPAM_RATE", "status": {"status": "NEEDS_WORK"}},
                {"requirement": "ONE_CLICK_UNSUBSCRIBE", "status": {"status": "NEEDS_WORK"}},
            ],
            "oneClickUnsubscribeVerdict": {
                "status": {"status": "NEEDS_WORK"},
                "reason": "NO_UNSUB_GENERAL",
            },
        },
    }


def google_error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


# data.aspx: IP, activity start, activity end, RCPT, DATA, recipients, filter result, complaint
# rate, trap message start, trap message end, trap hits, sample HELO, sample MAIL FROM, comments.
SNDS_DATA = (
    b"192.0.2.10,12/03/2026 10:00 AM,12/04/2026 9:00 AM,1895,1894,1894,GREEN,< 0.1%,,,0,"
    b"mail.example.com,bounce@example.com,\r\n"
    b"192.0.2.11,12/03/2026 10:00 AM,12/04/2026 9:00 AM,5021,5000,5012,RED,2.3%,"
    b"12/03/2026 11:14 AM,12/03/2026 6:40 PM,7,mail2.example.com,bounce@example.com,\r\n"
    b"192.0.2.12,12/03/2026 10:00 AM,12/04/2026 9:00 AM,300,290,295,YELLOW,0.4%,,,1,"
    b"mail3.example.com,bounce@example.com,\r\n"
)
# ipStatus.aspx: first IP, last IP, blocked, reason.
SNDS_IP_STATUS = (
    b"192.0.2.11,192.0.2.11,Yes,Blocked due to user complaints or other evidence of spamming\r\n"
)
