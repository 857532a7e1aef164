"""The dashboard on the ClickHouse server (a unique database per test), not only embedded chDB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.model import SimConfig, simulate
from simulator.writer import write_simulation
from sinks.clickhouse import connect, migrate
from streams.replay import Replayer
from streams.settings import Settings, load_settings
from streams.web.dashboard import VIEWS, close_store
from tests.browser.pages import body_numbers
from tests.conftest import unique_name

pytestmark = pytest.mark.integration


@pytest.fixture
def server_settings(clickhouse_url: str) -> Iterator[Settings]:
    settings = load_settings(clickhouse={"url": clickhouse_url,
                                         "database": unique_name("dash").replace("-", "_")})
    yield settings
    with connect(settings.clickhouse) as store:
        store.client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse.database}` SYNC")


def _client(settings: Settings) -> Any:
    from fastapi.testclient import TestClient

    from streams.web.app import create_app

    return create_app(settings), TestClient


def test_every_view_on_the_server(server_settings: Settings, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_simulation(simulate(SimConfig(customers=400, seed=11)), events)
    with connect(server_settings.clickhouse) as store:
        migrate(store)
        Replayer(server_settings.processing(), store, with_models=True).run([events])
    app, test_client = _client(server_settings)
    try:
        client = test_client(app)
        for view in VIEWS:
            plain = client.get(view.path)
            assert plain.status_code == 200, (view.path, plain.text[:2000])
        assert body_numbers(client.get("/", params={"channel": "web"}).text) != body_numbers(
            client.get("/").text)
        assert client.get("/", params={"window": "-1"}).status_code == 400
    finally:
        close_store(app)


def test_not_migrated_is_a_503_that_says_what_to_do(server_settings: Settings) -> None:
    app, test_client = _client(server_settings)  # the database does not exist yet
    try:
        resp = test_client(app).get("/funnel")
    finally:
        close_store(app)
    assert resp.status_code == 503
    assert "journeymap migrate" in resp.text


def test_an_empty_database_renders_every_view(server_settings: Settings) -> None:
    with connect(server_settings.clickhouse) as store:
        migrate(store)
    app, test_client = _client(server_settings)
    try:
        client = test_client(app)
        for view in VIEWS:
            resp = client.get(view.path)
            assert resp.status_code == 200, (view.path, resp.text[:2000])
            assert 'class="empty"' in resp.text, view.path
    finally:
        close_store(app)
