"""The strict base model every configuration section derives from, and its validation context.

Each section's model reports raw-data checks (`_prepare`), field errors and cross-field checks
(`_check`) together, so a reload or a `check-config` command can report every problem at once.
Relative paths resolve against the `base_dir` that `validate_config` passes in the context.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from agent.config.errors import _Problems, _reraise


class _Model(BaseModel):
    """Strict, immutable base: unknown keys are refused and a loaded config cannot change."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        """Fill defaults derived from other raw keys and record problems visible in raw data."""

    def _check(self, problems: _Problems) -> None:
        """Record problems that involve more than one validated field."""

    @model_validator(mode="wrap")
    @classmethod
    def _validate(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo
    ) -> Self:
        # A wrap validator lets raw-data checks, field errors and cross-field checks all be
        # reported together instead of the first failing stage hiding the others.
        problems = _Problems()
        if isinstance(data, Mapping):
            data = dict(data)
            cls._prepare(data, problems, _base_dir(info))
        try:
            model = handler(data)
        except ValidationError as exc:
            _reraise(exc.title, exc.errors(), problems.details)
        model._check(problems)
        if problems.details:
            raise ValidationError.from_exception_data(cls.__name__, problems.details)
        return model


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context
    if isinstance(context, Mapping) and isinstance(context.get("base_dir"), Path):
        base: Path = context["base_dir"]
        return base
    return Path.cwd()  # validated without validate_config(): resolve against the working dir


def _resolve(raw: str | Path, base_dir: Path) -> Path:
    path = Path(raw).expanduser()
    return path if path.is_absolute() else base_dir / path
