"""docker-compose.yml and the Dockerfile agree with the code (no Docker needed).

What a deployer relies on when running `docker compose up`: the six services
exist, Redis keeps RQ's keys (SPEC 5), the app reaches Postgres and Redis by
their service names with the credentials the postgres service creates, the app
starts only after a successful migration, the image runs the Procfile's web
process, and every environment variable given to the app is one the settings
actually read (a misspelt name would be silently ignored).

The optional "monitoring" profile (Prometheus and Grafana, files under deploy/):
neither starts on a plain `docker compose up`, every file they mount is in the
repo, Prometheus scrapes the api where compose runs it, Grafana's provisioning
points at what is mounted, and every PromQL expression in the dashboard and the
alerts names only metrics that api/metrics.py exports.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
APP_SERVICES = ("migrate", "api", "worker", "maintain")
RUNNING_APP_SERVICES = ("api", "worker")
DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"
ALERTS_FILE = DEPLOY / "alerts.yml"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "selftune-ingest.json"
GRAFANA_DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "selftune.yml"
MONITORING_SERVICES = ("prometheus", "grafana")
MONITORING_PROFILE = "monitoring"
PROMETHEUS_DEFAULT_CONFIG = "/etc/prometheus/prometheus.yml"  # the image's default --config.file
PROMETHEUS_PORT = 9090
METRIC_NAME = re.compile(r"\bselftune_ingest_[a-zA-Z0-9_]+")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whether written as a mapping or a KEY=VALUE list."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _argv(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """{dependency: condition}; the short list form means service_started."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _dockerfile_cmd(path: Path) -> list[str]:
    cmds = [args for keyword, args in _dockerfile_instructions(path) if keyword == "CMD"]
    assert cmds, f"{path.name} has no CMD"
    last = cmds[-1]  # only the last CMD counts
    return json.loads(last) if last.startswith("[") else shlex.split(last)


def _procfile_web_line() -> str:
    """The Procfile's web command, without its `web:` label."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.removeprefix("web:")
    raise AssertionError("the Procfile has no web process")


def _procfile_web_app() -> str:
    """The `module:attribute` that the Procfile's web process serves."""
    line = _procfile_web_line()
    match = re.search(r"\buvicorn\s+([\w.]+:\w+)", line)
    assert match, f"no uvicorn app in the Procfile's web line: {line!r}"
    return match.group(1)


def _api_argv(services: dict[str, dict[str, Any]]) -> list[str]:
    """What the compose api service runs: its command, or else the image's CMD."""
    return _argv(services["api"].get("command")) or _dockerfile_cmd(DOCKERFILE)


def _env_names_read_by_settings() -> set[str]:
    source = (ROOT / "runtime" / "settings.py").read_text()
    return set(re.findall(r'"([A-Z][A-Z0-9_]*)"', source))


def test_all_six_services_are_defined(services: dict[str, dict[str, Any]]) -> None:
    missing = {"postgres", "redis", "migrate", "api", "worker", "maintain"} - services.keys()
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_redis_persists_and_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    argv = _argv(services["redis"].get("command"))
    options = dict(zip(argv[1::2], argv[2::2], strict=False)) if argv[:1] == ["redis-server"] else {}
    assert options.get("--appendonly") == "yes", f"redis must run with --appendonly yes (SPEC 5): {argv}"
    assert options.get("--maxmemory-policy") == "noeviction", (
        f"redis must run with --maxmemory-policy noeviction (SPEC 5): {argv}"
    )
    assert options.get("--rdbcompression") == "no", f"queued batches are lz4 already: --rdbcompression no: {argv}"
    mounts = [str(v).split(":")[1] for v in services["redis"].get("volumes", []) if ":" in str(v)]
    assert "/data" in mounts, "redis's /data (the append-only file) must be on a volume"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_reaches_postgres_by_service_name_with_its_credentials(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    pg_env = _environment(services["postgres"])
    url = urlsplit(_environment(services[name]).get("DATABASE_URL", ""))
    assert url.scheme in {"postgresql", "postgres"}, f"{name}: DATABASE_URL is not a postgres URL"
    assert url.hostname == "postgres", f"{name}: DATABASE_URL must point at the postgres service, not {url.hostname}"
    assert url.port in (None, 5432), f"{name}: postgres listens on 5432 inside the network, not {url.port}"
    assert url.username == pg_env["POSTGRES_USER"], f"{name}: DATABASE_URL user differs from POSTGRES_USER"
    assert url.password == pg_env["POSTGRES_PASSWORD"], f"{name}: DATABASE_URL password differs from POSTGRES_PASSWORD"
    assert url.path.lstrip("/") == pg_env["POSTGRES_DB"], f"{name}: DATABASE_URL database differs from POSTGRES_DB"


@pytest.mark.parametrize("name", RUNNING_APP_SERVICES)
def test_app_reaches_redis_by_service_name(services: dict[str, dict[str, Any]], name: str) -> None:
    url = urlsplit(_environment(services[name]).get("REDIS_URL", ""))
    assert url.scheme == "redis", f"{name}: REDIS_URL is not a redis URL"
    assert url.hostname == "redis", f"{name}: REDIS_URL must point at the redis service, not {url.hostname}"
    assert url.port in (None, 6379), f"{name}: redis listens on 6379 inside the network, not {url.port}"


def test_api_and_worker_use_the_same_queue(services: dict[str, dict[str, Any]]) -> None:
    api, worker = (_environment(services[n]) for n in RUNNING_APP_SERVICES)
    for var in ("DATABASE_URL", "REDIS_URL", "QUEUE_NAME"):
        assert api.get(var) == worker.get(var), f"api and worker disagree on {var}"


@pytest.mark.parametrize("name", RUNNING_APP_SERVICES)
def test_app_starts_after_migration_and_healthy_servers(services: dict[str, dict[str, Any]], name: str) -> None:
    deps = _depends_on(services[name])
    assert deps.get("migrate") == "service_completed_successfully", (
        f"{name} must wait for migrate to complete successfully, has {deps.get('migrate')}"
    )
    for server in ("postgres", "redis"):
        assert deps.get(server) == "service_healthy", f"{name} must wait for {server} to be healthy"


def test_migrate_waits_for_postgres_and_runs_once(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert _depends_on(migrate).get("postgres") == "service_healthy"
    assert _argv(migrate.get("command"))[:2] == ["selftune-ingest", "migrate"]
    # Unquoted, YAML reads `no` as False, which compose rejects: it must be the string.
    assert migrate.get("restart") == "no", "migrate is one-shot: restart must be the string 'no'"


def test_every_healthy_condition_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    waited_on = {dep for s in services.values() for dep, cond in _depends_on(s).items() if cond == "service_healthy"}
    assert waited_on, "nothing waits for a healthy service"
    for name in sorted(waited_on):
        assert name in services, f"depends_on names an unknown service {name!r}"
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test != ["NONE"], f"{name} is waited on as healthy but has no healthcheck"


def test_worker_runs_the_worker_command(services: dict[str, dict[str, Any]]) -> None:
    argv = _argv(services["worker"].get("command"))
    assert argv[:2] == ["selftune-ingest", "worker"], f"worker command is {argv}"


def test_maintain_runs_the_procfiles_maintain_on_a_schedule_after_migration(
    services: dict[str, dict[str, Any]],
) -> None:
    maintain = services["maintain"]
    argv = _argv(maintain.get("command"))
    procfile = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("maintain:"))
    assert argv == shlex.split(procfile.split(":", 1)[1]), f"compose runs {argv}, the Procfile {procfile!r}"
    assert _depends_on(maintain).get("migrate") == "service_completed_successfully"
    assert urlsplit(_environment(maintain).get("REDIS_URL", "")).hostname == "redis", (
        "status reads its report from Redis"
    )


def test_api_serves_the_procfile_web_app(services: dict[str, dict[str, Any]]) -> None:
    web_app = _procfile_web_app()
    argv = _api_argv(services)
    assert argv[:1] == ["uvicorn"], f"api does not run uvicorn: {argv}"
    assert web_app in argv, f"api serves {argv}, the Procfile's web process serves {web_app}"
    assert "--factory" in argv, "create_app is a factory: uvicorn needs --factory"


def _uvicorn_options(argv: list[str]) -> dict[str, str | None]:
    """uvicorn's options in argv, but where to listen (which differs between a laptop and a container)."""
    out: dict[str, str | None] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--") and arg not in ("--host", "--port"):
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
            out[arg] = value
    return out


def test_image_and_procfile_serve_alike(services: dict[str, dict[str, Any]]) -> None:
    """The image serves the api with the Procfile's limits, and neither waits forever on shutdown."""
    procfile = _uvicorn_options(shlex.split(_procfile_web_line()))
    image = _uvicorn_options(_api_argv(services))
    assert image == procfile
    assert int(procfile.get("--timeout-graceful-shutdown") or 0) > 0, "a stuck request would hold a shutdown forever"


def test_api_port_matches_container_port(services: dict[str, dict[str, Any]]) -> None:
    argv = _api_argv(services)
    port = argv[argv.index("--port") + 1] if "--port" in argv else "8000"
    host = argv[argv.index("--host") + 1] if "--host" in argv else "127.0.0.1"
    assert host == "0.0.0.0", "inside a container uvicorn must listen on all interfaces"
    targets = [str(p).rsplit(":", 1)[-1] for p in services["api"].get("ports", [])]
    assert port in targets, f"api listens on {port} but publishes {targets}"
    assert port in str(services["api"]["healthcheck"]["test"]), "the api healthcheck probes another port"
    assert "/healthz" in str(services["api"]["healthcheck"]["test"]), "the api healthcheck must hit /healthz"


def test_every_build_context_has_a_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    built = {name: s["build"] for name, s in services.items() if "build" in s}
    assert set(APP_SERVICES) <= built.keys(), f"app services without a build: {set(APP_SERVICES) - built.keys()}"
    for name, build in built.items():
        spec = {"context": build} if isinstance(build, str) else build
        dockerfile = ROOT / spec.get("context", ".") / spec.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"


def test_dockerfile_runs_the_web_app_as_non_root() -> None:
    instructions = _dockerfile_instructions(DOCKERFILE)
    assert "api.app:create_app" in _dockerfile_cmd(DOCKERFILE)
    assert ("EXPOSE", "8000") in instructions
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "the image runs as root: add a USER"
    assert users[-1].split(":")[0] not in {"root", "0"}, f"the image runs as {users[-1]}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_env_vars_are_read_by_settings(services: dict[str, dict[str, Any]], name: str) -> None:
    known = _env_names_read_by_settings()
    assert {"DATABASE_URL", "REDIS_URL"} <= known, "could not find the settings' variable names"
    given = set(_environment(services[name]))
    assert given, f"{name} gets no environment"
    unknown = given - known
    assert not unknown, f"{name} sets {sorted(unknown)}, which runtime/settings.py never reads"


# --- the "monitoring" profile: Prometheus, Grafana and the files under deploy/ ---


def _load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.relative_to(ROOT)} is not a mapping"
    return data


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source as written, container path, read-only) for each bind mount; named volumes are left out."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
            continue
        source, target, *mode = str(volume).split(":")
        if source.startswith((".", "/")):
            mounts.append((source, target, "ro" in ",".join(mode).split(",")))
    return mounts


def _container_to_repo(service: dict[str, Any], container_path: str) -> Path | None:
    """The repo file or directory that a service sees at container_path, through its bind mounts."""
    for source, target, _ in _bind_mounts(service):
        target = target.rstrip("/")
        if container_path == target or container_path.startswith(target + "/"):
            return (ROOT / source / container_path[len(target) :].lstrip("/")).resolve()
    return None


def _flag(argv: list[str], name: str, default: str) -> str:
    """The value of a `--name=value` or `--name value` flag."""
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
    return default


def _container_ports(service: dict[str, Any]) -> set[int]:
    """Container-side ports that a service publishes ("[ip:]host:container[/proto]" or long syntax)."""
    ports = set()
    for port in service.get("ports", []):
        spec = str(port["target"]) if isinstance(port, dict) else str(port)
        ports.add(int(spec.split("/")[0].rsplit(":", 1)[-1]))
    return ports


def _api_port(services: dict[str, dict[str, Any]]) -> str:
    argv = _api_argv(services)
    return argv[argv.index("--port") + 1] if "--port" in argv else "8000"


def _prometheus_listen_port(service: dict[str, Any]) -> int:
    address = _flag(_argv(service.get("command")), "--web.listen-address", f"0.0.0.0:{PROMETHEUS_PORT}")
    return int(address.rsplit(":", 1)[-1])


def _duration_s(text: str) -> float:
    """A Prometheus duration such as 90s, 5m or 1h30m, in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Prometheus duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD_FILE.read_text())
    return data.get("dashboard", data)  # an export wrapped for the HTTP API has it one level down


def _panels(container: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    out = []
    for panel in container.get("panels", []):
        out.append(panel)
        out.extend(_panels(panel))
    return out


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _load_yaml(ALERTS_FILE).get("groups", []) for rule in group.get("rules", [])]


def _promql_expressions() -> list[tuple[str, str]]:
    """(where, expression) for every PromQL expression in the dashboard and the alerting rules."""
    exprs = [
        (f"dashboard panel {panel.get('title')!r}", str(target["expr"]))
        for panel in _panels(_dashboard())
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    exprs += [(f"rule {rule.get('alert') or rule.get('record')!r}", str(rule["expr"])) for rule in _alert_rules()]
    return exprs


def _exported_series_names() -> set[str]:
    """The series names that GET /metrics can carry, from api/metrics.py itself.

    The api's own Counter and Histogram objects, plus the families that
    SharedStateCollector builds (run on an empty queue snapshot), expanded the
    way prometheus-client writes them: `_total` for counters, `_bucket`, `_sum`
    and `_count` for histograms (and `_created` for both).
    """
    from prometheus_client.metrics import MetricWrapperBase

    from api import metrics
    from queueing.queue_state import QueueState
    from spool.store import SpoolStats

    own = [f for obj in vars(metrics).values() if isinstance(obj, MetricWrapperBase) for f in obj.collect()]
    shared = list(metrics.SharedStateCollector(QueueState(0, 0.0, 0, 0, 0, 0, 0, {}), {}).collect())
    shared += list(metrics.SpoolCollector(SpoolStats(0, 0, None)).collect())
    assert own, "found no prometheus-client metric objects in api/metrics.py"
    assert shared, "SharedStateCollector yielded no metric families"
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    return {family.name + s for family in own + shared for s in suffixes.get(family.type, ("",))}


def test_monitoring_services_are_only_in_the_monitoring_profile(services: dict[str, dict[str, Any]]) -> None:
    for name in MONITORING_SERVICES:
        assert name in services, f"docker-compose.yml has no {name} service"
        assert services[name].get("profiles") == [MONITORING_PROFILE], (
            f"{name} must be only in the {MONITORING_PROFILE!r} profile, has {services[name].get('profiles')}"
        )
    default = {name for name, s in services.items() if not s.get("profiles")}
    assert {"postgres", "redis", "migrate", "api", "worker"} <= default, (
        "the core services must start on a plain `docker compose up` (no profile)"
    )
    for name in sorted(default):
        needs = set(_depends_on(services[name])) & set(MONITORING_SERVICES)
        assert not needs, f"{name} depends on {sorted(needs)}, which a plain `docker compose up` does not start"


@pytest.mark.parametrize("name", MONITORING_SERVICES)
def test_monitoring_mounts_are_repo_files_read_only(services: dict[str, dict[str, Any]], name: str) -> None:
    mounts = _bind_mounts(services[name])
    assert mounts, f"{name} mounts nothing from the repo"
    for source, target, read_only in mounts:
        path = (ROOT / source).resolve()
        assert path.is_relative_to(ROOT), f"{name} mounts {source}, outside the repo"
        assert path.exists(), f"{name} mounts {source} at {target}, which is not in the repo"
        assert read_only, f"{name} must mount {source} read-only (:ro)"


def test_prometheus_loads_the_config_and_alerts_from_the_repo(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    config_path = _flag(_argv(prometheus.get("command")), "--config.file", PROMETHEUS_DEFAULT_CONFIG)
    assert _container_to_repo(prometheus, config_path) == PROMETHEUS_CONFIG, (
        f"prometheus reads {config_path}, which is not deploy/prometheus.yml through a mount"
    )
    rule_files = _load_yaml(PROMETHEUS_CONFIG).get("rule_files") or []
    seen = set()
    for rule_file in rule_files:
        # Relative rule_files are resolved against the config file's directory.
        in_container = posixpath.normpath(posixpath.join(posixpath.dirname(config_path), rule_file))
        repo_path = _container_to_repo(prometheus, in_container)
        assert repo_path is not None and repo_path.is_file(), (
            f"rule file {rule_file} ({in_container} in the container) is not a mounted repo file"
        )
        seen.add(repo_path)
    assert ALERTS_FILE in seen, f"deploy/prometheus.yml does not load deploy/alerts.yml (rule_files: {rule_files})"


def test_prometheus_scrapes_the_api_service(services: dict[str, dict[str, Any]]) -> None:
    from api.app import routes
    from api.metrics import metrics

    config = _load_yaml(PROMETHEUS_CONFIG)
    expected = f"api:{_api_port(services)}"
    jobs = [
        job
        for job in config.get("scrape_configs", [])
        if expected in [t for static in job.get("static_configs", []) for t in static.get("targets", [])]
    ]
    assert len(jobs) == 1, f"deploy/prometheus.yml must scrape {expected} (the compose api service) in one job"
    job = jobs[0]
    path = job.get("metrics_path", "/metrics")
    served = {getattr(r, "path", None) for r in routes if getattr(r, "endpoint", None) is metrics}
    assert path in served, f"prometheus scrapes {path}, the api serves its metrics on {sorted(map(str, served))}"
    interval = job.get("scrape_interval") or config.get("global", {}).get("scrape_interval", "1m")
    assert _duration_s(interval) == 15, f"scrape interval is {interval}, want 15s"
    for static in (s for j in config.get("scrape_configs", []) for s in j.get("static_configs", [])):
        for target in static.get("targets", []):
            host = target.rsplit(":", 1)[0]
            assert host in services, f"scrape target {target}: {host} is not a compose service"


def test_promql_names_only_exported_metrics() -> None:
    exported = _exported_series_names()
    exprs = _promql_expressions()
    assert exprs, "no PromQL expression found in the dashboard or the alerts"
    used: dict[str, list[str]] = {}
    for where, expr in exprs:
        for name in METRIC_NAME.findall(expr):
            used.setdefault(name, []).append(where)
    assert used, "no expression names a selftune_ingest_ metric"
    unknown = {name: wheres for name, wheres in used.items() if name not in exported}
    assert not unknown, f"expressions name metrics that api/metrics.py does not export: {unknown}"
    blind = [where for where, expr in exprs if where.startswith("dashboard") and not METRIC_NAME.search(expr)]
    assert not blind, f"dashboard queries that graph no selftune_ingest_ metric: {blind}"


def test_histogram_quantiles_aggregate_buckets_by_le() -> None:
    quantile_exprs = [(w, e) for w, e in _promql_expressions() if "histogram_quantile" in e]
    assert quantile_exprs, "no latency quantiles in the dashboard"
    for where, expr in quantile_exprs:
        quantile = re.search(r"histogram_quantile\(\s*([0-9.]+)\s*,", expr)
        assert quantile and 0 < float(quantile.group(1)) < 1, f"{where}: bad quantile in {expr}"
        names = METRIC_NAME.findall(expr)
        assert names and all(n.endswith("_bucket") for n in names), f"{where}: quantile not over _bucket: {expr}"
        groupings = [{label.strip() for label in g.split(",")} for g in re.findall(r"\bby\s*\(([^)]*)\)", expr)]
        assert groupings and all("le" in g for g in groupings), f"{where}: buckets must be summed by (le): {expr}"
        assert re.search(r"\b(rate|irate|increase)\(", expr), f"{where}: quantile over raw counters: {expr}"
    titles = {w for w, _ in quantile_exprs}
    for histogram in ("selftune_ingest_request_duration_seconds", "selftune_ingest_batch_write_seconds"):
        for q in ("0.5", "0.99"):
            assert any(f"histogram_quantile({q}," in e and histogram in e for _, e in quantile_exprs), (
                f"no p{float(q) * 100:g} of {histogram} among {sorted(titles)}"
            )


def test_dashboard_has_queue_depth_and_lag_panels() -> None:
    dashboard = _dashboard()
    assert dashboard.get("uid"), "the dashboard needs a fixed uid (links and provisioning rely on it)"
    assert dashboard.get("schemaVersion", 0) >= 36, f"schemaVersion {dashboard.get('schemaVersion')} is too old"
    panels = _panels(dashboard)

    def panel_graphing(metric: str) -> dict[str, Any]:
        found = [p for p in panels if any(metric in str(t.get("expr", "")) for t in p.get("targets", []))]
        assert found, f"no dashboard panel graphs {metric}"
        return found[0]

    depth = panel_graphing("selftune_ingest_queue_batches")
    lag = panel_graphing("selftune_ingest_queue_lag_seconds")
    for panel in (depth, lag):
        assert panel.get("gridPos", {}).get("y") == 0, f"panel {panel.get('title')!r} must be in the top row"
    assert depth is not lag, "queue depth and lag need panels of their own (batches and seconds differ)"
    assert lag.get("fieldConfig", {}).get("defaults", {}).get("unit") == "s", "the lag panel's unit must be seconds"


def test_dashboard_uses_the_provisioned_datasource() -> None:
    datasources = _load_yaml(GRAFANA_DATASOURCES).get("datasources", [])
    uids = {d["uid"] for d in datasources if d.get("type") == "prometheus" and d.get("uid")}
    assert uids, "the provisioned Prometheus datasource needs a fixed uid"
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", []) if v.get("type") == "datasource"}
    for panel in _panels(dashboard):
        if panel.get("type") == "row":
            continue
        for ref in [panel.get("datasource"), *(t.get("datasource") for t in panel.get("targets", []))]:
            assert isinstance(ref, dict), f"panel {panel.get('title')!r} does not name its datasource"
            uid = str(ref.get("uid"))
            var = re.fullmatch(r"\$\{?(\w+)\}?", uid)
            if var:
                variable = variables.get(var.group(1))
                assert variable and variable.get("query") == "prometheus", (
                    f"panel {panel.get('title')!r} uses {uid}, not a Prometheus datasource variable"
                )
                uid = str(variable.get("current", {}).get("value"))
            assert uid in uids, f"panel {panel.get('title')!r} uses datasource {uid}, provisioned are {sorted(uids)}"


def test_grafana_datasource_is_the_compose_prometheus(services: dict[str, dict[str, Any]]) -> None:
    datasources = [d for d in _load_yaml(GRAFANA_DATASOURCES).get("datasources", []) if d.get("type") == "prometheus"]
    assert datasources, "no Prometheus datasource is provisioned"
    port = _prometheus_listen_port(services["prometheus"])
    assert port in _container_ports(services["prometheus"]), f"prometheus listens on {port} but does not publish it"
    for datasource in datasources:
        url = urlsplit(datasource.get("url", ""))
        assert url.hostname == "prometheus", f"the datasource must reach the prometheus service, not {url.hostname}"
        assert (url.port or 80) == port, f"the datasource uses port {url.port}, prometheus listens on {port}"


def test_grafana_provisions_the_mounted_dashboards(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    env = _environment(grafana)
    provisioning = env.get("GF_PATHS_PROVISIONING", "/etc/grafana/provisioning")
    for repo_file in (GRAFANA_DATASOURCES, GRAFANA_DASHBOARD_PROVIDERS):
        in_container = f"{provisioning}/{repo_file.relative_to(DEPLOY / 'grafana' / 'provisioning')}"
        assert _container_to_repo(grafana, in_container) == repo_file, (
            f"grafana does not see {repo_file.relative_to(ROOT)} at {in_container}, where it reads provisioning"
        )
    providers = [p for p in _load_yaml(GRAFANA_DASHBOARD_PROVIDERS).get("providers", []) if p.get("type") == "file"]
    assert providers, "no file dashboard provider"
    for provider in providers:
        path = provider.get("options", {}).get("path", "")
        repo_dir = _container_to_repo(grafana, path)
        assert repo_dir is not None and repo_dir.is_dir(), f"the provider reads {path}, which is not a mounted repo dir"
        assert DASHBOARD_FILE.resolve().is_relative_to(repo_dir), f"{path} does not hold {DASHBOARD_FILE.name}"
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        repo_file = _container_to_repo(grafana, home)
        assert repo_file is not None and repo_file.is_file(), f"the home dashboard {home} is not a mounted repo file"


def test_alert_rules_are_complete_and_cover_the_runbook() -> None:
    alerts = [rule for rule in _alert_rules() if "alert" in rule]
    assert alerts, "deploy/alerts.yml has no alerting rule"
    for rule in alerts:
        name = rule["alert"]
        assert rule.get("expr"), f"{name} has no expr"
        assert _duration_s(str(rule.get("for", ""))) > 0, f"{name} needs a `for:` so one bad scrape does not page"
        assert (rule.get("labels") or {}).get("severity") in {"info", "warning", "critical"}, f"{name} has no severity"
        annotations = rule.get("annotations") or {}
        assert annotations.get("summary") and annotations.get("description"), f"{name} needs summary and description"
    # (what the alert watches, shortest acceptable `for:` in seconds, what its expression must contain)
    required = [
        ("queue lag above 300 s", 300, ("selftune_ingest_queue_lag_seconds", "300")),
        ("failed batches", 600, ("selftune_ingest_failed_batches", "> 0")),
        ("no busy or idle workers", 120, ("selftune_ingest_workers", "== 0")),
        (
            "pushes refused because neither Redis nor the spool could hold them",
            60,
            ("selftune_ingest_refused_pushes_total",),
        ),
        ("batches waiting in a spool", 300, ("selftune_ingest_spool_batches", "> 0")),
        ("a deep queue (an alert, never a refusal)", 600, ("selftune_ingest_queue_batches",)),
    ]
    for what, min_for, needles in required:
        matching = [r for r in alerts if all(n in str(r["expr"]) for n in needles)]
        assert matching, f"no alert on {what} (an expr containing {needles})"
        assert any(_duration_s(str(r["for"])) >= min_for for r in matching), f"the {what} alert's `for:` is too short"
