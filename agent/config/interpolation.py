"""Values from outside the configuration file: ${VAR} from the environment, secrets from files.

`${VAR}` and `${VAR:-default}` are expanded in every string before validation (`$${` is a
literal `${`); a problem never quotes a reference inside a secret. A `*_file` key is replaced by
the file's content at load; a secret that cannot be read stands in as a placeholder, so its
problem is reported once, and never survives into a loaded Config.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from agent.config.base import _resolve
from agent.config.errors import _Loc, _Problems
from agent.secrets import Secret

# --- secrets read from files ---------------------------------------------------------------------

# Stands in for a secret that could not be read, so the problem is reported once (not again as
# "missing"); _fail_closed makes sure it never survives into a loaded Config.
_PLACEHOLDER: Final = "\x00unresolved\x00"


def _read_secret_file(
    data: dict[str, Any],
    problems: _Problems,
    base_dir: Path,
    *,
    value_key: str,
    file_key: str,
) -> None:
    """Replace `file_key` by the file's content under `value_key`, or record why it cannot be."""
    raw = data[file_key]
    data[value_key] = _PLACEHOLDER  # every early return below records a problem
    if not isinstance(raw, str) or not raw:
        problems.add((file_key,), "expected the path of a file", got=raw)
        data[file_key] = None  # reported here, not a second time by the field
        return
    path = _resolve(raw, base_dir)
    try:
        content = path.read_bytes().decode("utf-8")
    except OSError as exc:
        problems.add((file_key,), f"expected a readable file at {path} ({exc.strerror})", got=raw)
        return
    except UnicodeDecodeError:
        problems.add((file_key,), f"expected UTF-8 text in {path}", got=raw)
        return
    # Editors and `echo` add one newline; anything beyond that may be part of the secret.
    content = content.removesuffix("\n").removesuffix("\r") if content.endswith("\n") else content
    data[value_key] = content
    data[file_key] = str(path)


def _fail_closed(secret: Secret, key: str, problems: _Problems) -> None:
    if secret.get_secret_value() == _PLACEHOLDER and not problems.details:
        problems.add((key,), "could not be resolved")


# --- ${VAR} interpolation ------------------------------------------------------------------------

_REFERENCE_RE: Final = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_INNER_RE: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def _interpolate(value: str, environ: Mapping[str, str], *, secret: bool) -> tuple[str, list[str]]:
    """`value` with ${VAR} and ${VAR:-default} expanded and $${ unescaped; plus any problems.

    A problem quotes a bad reference only when `value` is not a secret: a password that happens
    to contain "${" must not be half-echoed.
    """
    out: list[str] = []
    problems: list[str] = []
    position = 0
    for match in _REFERENCE_RE.finditer(value):
        out.append(value[position : match.start()])
        position = match.end()
        token, inner = match.group(0), match.group(1)
        if token == "$${":
            out.append("${")
        elif inner is None:
            problems.append("unclosed ${ (write $${ for a literal ${)")
        elif (ref := _INNER_RE.fullmatch(inner)) is None:
            quoted = "" if secret else f" ${{{inner}}}"
            problems.append(
                f"invalid variable reference{quoted}: expected ${{NAME}} or ${{NAME:-default}} "
                "(write $${ for a literal ${)"
            )
        else:
            name, default = ref.group(1), ref.group(2)
            found = environ.get(name)
            if found is None or (found == "" and default is not None):
                if default is None:
                    problems.append(
                        f"environment variable {name} is not set "
                        f"(write ${{{name}:-default}} to give a default)"
                    )
                    found = ""
                else:
                    found = default
            out.append(found)
    out.append(value[position:])
    return "".join(out), problems


def _interpolate_tree(
    node: Any,
    environ: Mapping[str, str],
    loc: _Loc,
    problems: list[tuple[_Loc, str]],
    is_secret: Callable[[_Loc], bool],
) -> Any:
    """`node` with every string interpolated; `is_secret(loc)` says whose problems quote nothing."""
    if isinstance(node, dict):
        return {
            k: _interpolate_tree(v, environ, (*loc, k), problems, is_secret)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [
            _interpolate_tree(v, environ, (*loc, i), problems, is_secret)
            for i, v in enumerate(node)
        ]
    if isinstance(node, str) and "${" in node:
        value, found = _interpolate(node, environ, secret=is_secret(loc))
        problems.extend((loc, problem) for problem in found)
        return value
    return node
