"""The key ring: the current secret signs, earlier ones still verify probes in flight."""

from __future__ import annotations

import pytest

from agent.reading.probe_token import KeyRing, new_probe_id, sign_probe_id

OLD, NEW = b"old-secret-0123456789abcdef", b"new-secret-0123456789abcdef"


def test_key_ring_signs_with_the_current_secret_and_verifies_with_every_secret() -> None:
    probe_id = new_probe_id()
    ring = KeyRing(OLD).rotated(NEW)
    assert ring.sign(probe_id) == sign_probe_id(probe_id, NEW)
    assert ring.verify(probe_id, sign_probe_id(probe_id, OLD))
    assert ring.verify(probe_id, sign_probe_id(probe_id, NEW))
    assert not ring.verify(probe_id, sign_probe_id(probe_id, b"someone-else-0123456789"))
    assert not KeyRing(NEW).verify(probe_id, sign_probe_id(probe_id, OLD))


def test_key_ring_keeps_a_bounded_number_of_earlier_secrets_without_repeats() -> None:
    ring = KeyRing(b"s0")
    for n in range(1, 8):
        ring = ring.rotated(f"s{n}".encode())
    assert ring.current == b"s7"
    assert ring.earlier == (b"s6", b"s5", b"s4", b"s3")
    assert ring.rotated(b"s7") is ring  # a reload with the same secret changes nothing
    assert ring.rotated(b"s5").earlier == (b"s7", b"s6", b"s4", b"s3")


def test_key_ring_refuses_an_empty_secret_and_hides_its_keys() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        KeyRing(b"")
    assert "secret" not in repr(KeyRing(b"secret-value-0123456789"))
