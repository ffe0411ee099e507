"""The deploy bundle (deploy/) holds together without a container engine or a cluster.

Docker and Kubernetes are not available here, so each file is checked for what can be checked
offline: it parses; every path it references exists; the ports, paths, users and names that several
files must agree on do agree; the configs the agent reads in a container or a pod load with
agent.config; the systemd unit passes `systemd-analyze verify` and its security rating; the
Kubernetes objects validate against the Kubernetes schema (kubernetes-validate); Prometheus as
compose mounts it passes `promtool check config`; the PrometheusRule is generated from the rule
files and is never stale.

Tools: systemd-analyze, promtool and kubernetes-validate; a test skips when its tool is missing,
except under CI (CI set in the environment), where a missing tool fails it.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from agent.app.service import Agent
from agent.config import ConfigError, ListenAddress, Timeouts, load_config, validate_config
from agent.monitoring.catalog import new_registry
from agent.web.http_server import HttpServer, Status
from tests import prometheusrule

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "deliverability-agent.service"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
CONTAINER_CONFIG = DEPLOY / "container" / "config.yaml"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
EXAMPLE_ENV = COMPOSE_DIR / "example.env"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
DASHBOARDS_JSON = ROOT / "dashboards" / "json"
RULE_FILES = (
    DEPLOY / "prometheus" / "recording.rules.yml",
    DEPLOY / "prometheus" / "alerts.rules.yml",
)
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
K8S = DEPLOY / "kubernetes"
K8S_OPERATOR = K8S / "prometheus-operator"
K8S_SHARDED = DEPLOY / "kubernetes-sharded"
DEPLOY_DOCS = ROOT / "docs" / "deploy.md"

STATE_DIR = "/var/lib/deliverability-agent"
AGENT_USER = 10001  # the image's USER; the Deployment runs as it
K8S_VERSION = "1.29"  # oldest Kubernetes release still widely run; the manifests need nothing newer
VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")
DUMMY = "dummy-value-long-enough-0000"  # satisfies every ${VAR} the deploy configs use


# --- helpers -------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    """The path of an external checker; skips without it, fails without it under CI."""
    path = shutil.which(name)
    if path is None:
        _missing(f"{name} is not installed")
    assert path is not None
    return path


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must install it")
    pytest.skip(message)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _manifests(directory: Path) -> dict[str, Any]:
    """Every object of the *.yaml files (kustomization aside) in `directory`, by file name."""
    objects: dict[str, Any] = {}
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        assert len(documents) == 1, f"{path.name}: expected one object"
        objects[path.name] = documents[0]
    return objects


def _k8s(kind: str) -> Any:
    found = [
        obj
        for obj in [*_manifests(K8S).values(), *_manifests(K8S_OPERATOR).values()]
        if obj["kind"] == kind
    ]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _env_vars(text: str) -> tuple[set[str], set[str]]:
    """The ${VAR}s of a config text: (required ones, ones with a default)."""
    required = {m.group(1) for m in VAR_RE.finditer(text) if m.group(2) is None}
    optional = {m.group(1) for m in VAR_RE.finditer(text) if m.group(2) is not None}
    return required, optional


def _drain_bound() -> float:
    """How long a SIGTERM may take: the drain wait, or an SMTP transaction's default deadline."""
    drain = inspect.signature(Agent.stop).parameters["drain_timeout"].default
    total = Timeouts.model_fields["total"].default
    assert isinstance(drain, float) and isinstance(total, float)
    return max(drain, total)


# --- systemd -------------------------------------------------------------------------------------


def _unit() -> dict[str, dict[str, list[str]]]:
    """The unit's sections, each key with every value it is given (systemd allows repeats)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{line!r} is not Key=Value"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_runs_unprivileged_with_only_its_state_directory_writable() -> None:
    service = _unit()["Service"]

    def one(key: str) -> str:
        assert len(service.get(key, [])) == 1, f"{key}: expected exactly one value"
        return service[key][0]

    assert one("DynamicUser") == "yes" or one("User") not in ("", "root", "0")
    assert one("StateDirectory") == PurePosixPath(STATE_DIR).name
    # StateDirectory= is exempt from ProtectSystem=strict; any other writable path is refused.
    assert service.get("ReadWritePaths", [STATE_DIR]) == [STATE_DIR]
    assert one("ProtectSystem") == "strict"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert one(key) == "yes", key
    assert one("CapabilityBoundingSet") == ""
    assert set(one("RestrictAddressFamilies").split()) <= {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in service["SystemCallFilter"]
    assert one("Restart") == "on-failure"
    assert one("RestartPreventExitStatus") == "2"  # a bad config: restarting cannot help
    assert re.fullmatch(r"\S*kill -(HUP|s HUP|SIGHUP) \$MAINPID", one("ExecReload"))
    stop = re.fullmatch(r"(\d+)s?", one("TimeoutStopSec"))
    assert stop is not None and int(stop.group(1)) > _drain_bound()
    config = "--config /etc/deliverability-agent/config.yaml"
    assert one("ExecStart").endswith(f"deliverability-agent run {config}")
    secrets = one("EnvironmentFile").lstrip("-")
    assert secrets.startswith("/etc/deliverability-agent/")


def _verifiable_unit(tmp_path: Path) -> Path:
    """The unit with its programs replaced by stubs: verify checks that each is executable."""
    stub = tmp_path / "stub"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    text = UNIT.read_text(encoding="utf-8")
    programs = set(re.findall(r"^Exec\w+=-?(/\S+)", text, flags=re.MULTILINE))
    assert programs, "no absolute program in Exec*= lines"
    for program in programs:
        text = text.replace(program, str(stub))
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    return unit


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    unit = _verifiable_unit(tmp_path)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr  # verify warns on stderr but exits 0


def test_systemd_unit_exposure_is_rated_ok_by_systemd_analyze_security(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    unit = _verifiable_unit(tmp_path)
    # Exposure runs from 0 (locked down) to 10; the threshold is in tenths. 2.0 is "OK".
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_systemd_docs_set_state_dir_to_the_units_state_directory() -> None:
    assert f"state_dir: {STATE_DIR}" in DEPLOY_DOCS.read_text(encoding="utf-8")
    assert _unit()["Service"]["StateDirectory"] == [PurePosixPath(STATE_DIR).name]


# --- container image -----------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Containerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in CONTAINERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    assert not pending, "the Containerfile ends in a continuation line"
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, args in _instructions():
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args))
    return stages


def _base_image(from_args: str) -> str:
    """The image a FROM names, with global ARG defaults substituted."""
    defaults = dict(
        args.split("=", 1) for instruction, args in _instructions() if instruction == "ARG"
    )
    image = from_args.split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)


def _copies(stage: list[tuple[str, str]]) -> list[tuple[list[str], list[str], str]]:
    """(flags, sources, destination) of each COPY of a stage."""
    copies = []
    for instruction, args in stage:
        if instruction != "COPY":
            continue
        words = json.loads(args) if args.startswith("[") else shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        copies.append((flags, paths[:-1], paths[-1]))
    return copies


def _exec_form(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    (args,) = [a for i, a in stage if i == instruction]
    value = json.loads(args)
    assert isinstance(value, list), f"{instruction}: expected the exec (JSON) form"
    return [str(v) for v in value]


def _healthcheck_command() -> list[str]:
    (args,) = [a for i, a in _stages()[-1] if i == "HEALTHCHECK"]
    _, sep, command = args.partition("CMD ")
    assert sep, "HEALTHCHECK without CMD"
    value = json.loads(command)
    assert isinstance(value, list)
    return [str(v) for v in value]


def _container_env() -> dict[str, str]:
    """Every variable deploy/compose/example.env names, each with a dummy value."""
    names = re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", EXAMPLE_ENV.read_text(), flags=re.MULTILINE)
    env = dict.fromkeys(names, DUMMY)
    env.update(PROBE_FROM="Probe <probe@example.com>", SEED_ADDRESS="seed@example.com")
    env.update(SMTP_PORT="", IMAP_PORT="", PROBE_INTERVAL="", PROBE_DEADLINE="", LOG_LEVEL="")
    env.update(SEED_PROVIDER="")  # a profile name (gmail, microsoft365, ...): the default, other
    return env


def test_containerfile_has_python_311_slim_stages_and_a_numeric_non_root_user() -> None:
    stages = _stages()
    assert len(stages) >= 2
    assert {_base_image(stage[0][1]) for stage in stages} == {"python:3.11-slim"}
    final = stages[-1]
    (user,) = [args for instruction, args in final if instruction == "USER"]
    uid, _, gid = user.partition(":")
    assert int(uid) == AGENT_USER and int(gid or uid) == AGENT_USER
    # The runtime stage gets the built virtualenv, not the sources.
    assert any("--from=build" in flags for flags, _, _ in _copies(final)), (
        "the runtime stage should copy the build stage's virtualenv"
    )
    assert not any(src == ["agent/"] for _, src, _ in _copies(final))


def test_containerfile_serves_and_stores_where_the_container_config_says() -> None:
    config = load_config(CONTAINER_CONFIG, environ=_container_env())
    final = dict(_stages()[-1])
    assert config.listen == ListenAddress("0.0.0.0", config.listen.port)
    assert final["EXPOSE"].split() == [str(config.listen.port)]
    assert json.loads(final["VOLUME"]) == [str(config.state_dir)] == [STATE_DIR]
    (destination,) = [
        dest for _, src, dest in _copies(_stages()[-1]) if src == ["deploy/container/config.yaml"]
    ]
    entrypoint = _exec_form(_stages()[-1], "ENTRYPOINT") + _exec_form(_stages()[-1], "CMD")
    assert entrypoint == ["deliverability-agent", "run", "--config", destination]
    healthcheck = _healthcheck_command()
    assert healthcheck[:2] == ["python", "-c"]
    assert f"http://127.0.0.1:{config.listen.port}/healthz" in healthcheck[2]
    assert config.http.tls is None  # the probes speak plain HTTP


def test_containerfile_copy_sources_exist_in_the_build_context() -> None:
    checked = 0
    for stage in _stages():
        for flags, sources, _ in _copies(stage):
            if any(flag.startswith("--from=") for flag in flags):
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                checked += 1
    assert checked >= 4


def test_containerfile_build_stage_copies_enough_to_build_the_package(tmp_path: Path) -> None:
    """Builds an sdist from exactly what the build stage copies, as `pip install .` would."""
    src = tmp_path / "src"
    src.mkdir()
    for flags, sources, destination in _copies(_stages()[0]):
        assert not flags
        for source in sources:
            target = src / destination if destination.endswith("/") and destination != "./" else src
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, target / Path(source).name)
    out = tmp_path / "dist"
    build = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    result = subprocess.run(
        [sys.executable, "-c", build, str(out)],
        cwd=src,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        packaged = {PurePosixPath(*PurePosixPath(n).parts[1:]) for n in archive.getnames()}
    modules = {PurePosixPath(p.relative_to(ROOT).as_posix()) for p in (ROOT / "agent").glob("*.py")}
    assert modules <= packaged, sorted(map(str, modules - packaged))
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert PurePosixPath(readme) in packaged, "the package's readme was not copied"


@pytest.mark.parametrize("healthy", [True, False])
def test_container_healthcheck_passes_only_while_healthz_answers_200(healthy: bool) -> None:
    command = _healthcheck_command()
    server = HttpServer(
        new_registry(),
        host="127.0.0.1",
        port=0,
        health=lambda: Status(healthy, "test"),
        readiness=lambda: Status(True, "test"),
    )
    try:
        code = command[2].replace(":9465/", f":{server.port}/")
        assert code != command[2]
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=30
        )
    finally:
        server.close()
    assert (result.returncode == 0) is healthy, result.stderr


def test_container_config_needs_exactly_what_compose_passes_and_example_env_names() -> None:
    required, optional = _env_vars(CONTAINER_CONFIG.read_text(encoding="utf-8"))
    environment = _yaml(COMPOSE)["services"]["agent"]["environment"]
    compose_required = {k for k, v in environment.items() if re.fullmatch(r"\$\{\w+:\?.*\}", v)}
    compose_optional = {k for k, v in environment.items() if re.fullmatch(r"\$\{\w+:-\}", v)}
    assert compose_required == required
    assert compose_optional == optional
    assert set(environment) == required | optional
    assert (required | optional) <= set(_container_env())
    with pytest.raises(ConfigError) as missing:
        load_config(CONTAINER_CONFIG, environ={})
    assert len(missing.value.problems) == len(required)


# --- compose -------------------------------------------------------------------------------------


def _bind_mounts(service: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    """(source on the host, target in the container) of each bind mount of a compose service."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            yield (COMPOSE_DIR / source).resolve(), target


def _mount_target(service: str, source: Path) -> str:
    services = _yaml(COMPOSE)["services"]
    (target,) = [t for s, t in _bind_mounts(services[service]) if s == source.resolve()]
    return target


def test_compose_file_references_only_paths_that_exist() -> None:
    compose = _yaml(COMPOSE)
    assert set(compose["services"]) == {"agent", "prometheus", "alertmanager", "grafana"}
    build = compose["services"]["agent"]["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == CONTAINERFILE
    mounts = 0
    for name, service in compose["services"].items():
        for source, _ in _bind_mounts(service):
            assert source.exists(), f"{name}: bind mount source {source} does not exist"
            mounts += 1
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
    assert mounts >= 7


def test_compose_agent_mounts_the_container_config_and_keeps_its_state() -> None:
    config = load_config(CONTAINER_CONFIG, environ=_container_env())
    agent = _yaml(COMPOSE)["services"]["agent"]
    assert _mount_target("agent", CONTAINER_CONFIG) == "/etc/deliverability-agent/config.yaml"
    assert f"agent-state:{config.state_dir}" in agent["volumes"]
    assert f"127.0.0.1:{config.listen.port}:{config.listen.port}" in agent["ports"]
    grace = re.fullmatch(r"(\d+)s", agent["stop_grace_period"])
    assert grace is not None and int(grace.group(1)) > _drain_bound()
    assert agent["image"].endswith(":" + _project_version())


def _project_version() -> str:
    from agent import __version__

    return __version__


def _compose_prometheus() -> dict[str, Any]:
    config = _yaml(COMPOSE_DIR / "prometheus.yml")
    assert isinstance(config, dict)
    return config


def test_compose_prometheus_loads_every_rule_file_and_scrapes_the_agent() -> None:
    config = _compose_prometheus()
    command = _yaml(COMPOSE)["services"]["prometheus"]["command"]
    config_target = PurePosixPath(_mount_target("prometheus", COMPOSE_DIR / "prometheus.yml"))
    assert f"--config.file={config_target}" in command
    rule_targets = {PurePosixPath(_mount_target("prometheus", path)) for path in RULE_FILES}
    assert sorted(prometheusrule.rule_files()) == sorted(RULE_FILES)
    for target in rule_targets:
        assert any(
            target.match(str(config_target.parent / pattern)) for pattern in config["rule_files"]
        ), f"{target} is mounted but no rule_files pattern loads it"
    listen = load_config(CONTAINER_CONFIG, environ=_container_env()).listen
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": [f"agent:{listen.port}"]}]
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"] == [{"targets": ["alertmanager:9093"]}]


def test_compose_prometheus_config_passes_promtool_with_the_mounts_in_place(
    tmp_path: Path,
) -> None:
    """Lays out the container's /etc/prometheus from the bind mounts, then runs promtool on it."""
    promtool = _tool("promtool")
    service = _yaml(COMPOSE)["services"]["prometheus"]
    for source, target in _bind_mounts(service):
        if target.startswith("/etc/prometheus/"):
            placed = tmp_path / target.lstrip("/")
            placed.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, placed)
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "etc/prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for path in RULE_FILES:  # promtool names each rule file it loaded and checked
        assert path.name in result.stdout, result.stdout


def test_compose_alertmanager_runs_the_example_config() -> None:
    target = _mount_target("alertmanager", ALERTMANAGER_CONFIG)
    command = _yaml(COMPOSE)["services"]["alertmanager"]["command"]
    assert f"--config.file={target}" in command
    assert isinstance(_yaml(ALERTMANAGER_CONFIG), dict)


def test_rules_select_the_job_that_compose_and_kubernetes_scrape() -> None:
    """A `job` matcher in a rule must match the agent's job in both deployments."""
    jobs = {
        _compose_prometheus()["scrape_configs"][0]["job_name"],
        _k8s("Service")["metadata"]["name"],  # a ServiceMonitor's job label is the Service name
    }
    assert jobs == {"deliverability-agent"}
    matchers = []
    for path in RULE_FILES:
        for group in _yaml(path)["groups"]:
            for rule in group["rules"]:
                matchers += re.findall(r'\bjob\s*(=~|!=|!~|=)\s*"([^"]*)"', rule["expr"])
    for operator, value in matchers:
        for job in jobs:
            if operator == "=":
                assert value == job, f'job="{value}" does not select {job}'
            elif operator == "=~":
                assert re.fullmatch(value, job), f'job=~"{value}" does not select {job}'


# --- Grafana -------------------------------------------------------------------------------------


def test_grafana_provisioning_points_at_the_generated_dashboards() -> None:
    grafana = _yaml(COMPOSE)["services"]["grafana"]
    assert _mount_target("grafana", GRAFANA_PROVISIONING) == "/etc/grafana/provisioning"
    (provider,) = _yaml(GRAFANA_PROVISIONING / "dashboards" / "deliverability.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == _mount_target("grafana", DASHBOARDS_JSON)
    names = sorted(path.name for path in DASHBOARDS_JSON.glob("*.json"))
    assert {"overview.json", "route.json"} <= set(names)
    uids = [json.loads(p.read_text())["uid"] for p in sorted(DASHBOARDS_JSON.glob("*.json"))]
    assert len(set(uids)) == len(uids), "two dashboards share a uid"
    (datasource,) = _yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert "9090:9090" in _yaml(COMPOSE)["services"]["prometheus"]["ports"][0]
    assert "GF_SECURITY_ADMIN_PASSWORD" in grafana["environment"]


def _datasource_refs(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            else:
                yield from _datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_refs(item)


def test_grafana_dashboards_use_only_the_provisioned_datasource_or_a_datasource_variable() -> None:
    """File provisioning resolves neither __inputs (${DS_...}) nor unknown datasource uids."""
    (datasource,) = _yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    known = {datasource["uid"], datasource["name"]}
    checked = 0
    for path in sorted(DASHBOARDS_JSON.glob("*.json")):
        dashboard = json.loads(path.read_text())
        variables = {
            v["name"]: v
            for v in dashboard.get("templating", {}).get("list", [])
            if v.get("type") == "datasource"
        }
        for variable in variables.values():
            assert variable["query"] == "prometheus", f"{path.name}: {variable['name']}"
        for ref in _datasource_refs(dashboard):
            if ref is None:
                continue
            if isinstance(ref, dict):
                if ref.get("type") in ("grafana", "datasource"):  # built-in annotations
                    continue
                assert ref.get("type") in (None, "prometheus"), f"{path.name}: {ref}"
                ref = ref.get("uid")
                if ref is None:
                    continue
            checked += 1
            if ref.startswith("$"):
                name = ref.strip("${}").split(":")[0]
                assert name in variables, f"{path.name}: {ref} is not a datasource variable"
            else:
                assert ref in known, f"{path.name}: datasource {ref!r} is not provisioned"
    assert checked > 0


# --- Kubernetes ----------------------------------------------------------------------------------


def test_kubernetes_kustomizations_list_every_manifest_and_nothing_is_namespaced() -> None:
    for directory in (K8S, K8S_OPERATOR):
        kustomization = _yaml(directory / "kustomization.yaml")
        objects = _manifests(directory)
        assert sorted(kustomization["resources"]) == sorted(objects), directory
        for name, obj in objects.items():
            assert {"apiVersion", "kind", "metadata"} <= set(obj), name
            assert obj["metadata"]["name"].startswith("deliverability-agent"), name
            assert "namespace" not in obj["metadata"], f"{name}: applies to any namespace"
            assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "deliverability-agent"


def test_kubernetes_manifests_validate_against_the_kubernetes_schema() -> None:
    try:
        validator: Any = importlib.import_module("kubernetes_validate")
    except ImportError:
        _missing("kubernetes-validate is not installed")
    checked = 0
    for name, obj in _manifests(K8S).items():
        try:
            validator.validate(obj, K8S_VERSION, strict=True)
        except validator.ValidationError as exc:
            pytest.fail(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
        checked += 1
    assert checked == 5


def test_kubernetes_deployment_is_one_recreated_non_root_pod_probed_on_the_listen_port() -> None:
    deployment = _k8s("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > _drain_bound()
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == security["runAsGroup"] == security["fsGroup"] == AGENT_USER
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert container["image"] == f"deliverability-agent:{_project_version()}"

    config = _k8s_config()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = container[probe]["httpGet"]
        assert http["path"] == path
        assert ports.get(http["port"], http["port"]) == config.listen.port
        assert http.get("scheme", "HTTP") == "HTTP" and config.http.tls is None

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_path = PurePosixPath(container["args"][container["args"].index("--config") + 1])
    assert mounts["config"] == str(config_path.parent)
    assert volumes["config"]["configMap"]["name"] == _k8s("ConfigMap")["metadata"]["name"]
    assert config_path.name in _k8s("ConfigMap")["data"]
    assert mounts["state"] == str(config.state_dir) == STATE_DIR
    claim = _k8s("PersistentVolumeClaim")
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    (env_from,) = container["envFrom"]
    assert env_from["secretRef"]["name"] == _k8s("Secret")["metadata"]["name"]


def _k8s_config() -> Any:
    """The ConfigMap's config.yaml, validated with a dummy value for each Secret key."""
    text = _k8s("ConfigMap")["data"]["config.yaml"]
    environ = dict.fromkeys(_k8s("Secret")["stringData"], DUMMY)
    return validate_config(
        yaml.safe_load(text),
        base_dir=Path("/etc/deliverability-agent"),
        environ=environ,
        source="configmap.yaml:config.yaml",
    )


def test_kubernetes_configmap_config_validates_with_the_secret_supplying_every_variable() -> None:
    text = _k8s("ConfigMap")["data"]["config.yaml"]
    required, _ = _env_vars(text)
    assert required == set(_k8s("Secret")["stringData"])
    config = _k8s_config()
    assert config.listen == ListenAddress("0.0.0.0", 9465)
    assert config.secret.get_secret_value() == DUMMY


def test_kubernetes_secret_placeholders_keep_the_agent_from_starting() -> None:
    text = _k8s("ConfigMap")["data"]["config.yaml"]
    with pytest.raises(ConfigError, match=r"secret: expected at least 16 characters"):
        validate_config(
            yaml.safe_load(text),
            base_dir=Path("/etc/deliverability-agent"),
            environ=_k8s("Secret")["stringData"],
        )


def test_kubernetes_service_and_servicemonitor_select_the_agents_metrics_port() -> None:
    pod = _k8s("Deployment")["spec"]["template"]
    service = _k8s("Service")
    monitor = _k8s("ServiceMonitor")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    (container,) = pod["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint["path"] == "/metrics"


# --- Kubernetes, sharded replicas (docs/scaling.md) ---------------------------------------------


def _merged(base: Any, patch: Any) -> Any:
    """A strategic merge of maps (what the kustomization's patches need: no lists)."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return patch
    return {**base, **{key: _merged(base.get(key), value) for key, value in patch.items()}}


def _sharded_bundle() -> dict[tuple[str, str], Any]:
    """What `kubectl apply -k deploy/kubernetes-sharded` applies, built offline as its
    kustomization says: the base's objects, less those its patches delete, patched, plus its own
    (cross-checked against kustomize itself below, where kubectl is installed)."""
    kustomization = _yaml(K8S_SHARDED / "kustomization.yaml")
    own = _manifests(K8S_SHARDED)
    assert kustomization["resources"] == ["../kubernetes", *sorted(own)]
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _manifests(K8S).values()}
    for entry in kustomization["patches"]:
        patch = yaml.safe_load(entry["patch"])
        key = (patch["kind"], patch["metadata"]["name"])
        assert key in objects, key
        if patch.pop("$patch", None) == "delete":
            del objects[key]
        else:
            objects[key] = _merged(objects[key], patch)
    for obj in own.values():
        objects[obj["kind"], obj["metadata"]["name"]] = obj
    return objects


def test_sharded_bundle_is_a_statefulset_with_a_ledger_volume_per_replica() -> None:
    bundle = _sharded_bundle()
    assert sorted(kind for kind, _ in bundle) == ["ConfigMap", "Secret", "Service", "StatefulSet"]
    (statefulset,) = (obj for (kind, _), obj in bundle.items() if kind == "StatefulSet")
    (service,) = (obj for (kind, _), obj in bundle.items() if kind == "Service")
    spec = statefulset["spec"]
    # Headless, and the one Service the ServiceMonitor selects: each pod scraped once.
    assert service["spec"]["clusterIP"] == "None"
    assert spec["serviceName"] == service["metadata"]["name"]
    monitor = _k8s("ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert monitor.items() <= service["metadata"]["labels"].items()
    # Each replica its own ledger: a claim template mounted at the state dir, never a shared claim.
    (template,) = spec["volumeClaimTemplates"]
    assert template["metadata"]["name"] == "state"
    assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
    pod = spec["template"]["spec"]
    assert not any("persistentVolumeClaim" in volume for volume in pod["volumes"])
    (container,) = pod["containers"]
    assert {"name": "state", "mountPath": STATE_DIR} in container["volumeMounts"]
    assert spec["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
    # The shard: the pod's ordinal and a count that is the replica count.
    assert container["args"][-1] == "--shard-index-from-hostname"
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env == {"DELIVERABILITY_SHARD_COUNT": str(spec["replicas"])}
    assert spec["replicas"] > 1
    # SIGTERM drains within the grace period, as the single agent's does.
    assert pod["terminationGracePeriodSeconds"] > _drain_bound()


def test_sharded_pod_is_the_single_agents_pod_but_for_the_sharding_lines() -> None:
    (statefulset,) = _manifests(K8S_SHARDED).values()
    pod = json.loads(json.dumps(statefulset["spec"]["template"]))
    (container,) = pod["spec"]["containers"]
    container["args"].remove("--shard-index-from-hostname")
    del container["env"]
    single = json.loads(json.dumps(_k8s("Deployment")["spec"]["template"]))
    single["spec"]["volumes"] = [v for v in single["spec"]["volumes"] if v["name"] != "state"]
    assert pod == single


def test_sharded_bundle_validates_against_the_kubernetes_schema() -> None:
    try:
        validator: Any = importlib.import_module("kubernetes_validate")
    except ImportError:
        _missing("kubernetes-validate is not installed")
    for (kind, name), obj in _sharded_bundle().items():
        try:
            validator.validate(obj, K8S_VERSION, strict=True)
        except validator.ValidationError as exc:
            pytest.fail(f"{kind}/{name}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_sharded_bundle_is_what_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the offline build above is checked anyway)")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S_SHARDED)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    built = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(result.stdout) if o}
    assert built == _sharded_bundle()


# --- PrometheusRule ------------------------------------------------------------------------------


def test_prometheusrule_render_holds_every_group_of_every_rule_file_in_order(
    tmp_path: Path,
) -> None:
    expr = 'sum by (route) (\n  rate(deliverability_probes_total{outcome="rejected"}[1h])\n)\n'
    (tmp_path / "b.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "b", "rules": [{"alert": "B", "expr": expr}]}]})
    )
    (tmp_path / "a.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "a1", "rules": []}, {"name": "a2", "rules": []}]})
    )
    (tmp_path / "ignored.yml").write_text("groups: [{name: ignored, rules: []}]\n")

    text = prometheusrule.render(tmp_path)

    rendered = yaml.safe_load(text)
    assert rendered["kind"] == "PrometheusRule"
    assert [g["name"] for g in rendered["spec"]["groups"]] == ["a1", "a2", "b"]
    assert rendered["spec"]["groups"][2]["rules"][0]["expr"] == expr
    assert "expr: |" in text  # PromQL stays readable as a literal block
    assert text.startswith("# Generated from ")


def test_prometheusrule_is_regenerated_from_the_rule_files() -> None:
    committed = prometheusrule.OUTPUT.read_text(encoding="utf-8")
    assert committed == prometheusrule.render(), (
        "deploy/kubernetes/prometheus-operator/prometheusrule.yaml is stale: "
        "run `python -m tests.prometheusrule`"
    )
    groups = yaml.safe_load(committed)["spec"]["groups"]
    names = [group["name"] for group in groups]
    assert len(set(names)) == len(names), "group names must be unique"
    expected = [group["name"] for path in RULE_FILES for group in _yaml(path)["groups"]]
    assert sorted(names) == sorted(expected)


def test_prometheusrule_groups_pass_promtool_check_rules(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    spec = yaml.safe_load(prometheusrule.OUTPUT.read_text(encoding="utf-8"))["spec"]
    rules = tmp_path / "prometheusrule.rules.yml"
    rules.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- docs ----------------------------------------------------------------------------------------


def test_deploy_docs_name_only_files_that_exist() -> None:
    text = DEPLOY_DOCS.read_text(encoding="utf-8")
    user_made = {"deploy/compose/.env"}
    paths = set(re.findall(r"\b((?:deploy|dashboards|docs)/[\w./-]*\w)", text)) - user_made
    assert len(paths) >= 10
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/deploy.md names files that do not exist: {missing}"


def test_every_deploy_yaml_file_parses() -> None:
    paths = [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]
    assert len(paths) >= 15
    for path in paths:
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError as exc:
            pytest.fail(f"{path.relative_to(ROOT)}: {exc}")
        assert any(documents), f"{path.relative_to(ROOT)} is empty"
