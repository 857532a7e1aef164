"""streams.app._write: the tables a caller needs now are written at once, the rest waits for a
later full write or the time budget (clickhouse.flush_interval_s). A fake ClickHouse client,
no I/O; the budget is tested by back-dating the oldest deferred row, not by waiting."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from sinks.clickhouse import SinkWriter
from streams.app import Metrics, _write


class FakeClient:
    def __init__(self) -> None:
        self.inserted: list[str] = []

    def query(self, sql: str) -> Any:  # DESCRIBE TABLE: types unknown, the client would ask
        return SimpleNamespace(result_rows=[])

    def insert(self, table: str, data: Any, **kwargs: Any) -> None:
        self.inserted.append(table)


class FakeIdentityStore:
    """The links outbox's acknowledgements (RedisIdentityStore.ack_links)."""

    def __init__(self) -> None:
        self.acked: list[tuple[str | None, ...]] = []
        self.down = False

    def ack_links(self, *commit_ids: str | None) -> None:
        if self.down:
            raise ConnectionError("Redis unreachable")
        self.acked.append(commit_ids)


def _runtime() -> Any:
    client = FakeClient()
    return SimpleNamespace(
        client=client, writer=SinkWriter(client, flush_interval_s=float("inf")),
        sink_lock=asyncio.Lock(), rows={}, metrics=Metrics(), flush_budget_s=1.0,
        deferred_since=None, app=None, links_buffered=[],
        resolver=SimpleNamespace(store=FakeIdentityStore()),
    )


BATCH = {"touchpoints": [{"event_id": "e1"}], "transition_cells": [{"cell": "a"}],
         "funnel_progress": [{"run": "r"}]}


async def test_only_the_named_tables_are_written_and_the_rest_waits() -> None:
    rt = _runtime()
    await _write(rt, BATCH, only=("touchpoints",))
    assert rt.client.inserted == ["touchpoints"]
    assert rt.writer.pending_rows == 2 and rt.deferred_since is not None
    await _write(rt, {"touchpoints": [{"event_id": "e2"}]}, only=("touchpoints",))
    assert rt.client.inserted == ["touchpoints", "touchpoints"]  # still within the budget
    await _write(rt)  # before a checkpoint: everything
    assert sorted(rt.client.inserted[2:]) == ["funnel_progress", "transition_cells"]
    assert rt.writer.pending_rows == 0 and rt.deferred_since is None


async def test_rows_left_behind_past_the_budget_go_with_the_next_write() -> None:
    rt = _runtime()
    await _write(rt, BATCH, only=("touchpoints",))
    rt.deferred_since = time.monotonic() - 5.0  # the budget (1 s) has passed
    await _write(rt, {"touchpoints": [{"event_id": "e2"}]}, only=("touchpoints",))
    assert sorted(rt.client.inserted[1:]) == ["funnel_progress", "touchpoints",
                                              "transition_cells"]
    assert rt.writer.pending_rows == 0 and rt.deferred_since is None


async def test_a_write_without_only_writes_everything_at_once() -> None:
    rt = _runtime()
    await _write(rt, BATCH)
    assert sorted(rt.client.inserted) == ["funnel_progress", "touchpoints", "transition_cells"]
    assert rt.deferred_since is None


async def test_a_batch_with_nothing_to_write_does_not_wait_for_the_writer() -> None:
    """A journey batch of merge messages only has no rows: it does not queue behind the other
    agent's insert for the lock, unless deferred rows are due, which it then writes."""
    rt = _runtime()
    await _write(rt, BATCH, only=("touchpoints",))
    async with rt.sink_lock:  # the other agent's insert in progress
        await asyncio.wait_for(_write(rt, {"touchpoints": [], "alerts": []},
                                      only=("touchpoints",)), timeout=1.0)
    assert rt.client.inserted == ["touchpoints"] and rt.writer.pending_rows == 2
    rt.deferred_since = time.monotonic() - 5.0  # the budget (1 s) has passed
    await _write(rt, {"touchpoints": []}, only=("touchpoints",))
    assert sorted(rt.client.inserted[1:]) == ["funnel_progress", "transition_cells"]
    assert rt.writer.pending_rows == 0


LINKS = {"identity_links": [{"identifier": "email:a"}]}


async def test_deferred_identity_links_leave_the_outbox_once_a_write_has_stored_them() -> None:
    """The ingest agent leaves a batch's links buffered (only=()) and lists its commit; the
    links outbox entry is acknowledged by the write that inserts them, not before."""
    rt = _runtime()
    acked = rt.resolver.store.acked
    await _write(rt, LINKS, only=())
    rt.links_buffered.append("c1")
    assert rt.client.inserted == [] and rt.writer.holds("identity_links")
    await _write(rt, {"touchpoints": [{"event_id": "e1"}]}, only=("touchpoints",))
    assert rt.client.inserted == ["touchpoints"] and acked == []  # links still buffered
    await _write(rt, LINKS, only=())
    rt.links_buffered.append("c2")
    await _write(rt)  # a full write: both commits' links are stored, then acknowledged
    assert rt.client.inserted[1:] == ["identity_links"]
    assert acked == [("c1", "c2")] and rt.links_buffered == []
    assert not rt.writer.holds("identity_links")


async def test_links_whose_write_came_due_are_acknowledged_with_it() -> None:
    rt = _runtime()
    await _write(rt, LINKS, only=())
    rt.links_buffered.append("c1")
    rt.deferred_since = time.monotonic() - 5.0  # the budget (1 s) has passed
    await _write(rt, {"touchpoints": [{"event_id": "e1"}]}, only=("touchpoints",))
    assert sorted(rt.client.inserted) == ["identity_links", "touchpoints"]
    assert rt.resolver.store.acked == [("c1",)] and rt.links_buffered == []


async def test_an_acknowledgement_redis_refuses_waits_for_the_next_write() -> None:
    rt = _runtime()
    await _write(rt, LINKS, only=())
    rt.links_buffered.append("c1")
    rt.resolver.store.down = True
    await _write(rt)  # stored; the acknowledgement fails and is kept, the write succeeds
    assert rt.client.inserted == ["identity_links"] and rt.links_buffered == ["c1"]
    rt.resolver.store.down = False
    await _write(rt)
    assert rt.resolver.store.acked == [("c1",)] and rt.links_buffered == []
