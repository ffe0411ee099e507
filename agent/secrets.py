"""Secret values: the configuration marks them once by type; everything else follows from that.

A configuration field is secret when its type is pydantic's `SecretStr` (`Secret` here): its
`repr` and `str` are masked, and `secret_values` finds every such value in a loaded configuration
by walking the model tree, so a new secret field (an OAuth client secret, a refresh token) is
redacted in logs, errors, the status page and SMTP/IMAP transcripts without any list to update.
`Redactor` is the one way text is masked, with the one spelling `MASK`.
"""

from __future__ import annotations

import base64
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

__all__ = ["MASK", "Redactor", "Secret", "credential_forms", "is_secret_type", "secret_values"]

MASK = "[redacted]"

Secret = SecretStr  # the type that marks a configuration value secret

_MAX_DEPTH = 32  # configurations are a few levels deep; this only guards against a cycle


def secret_values(tree: object) -> list[str]:
    """Every secret value in `tree` (a pydantic model, or lists, tuples and mappings of them), in
    the order found, without duplicates or empty strings."""
    found: dict[str, None] = {}
    _walk(tree, found, 0)
    return list(found)


def is_secret_type(annotation: object) -> bool:
    """Whether a field of this type holds a secret: `Secret` itself, or an optional, union, list
    or mapping of it. A nested model is not: its own fields say."""
    if isinstance(annotation, type) and issubclass(annotation, SecretStr | SecretBytes):
        return True
    return any(is_secret_type(arg) for arg in typing.get_args(annotation))


def _walk(node: Any, found: dict[str, None], depth: int) -> None:
    if depth > _MAX_DEPTH or node is None:
        return
    if isinstance(node, SecretStr):
        value = node.get_secret_value()
        if value:
            found[value] = None
    elif isinstance(node, SecretBytes):
        value = node.get_secret_value().decode("utf-8", "replace")
        if value:
            found[value] = None
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            _walk(getattr(node, name, None), found, depth + 1)
    elif isinstance(node, Mapping):
        for value in node.values():
            _walk(value, found, depth + 1)
    elif isinstance(node, list | tuple | set | frozenset):
        for item in node:
            _walk(item, found, depth + 1)


def credential_forms(username: str | None, password: str | None) -> tuple[str, ...]:
    """A password as a server could echo it back: plain, and base64 as AUTH LOGIN and AUTH PLAIN
    send it."""
    if not password:
        return ()

    def b64(value: str) -> str:
        return base64.b64encode(value.encode()).decode("ascii")

    forms = [password, b64(password)]
    if username is not None:
        forms.append(b64(f"\0{username}\0{password}"))
    return tuple(forms)


class Redactor:
    """Replaces every secret in a text with `MASK`.

    Longest first, so a secret that contains another is masked whole. Secrets shorter than
    `min_length` are left alone: masking every "a" of a log line would hide more than it protects.
    """

    def __init__(self, secrets: Iterable[str] = (), *, min_length: int = 1) -> None:
        self._min_length = min_length
        self.secrets: tuple[str, ...] = ()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        """Mask these secrets from now on (the previous ones are replaced)."""
        wanted = {s for s in secrets if len(s) >= self._min_length and s}
        self.secrets = tuple(sorted(wanted, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __repr__(self) -> str:
        return f"Redactor({len(self.secrets)} secret(s))"
