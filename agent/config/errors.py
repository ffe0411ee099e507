"""Configuration errors and their wording.

Every failure is a `ConfigError` whose lines each read `<file>: <key.path>: <what was expected>,
got <value>`; secrets are never echoed (`_is_secret`: a field typed `Secret`, or a key named
like one). Validators raise `_invalid` for one value; a model's own checks collect `_Problems`;
`_error_line` turns each pydantic error into one such line.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final, NoReturn

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from agent.errors import AgentError, ErrorCategory
from agent.secrets import is_secret_type

__all__ = ["ConfigError"]


class ConfigError(AgentError):
    """The configuration cannot be used; `str()` lists every problem, one per line."""

    category = ErrorCategory.CONFIG

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


# --- problems raised from inside validation ------------------------------------------------------

_PROBLEM: Final = "config"  # pydantic error type of every problem our own validators report
_SHOW: Final = "show_input"  # context key: may the input be echoed after the message
_HIDDEN: Final = object()  # "do not echo a value" marker for _Problems.add
_SECRET_KEYS: Final = frozenset({"password", "secret", "auth"})

_Loc = tuple[str | int, ...]


def _invalid(message: str, *, show: bool = True) -> PydanticCustomError:
    """An error for a single-value validator; pydantic attaches the key path and the input."""
    return PydanticCustomError(_PROBLEM, message, {_SHOW: show})


class _Problems:
    """Problems found by a model's own checks, each at a key path relative to that model."""

    def __init__(self) -> None:
        self.details: list[InitErrorDetails] = []

    def add(self, loc: _Loc, message: str, *, got: object = _HIDDEN) -> None:
        shown = got is not _HIDDEN
        self.details.append(
            InitErrorDetails(
                type=_invalid(message, show=shown), loc=loc, input=got if shown else None
            )
        )


def _reraise(
    title: str, errors: Sequence[ErrorDetails], extra: Sequence[InitErrorDetails]
) -> NoReturn:
    """Raise one ValidationError holding pydantic's errors and ours, so none hides another."""
    details: list[InitErrorDetails] = []
    for err in errors:
        ctx = err.get("ctx")
        if err["type"] == _PROBLEM:
            details.append(
                InitErrorDetails(
                    type=PydanticCustomError(_PROBLEM, err["msg"], ctx),
                    loc=err["loc"],
                    input=err["input"],
                )
            )
        else:
            detail = InitErrorDetails(type=err["type"], loc=err["loc"], input=err["input"])
            if ctx is not None:
                detail["ctx"] = ctx
            details.append(detail)
    raise ValidationError.from_exception_data(title, [*details, *extra])


# --- turning errors into lines -----------------------------------------------------------------


def _format_loc(loc: _Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The config model inside an annotation such as `tuple[Route, ...]` or `Auth | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _model_in(typing.get_args(annotation)[0])
    if origin in (tuple, list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _known_keys(loc: _Loc, root: type[BaseModel]) -> list[str]:
    """The keys the model at `loc` (below `root`) accepts, for a "did you mean" hint."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        model = None if field is None else _model_in(field.annotation)
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _is_secret(loc: _Loc, root: type[BaseModel]) -> bool:
    """Whether the value at `loc` (below `root`) may be a secret, so never to be echoed: under a
    key named like one, or in a field typed secret (which needs no list to be kept)."""
    last_key = next((p for p in reversed(loc) if isinstance(p, str)), None)
    if last_key in _SECRET_KEYS:
        return True
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None:
            return False
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return False
        if is_secret_type(field.annotation):
            return True
        model = _model_in(field.annotation)
    return False


def _explain(err: ErrorDetails, root: type[BaseModel]) -> tuple[str, bool]:
    """Our wording for one pydantic error, and whether its input may be echoed."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == _PROBLEM:
        return err["msg"], bool(ctx.get(_SHOW, True))
    if kind == "missing":
        return "missing required key", False
    if kind == "extra_forbidden":
        key = err["loc"][-1]
        hint = difflib.get_close_matches(str(key), _known_keys(err["loc"][:-1], root), n=1)
        return "unknown key" + (f" (did you mean '{hint[0]}'?)" if hint else ""), False
    if kind in ("enum", "literal_error"):
        return f"expected {ctx['expected']}", True
    if kind in ("too_short", "string_too_short"):
        size = ctx.get("min_length", 1)
        if isinstance(err["input"], str):
            return f"expected at least {size} character{'s' * (size != 1)}", True
        return (
            "expected a non-empty list" if size == 1 else f"expected at least {size} items"
        ), False
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {
            "greater_than": "greater than {}",
            "greater_than_equal": "at least {}",
            "less_than": "less than {}",
            "less_than_equal": "at most {}",
        }[kind]
        return "expected a value " + words.format(next(iter(ctx.values()), "")), True
    simple = {
        "string_type": "expected a string",
        "string_unicode": "expected a string",
        "int_type": "expected an integer",
        "int_parsing": "expected an integer",
        "int_from_float": "expected an integer",
        "float_type": "expected a number",
        "float_parsing": "expected a number",
        "finite_number": "expected a finite number",
        "bool_type": "expected true or false",
        "bool_parsing": "expected true or false",
        "path_type": "expected a path",
        "model_type": "expected a mapping",
        "model_attributes_type": "expected a mapping",
        "dict_type": "expected a mapping",
        "list_type": "expected a list",
        "tuple_type": "expected a list",
        "iterable_type": "expected a list",
        "invalid_key": "expected a string key",
    }
    if kind in simple:
        return simple[kind], True
    if kind in ("value_error", "assertion_error"):
        return str(err["msg"]).removeprefix("Value error, ").removeprefix(
            "Assertion failed, "
        ), True
    return f"invalid value ({kind})", True


def _problem_line(source: str, loc: _Loc, message: str) -> str:
    path = _format_loc(loc)
    return f"{source}: {path}: {message}" if path else f"{source}: {message}"


def _error_line(source: str, err: ErrorDetails, root: type[BaseModel]) -> str:
    loc = tuple(err["loc"])
    message, show = _explain(err, root)
    if show and not _is_secret(loc, root):
        message += f", got {_show(err['input'])}"
    return _problem_line(source, loc, message)


def _order(loc: _Loc, root: type[BaseModel]) -> tuple[int, int]:
    """Sort key grouping problems by top-level key in documentation order, then list index."""
    if not loc:
        return (-1, -1)
    top_keys = [field.alias or name for name, field in root.model_fields.items()]
    first = loc[0]
    rank = top_keys.index(first) if first in top_keys else len(top_keys)
    index = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else -1
    return (rank, index)
