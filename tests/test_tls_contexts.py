"""Client TLS contexts made once per CA bundle and verify mode, renewed when the file changes."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from agent.tls_contexts import cached_client_context, load_client_context


def _install(path: Path, ca: trustme.CA) -> None:
    """A new CA bundle renamed over `path`, as deploy tools and secret volumes replace files."""
    staged = path.with_name(path.name + ".new")
    ca.cert_pem.write_to_path(str(staged))
    staged.replace(path)


def test_a_loaded_context_is_found_again_for_the_same_file_and_verify_mode(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ca.pem"
    _install(path, trustme.CA())
    assert cached_client_context(path, verify=True) is None

    loaded = load_client_context(path, verify=True)

    assert cached_client_context(path, verify=True) is loaded
    assert cached_client_context(path, verify=False) is None  # another verify mode, another one
    assert loaded.verify_mode is ssl.CERT_REQUIRED and loaded.check_hostname


def test_a_context_without_verification_checks_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    _install(path, trustme.CA())
    context = load_client_context(path, verify=False)
    assert context.verify_mode is ssl.CERT_NONE and not context.check_hostname


def test_a_replaced_ca_file_is_not_served_from_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    _install(path, trustme.CA())
    before = load_client_context(path, verify=True)

    _install(path, trustme.CA())

    assert cached_client_context(path, verify=True) is None
    assert load_client_context(path, verify=True) is not before


def test_a_missing_ca_file_raises_and_is_not_cached(tmp_path: Path) -> None:
    path = tmp_path / "absent.pem"
    with pytest.raises(OSError):
        load_client_context(path, verify=True)
    assert cached_client_context(path, verify=True) is None
