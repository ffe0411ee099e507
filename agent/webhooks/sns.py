"""SNS signing certificates: fetched only over HTTPS from an SNS host, and cached.

A post names the URL of the certificate that signed it, so the URL is the attacker's to choose:
it must be `https://sns.<region>.amazonaws.com[.cn]/<name>.pem` exactly (no user info, no port,
no query), or the post is refused before anything is fetched. Tests serve a certificate from a
test CA on loopback by passing their own host pattern, port and CA; the configuration cannot.
"""

from __future__ import annotations

import re
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from cryptography import x509

from agent.model import WebhookRefusal
from agent.webhooks.signatures import Refused

__all__ = ["SNS_HOST", "SnsCertificates", "check_sns_url"]

SNS_HOST: Final = re.compile(r"sns\.[a-z]{2}(-[a-z]+)+-\d\.amazonaws\.com(\.cn)?")
_MAX_CERT_BYTES: Final = 16384
_CACHE_SIZE: Final = 32  # SNS rotates its certificates rarely; a handful of regions at most


def check_sns_url(
    url: str, *, host: re.Pattern[str] = SNS_HOST, port: int | None = None, pem: bool = True
) -> str:
    """`url` if it is an HTTPS URL on an SNS host (and, for a certificate, a .pem path);
    Refused otherwise."""
    try:
        split = urlsplit(url)
        url_port = split.port
    except ValueError:
        raise Refused(WebhookRefusal.CERTIFICATE, "an unreadable SNS URL") from None
    if (
        split.scheme != "https"
        or split.username is not None
        or split.password is not None
        or split.hostname is None
        or not host.fullmatch(split.hostname)
        or url_port != port
        or (pem and (split.query or split.fragment or not split.path.endswith(".pem")))
        or "\\" in url
        or any(ord(c) <= 32 or ord(c) >= 127 for c in url)
    ):
        raise Refused(WebhookRefusal.CERTIFICATE, f"refused to fetch from {split.hostname!r}")
    return url


class SnsCertificates:
    """Fetches and caches SNS signing certificates; call from any thread."""

    def __init__(
        self,
        *,
        host: re.Pattern[str] = SNS_HOST,
        port: int | None = None,
        ca_file: Path | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self._context = ssl.create_default_context(cafile=ca_file)
        self._timeout = timeout
        self._cache: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # how many certificates were fetched (tests check the cache with it)

    def __call__(self, url: str) -> x509.Certificate:
        check_sns_url(url, host=self.host, port=self.port)
        with self._lock:
            cached = self._cache.get(url)
        if cached is not None:
            return cached
        data = self._get(url)
        try:
            certificate = x509.load_pem_x509_certificate(data)
        except ValueError:
            raise Refused(WebhookRefusal.CERTIFICATE, "the SNS certificate is not PEM") from None
        with self._lock:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[url] = certificate
            self.fetches += 1
        return certificate

    def get(self, url: str) -> bytes:
        """GET an SNS URL (a SubscribeURL) after the same host check, without the .pem rule."""
        check_sns_url(url, host=self.host, port=self.port, pem=False)
        return self._get(url)

    def _get(self, url: str) -> bytes:
        # No redirects: a redirect could leave the SNS host the URL check allowed.
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self._context), _NoRedirect()
        )
        try:
            with opener.open(url, timeout=self._timeout) as response:
                data: bytes = response.read(_MAX_CERT_BYTES + 1)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise Refused(WebhookRefusal.CERTIFICATE, f"cannot fetch from SNS: {exc}") from None
        if len(data) > _MAX_CERT_BYTES:
            raise Refused(WebhookRefusal.CERTIFICATE, "the SNS answer is too large")
        return data


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None
