"""docker-compose.yml and the Dockerfile agree with the code (no Docker needed).

What a deployer relies on when running `docker compose up`: the five services
exist, Redis keeps RQ's keys (SPEC 5), the app reaches Postgres and Redis by
their service names with the credentials the postgres service creates, the app
starts only after a successful migration, the image runs the Procfile's web
process, and every environment variable given to the app is one the settings
actually read (a misspelt name would be silently ignored).
"""

from __future__ import annotations

import json
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
APP_SERVICES = ("migrate", "api", "worker")
RUNNING_APP_SERVICES = ("api", "worker")


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


def _procfile_web_app() -> str:
    """The `module:attribute` that the Procfile's web process serves."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            match = re.search(r"\buvicorn\s+([\w.]+:\w+)", line)
            assert match, f"no uvicorn app in the Procfile's web line: {line!r}"
            return match.group(1)
    raise AssertionError("the Procfile has no web process")


def _env_names_read_by_settings() -> set[str]:
    source = (ROOT / "schema" / "settings.py").read_text()
    return set(re.findall(r'"([A-Z][A-Z0-9_]*)"', source))


def test_all_five_services_are_defined(services: dict[str, dict[str, Any]]) -> None:
    missing = {"postgres", "redis", "migrate", "api", "worker"} - services.keys()
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_redis_persists_and_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    argv = _argv(services["redis"].get("command"))
    options = dict(zip(argv[1::2], argv[2::2], strict=False)) if argv[:1] == ["redis-server"] else {}
    assert options.get("--appendonly") == "yes", f"redis must run with --appendonly yes (SPEC 5): {argv}"
    assert options.get("--maxmemory-policy") == "noeviction", (
        f"redis must run with --maxmemory-policy noeviction (SPEC 5): {argv}"
    )
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


def test_api_serves_the_procfile_web_app(services: dict[str, dict[str, Any]]) -> None:
    web_app = _procfile_web_app()
    argv = _argv(services["api"].get("command")) or _dockerfile_cmd(DOCKERFILE)
    assert argv[:1] == ["uvicorn"], f"api does not run uvicorn: {argv}"
    assert web_app in argv, f"api serves {argv}, the Procfile's web process serves {web_app}"
    assert "--factory" in argv, "create_app is a factory: uvicorn needs --factory"


def test_api_port_matches_container_port(services: dict[str, dict[str, Any]]) -> None:
    argv = _argv(services["api"].get("command")) or _dockerfile_cmd(DOCKERFILE)
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
    assert not unknown, f"{name} sets {sorted(unknown)}, which schema/settings.py never reads"
