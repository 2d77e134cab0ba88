"""The container image and the compose file, checked as far as a machine without a Docker engine allows.

No image is built and no container runs here (docs/deployment.md says so). What is checked: hadolint
lints the Dockerfile; Debian's docker-compose parses deploy/compose.yaml and resolves it; every
setting either file gives chatgate is one chatgate has; the catalogue the replicas read is valid; and
nginx's upstreams, the engine's model and the image's models agree with each other.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from chatgate.config import Settings, load_catalogue
from chatgate.providers.local import assets

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"
SECRETS = {"CHATGATE_API_KEY": "sk-compose-check-0123456789", "POSTGRES_PASSWORD": "compose-check"}


def settings_names() -> set[str]:
    return {f"CHATGATE_{name.upper()}" for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors merged, variables filled in)."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed (scripts/system-deps.sh installs it)"
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **SECRETS},
        cwd=COMPOSE.parent,
    )
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_sets_only_settings_chatgate_has_and_ships_known_models() -> None:
    text = DOCKERFILE.read_text()
    given = set(re.findall(r"\b(CHATGATE_[A-Z_]+)=", text))
    assert given and given <= settings_names(), given - settings_names()
    models = re.search(r'ARG MODELS="([^"]+)"', text)
    assert models is not None
    for name in models.group(1).split():
        assets.resolve(name)  # raises for a model the image could not assemble


def test_compose_needs_its_secrets(tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    assert binary
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )
    assert result.returncode != 0
    assert "CHATGATE_API_KEY" in result.stderr or "POSTGRES_PASSWORD" in result.stderr


def test_compose_runs_the_tested_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    replicas = sorted(name for name in services if name.startswith("chatgate-"))
    assert replicas == ["chatgate-1", "chatgate-2", "chatgate-3"]
    assert {"postgres", "redis", "engine", "nginx", "migrate"} <= set(services)
    for name in replicas:
        env = services[name]["environment"]
        assert set(env) <= settings_names(), set(env) - settings_names()
        Settings(
            **{k.removeprefix("CHATGATE_").lower(): v for k, v in env.items()}
        )  # valid, production included
        assert env["CHATGATE_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["CHATGATE_REDIS_URL"].startswith("redis://redis:")
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert any(v.endswith(":/files:rw") or v.endswith(":/files") for v in services[name]["volumes"])
    assert services["migrate"]["command"] == ["migrate"]


def test_nginx_balances_the_replicas_compose_runs(compose: dict[str, Any]) -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    upstreams = re.findall(r"^\s*server (\S+):(\d+)", conf, re.MULTILINE)
    names = {name for name in compose["services"] if name.startswith("chatgate-")}
    assert {host for host, _ in upstreams} == names
    assert {int(port) for _, port in upstreams} == {Settings(env="development").port}
    mounted = compose["services"]["nginx"]["volumes"]
    assert any(v.endswith("/etc/nginx/conf.d/default.conf:ro") for v in mounted)


def test_the_replicas_catalogue_names_the_engine_compose_runs(compose: dict[str, Any]) -> None:
    catalogue = load_catalogue(ROOT / "deploy" / "catalogue.yaml")
    engine = compose["services"]["engine"]
    arguments = dict(a.removeprefix("--").split("=", 1) for a in engine["command"])
    served = {d.model for entry in catalogue.models for d in entry.all_deployments if hasattr(d, "model")}
    assert served == {arguments["model_alias"]}
    assert all(
        getattr(d, "base_url", "").startswith(f"http://engine:{arguments['port']}/")
        for entry in catalogue.models
        for d in entry.all_deployments
    )
    asset = assets.resolve("qwen2.5-coder-0.5b-instruct-q4_k_m")
    assert arguments["model"] == f"/models/{asset.filename}"
    assert arguments["interrupt_requests"] == "False"
