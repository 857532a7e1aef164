"""Fixtures for the dashboard tests: demo data built once, `journeymap dashboard` as a subprocess.

    demo_store_dir   an embedded chDB directory holding a replayed simulation (models included)
                     and an A/B test recorded with `journeymap experiments` (EXPERIMENT)
    served_store_dir the copy of it that `journeymap dashboard` serves
    dashboard_url    `journeymap dashboard` serving that copy on a free loopback port
    http_app         the same app in-process (FastAPI TestClient) on another copy

An embedded directory has one owner at a time, so the subprocess and the in-process app each get
their own copy. Chromium is Debian's (/usr/bin/chromium); nothing is downloaded.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.model import SimConfig, simulate
from simulator.writer import write_simulation
from sinks.clickhouse import connect, migrate
from streams.replay import Replayer
from streams.settings import ClickHouseSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
N_CUSTOMERS = 2_000  # enough for three segments and a drift alert with seed 7
START_TIMEOUT_S = 90.0
# An A/B test a month into the demo data, an overlapping campaign (the overlap warning), then
# every customer assigned; 4,000 planned per variant is more than the demo has (the peeking one).
EXPERIMENT: tuple[tuple[str, ...], ...] = (
    ("record", "one-click checkout", "--started-at", "2026-02-01T00:00:00Z",
     "--experiment", "checkout", "--variants", "control,b", "--control", "control",
     "--outcome", "purchase", "--planned-n", "4000",
     "--description", "checkout in one click instead of three steps"),
    ("record", "winter sale email", "--started-at", "2026-02-20T00:00:00Z",
     "--ended-at", "2026-03-10T00:00:00Z", "--channel", "email",
     "--description", "20 % off for a week"),
    ("assign", "checkout"),
)


@pytest.fixture(scope="session")
def demo_store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dashboard-demo")
    events = root / "events.jsonl"
    write_simulation(simulate(SimConfig(customers=N_CUSTOMERS, seed=7)), events)
    settings = load_settings()
    with connect(ClickHouseSettings(url=str(root / "chdb"))) as store:
        migrate(store)
        Replayer(settings.processing(), store, with_models=True).run([events])
    for args in EXPERIMENT:  # recorded the way a user does, after the replay let go of the store
        done = subprocess.run([sys.executable, "-m", "streams.cli", "experiments", *args,
                               "--clickhouse", str(root / "chdb")],
                              cwd=ROOT, capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode()
    return root / "chdb"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True,  # metadata links are relative
                    ignore=shutil.ignore_patterns("journeymap.lock"))
    return dst


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def served_store_dir(demo_store_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The copy `journeymap dashboard` serves (and owns while it runs)."""
    return _copy(demo_store_dir, tmp_path_factory.mktemp("dashboard-served") / "chdb")


@pytest.fixture(scope="session")
def dashboard_url(served_store_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = served_store_dir
    port = _free_port()
    log = tmp_path_factory.mktemp("dashboard-log") / "dashboard.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "dashboard", "--clickhouse", str(data),
             "--port", str(port)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"journeymap dashboard exited: {log.read_text()}", False)
            try:
                with urllib.request.urlopen(url + "/alerts", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"journeymap dashboard did not answer: {log.read_text()}", False)
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def http_settings(demo_store_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = _copy(demo_store_dir, tmp_path_factory.mktemp("dashboard-http") / "chdb")
    return load_settings(clickhouse={"url": str(data)})


@pytest.fixture(scope="module")  # closed after the module: chDB opens one directory per process
def http_client(http_settings: Settings) -> Iterator[object]:
    from fastapi.testclient import TestClient

    from streams.web.app import create_app
    from streams.web.dashboard import close_store

    app = create_app(http_settings)
    try:
        yield TestClient(app)
    finally:
        close_store(app)


# Module scope: Playwright's sync API keeps an event loop running in this thread until it stops,
# and later tests that call asyncio.run() (aiokafka, the worker's serving hook) would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-deps.sh", False)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()
