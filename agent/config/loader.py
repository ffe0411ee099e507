"""Reading and validating a configuration file: the public entry points.

Reading (file -> dict) is kept apart from validating (dict -> Config) so that a reload or a
`check-config` command can report every problem at once: `read_config_file` parses the YAML
strictly (no duplicate or non-string keys), `validate_config` expands ${VAR}s and validates,
`load_config` does both. Each raises `ConfigError` listing every problem.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agent.config.errors import (
    ConfigError,
    _error_line,
    _is_secret,
    _Loc,
    _order,
    _problem_line,
    _show,
)
from agent.config.interpolation import _interpolate_tree
from agent.config.models import Config

__all__ = ["load_config", "read_config_file", "validate_config"]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate and non-string keys instead of silently accepting them."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            if (
                not isinstance(key_node, yaml.ScalarNode)
                or key_node.tag == "tag:yaml.org,2002:merge"
            ):
                continue
            key = self.construct_object(key_node)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"expected a string key, got {_show(key)} (quote the key)",
                    key_node.start_mark,
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


# Values in the document with every alias expanded. Aliases are fine for sharing a block of
# settings; a few nested ones ("billion laughs") expand a file of a few hundred bytes into
# billions of values, which validation would then walk. Real configs are far below this.
_MAX_EXPANDED_NODES = 100_000


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes the document has once every alias is expanded, computed without expanding
    (an alias is the same node object twice); ConstructorError past the bound or on a cycle."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise yaml.constructor.ConstructorError(
                None, None, "an alias refers to a node that contains it", node.start_mark
            )
        in_progress.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        in_progress.discard(key)
        if total > _MAX_EXPANDED_NODES:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"expands to more than {_MAX_EXPANDED_NODES} values through aliases (*name)",
                node.start_mark,
            )
        sizes[key] = total
        return total

    return size(root)


def _load_yaml(text: str) -> Any:
    """The document in `text`, refusing one that aliases expand beyond the bound."""
    loader = _StrictLoader(text)  # a SafeLoader subclass: as safe as safe_load
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The YAML mapping in `path`; ConfigError if it cannot be read or is not a YAML mapping."""
    source = os.fspath(path)
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(
            [f"{source}: cannot read the configuration file: {exc.strerror}"]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: expected UTF-8 text, got byte {exc.start}"]) from None
    try:
        data = _load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or "syntax error"
        context = ""
        if exc.context and exc.context_mark and mark and exc.context_mark.line != mark.line:
            context = f" ({exc.context} started at line {exc.context_mark.line + 1})"
        elif exc.context:
            context = f" ({exc.context})"
        raise ConfigError([f"{source}: {where}invalid YAML: {problem}{context}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {exc}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a mapping of settings, got {_show(data)}"])
    return data


def validate_config(
    data: Mapping[str, Any],
    *,
    base_dir: Path,
    environ: Mapping[str, str],
    source: str = "<config>",
    model: type[Config] = Config,
) -> Config:
    """Interpolate ${VAR}s from `environ`, then validate; relative paths resolve against base_dir.

    `source` names the file in error lines. `model` is the Config class to validate into: a
    subclass with further fields (tests, extensions) gets the same wording. Raises ConfigError
    listing every problem.
    """
    interpolation: list[tuple[_Loc, str]] = []
    expanded = _interpolate_tree(
        dict(data), environ, (), interpolation, lambda loc: _is_secret(loc, model)
    )
    try:
        config = model.model_validate(
            expanded, context={"base_dir": base_dir.expanduser().absolute()}
        )
    except ValidationError as exc:
        errors = exc.errors()
    else:
        if not interpolation:
            return config
        errors = []
    # A failed ${VAR} stands in as "", so its own errors would only repeat the real cause.
    broken = [loc for loc, _ in interpolation]
    lines = [(loc, _problem_line(source, loc, message)) for loc, message in interpolation]
    for err in errors:
        loc = tuple(err["loc"])
        knock_on = any(loc[: len(bad)] == bad for bad in broken)
        if err["type"] == "extra_forbidden" or not knock_on:
            lines.append((loc, _error_line(source, err, model)))
    lines.sort(key=lambda item: _order(item[0], model))
    raise ConfigError([line for _, line in lines])


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read and validate the config file at `path`; environ defaults to os.environ."""
    return validate_config(
        read_config_file(path),
        base_dir=Path(path).absolute().parent,
        environ=os.environ if environ is None else environ,
        source=os.fspath(path),
    )
