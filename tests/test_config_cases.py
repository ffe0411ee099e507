"""Every invalid config in tests/config_cases/ fails with exactly the message in its .error file.

Each case is `NAME.yaml` plus `NAME.error`; `{dir}` in an .error file stands for the cases folder
(resolved paths appear in some messages). A case with an .error but no .yaml checks the message
for a missing file. Every secret in the cases contains "sekret", which no message may contain.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config, read_config_file, validate_config

CASES = Path(__file__).parent / "config_cases"
CASE_NAMES = sorted(path.stem for path in CASES.glob("*.error"))


def test_config_cases_cover_each_kind_of_error() -> None:
    assert len(CASE_NAMES) >= 20
    orphans = {path.stem for path in CASES.glob("*.yaml")} - set(CASE_NAMES)
    assert not orphans, f"cases without an .error file: {sorted(orphans)}"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_config_case_fails_with_its_exact_message(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(CASES)  # so messages name the file as "NAME.yaml", as an operator types it
    expected = (CASES / f"{name}.error").read_text(encoding="utf-8").rstrip("\n")
    expected = expected.replace("{dir}", os.getcwd())

    with pytest.raises(ConfigError) as caught:
        load_config(f"{name}.yaml", environ={})

    message = str(caught.value)
    assert message == expected
    assert "sekret" not in message
    assert list(caught.value.problems) == expected.splitlines()
    assert "pydantic" not in message and "Input should" not in message


def test_config_reading_a_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        read_config_file(tmp_path)
    assert str(caught.value) == f"{tmp_path}: cannot read the configuration file: Is a directory"


def test_config_reading_non_utf8_bytes_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"listen: \xff\n")
    with pytest.raises(ConfigError) as caught:
        read_config_file(path)
    assert str(caught.value) == f"{path}: expected UTF-8 text, got byte 8"


def test_config_empty_file_reads_as_empty_mapping_then_reports_required_keys(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    assert read_config_file(path) == {}
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.problems == (
        f"{path}: secret: missing required key (or set secret_file)",
        f"{path}: routes: missing required key",
        f"{path}: mailboxes: missing required key",
    )


def test_config_yaml_anchors_and_merge_keys_are_not_duplicate_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "defaults: &defaults {host: 127.0.0.1, port: 2525}\n"
        "route: {<<: *defaults, port: 587, name: a}\n",
        encoding="utf-8",
    )
    assert read_config_file(path)["route"] == {"host": "127.0.0.1", "port": 587, "name": "a"}


def test_config_validate_names_the_source_given() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(
            {"secret": "x" * 16, "routes": [], "mailboxes": []},
            base_dir=Path("/etc/agent"),
            environ={},
            source="inline",
        )
    assert caught.value.problems == (
        "inline: routes: expected a list of at least one route",
        "inline: mailboxes: expected a list of at least one mailbox",
    )


def test_yaml_aliases_within_the_bound_share_settings(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "secret: s-0123456789abcdef\n"
        "routes:\n"
        "  - &submission {name: a, host: 127.0.0.1, from: probe@example.com, port: 587}\n"
        "  - {<<: *submission, name: b}\n"
    )
    data = read_config_file(path)
    assert [route["name"] for route in data["routes"]] == ["a", "b"]
    assert data["routes"][1]["port"] == 587
