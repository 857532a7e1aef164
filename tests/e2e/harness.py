"""What the end-to-end tests share: an isolated stream environment (topics, consumer group and
ClickHouse database of its own, removed afterwards), the CLI in a subprocess, and a simulated
history closed by sentinel events far in the future, which push every partition's frontier past
the history so both the stream and the replay have released and finalized all of it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from simulator.model import SimConfig, Simulation, simulate
from simulator.writer import write_simulation
from sinks.clickhouse import connect
from streams.settings import Settings

LATENESS_S = 400 * 86_400  # longer than any history: arrival order cannot change anything
DAY_MS = 86_400_000
TOPICS = ("raw", "resolved", "dlq", "merges", "late", "scores", "alerts")


@contextmanager
def isolated_env(jm_settings: Settings, clickhouse_url: str, prefix: str,
                 **overrides: str) -> Iterator[dict[str, str]]:
    """JOURNEYMAP_* variables for workers and commands of one test; `overrides` win."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "JOURNEYMAP_CLICKHOUSE__URL": clickhouse_url,
        "JOURNEYMAP_CLICKHOUSE__DATABASE": name,
        "JOURNEYMAP_CLICKHOUSE__FLUSH_INTERVAL_S": "0.5",
        "JOURNEYMAP_KAFKA__CONSUMER_GROUP": name,
        "JOURNEYMAP_JOURNEY__ALLOWED_LATENESS_S": str(LATENESS_S),
        # whole histories and panes kept, so merge corrections reach every pane on both sides
        "JOURNEYMAP_JOURNEY__LAST_TOUCHPOINTS_KEPT": "100",
        "JOURNEYMAP_WINDOWS__SIZES_S": "[86400, 10368000]",
        "JOURNEYMAP_WORKER__CHECKPOINT_EVERY_S": "2",
        **{f"JOURNEYMAP_KAFKA__TOPICS__{t.upper()}": f"{name}.{t}" for t in TOPICS},
        **overrides,
    }
    yield env
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": jm_settings.kafka.bootstrap_servers})
    admin.delete_topics([env[f"JOURNEYMAP_KAFKA__TOPICS__{t.upper()}"] for t in TOPICS])
    target = jm_settings.clickhouse.model_copy(update={"url": clickhouse_url, "database": name})
    with connect(target) as store:
        store.client.command(f"DROP DATABASE IF EXISTS {name}")


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """`journeymap ARGS` in a subprocess; fails the test with its output unless it exits 0."""
    done = subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env,
                          capture_output=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    return done.stdout.decode()


def history(tmp_path: Path, *, customers: int, seed: int, sentinels: int
            ) -> tuple[Path, Simulation, list[bytes], int]:
    """A simulated history plus `sentinels` far-future events, written to one JSONL file.

    Returns the file, the simulation, the sentinel lines and the cutoff (the end of the
    history): tables are compared below it, since the stream never releases the sentinels.
    """
    sim = simulate(SimConfig(customers=customers, seed=seed))
    end_ms = max(e.ts_ms for c in sim.truth.customers for e in c.events)
    lines = [
        orjson.dumps({
            "event_id": f"sentinel-{i}", "occurred_at": end_ms + LATENESS_S * 1000 + 60 * DAY_MS,
            "channel": "other", "touchpoint": "landing_page",
            "identities": {"anonymous_id": f"sentinel-{i}"},
        })
        for i in range(sentinels)
    ]
    path = tmp_path / "events.jsonl"
    write_simulation(sim, path)
    with path.open("ab") as f:
        f.write(b"\n".join(lines) + b"\n")
    return path, sim, lines, end_ms + DAY_MS
