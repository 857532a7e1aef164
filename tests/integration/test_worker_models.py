"""A restarted worker continues learning from its consumer group's models snapshot
(streams.app.initial_models, issue 7), against a real Redis: fresh models when there is none,
when it cannot be read, or when the model settings changed since."""

from __future__ import annotations

import asyncio
import gc
import logging
import pickle
from types import SimpleNamespace
from typing import Any

import pytest

import streams.app as app_module
from online_models.suite import ModelConfig, ModelSuite
from processors.chain import JourneyChain
from processors.events import ResolvedEvent, TouchpointEvent
from sinks.checkpoints import CheckpointStore
from streams.app import Metrics, PartitionState, _checkpoint_turn, initial_models
from streams.corpus import new_model_suite
from streams.heap import HeapFreezer
from streams.settings import load_settings
from tests.conftest import unique_name

T0 = 1_767_225_600_000  # 2026-01-01


def _events(n: int) -> list[ResolvedEvent]:
    out = []
    for i in range(n):
        ev = TouchpointEvent.model_validate({
            "event_id": f"e{i}", "occurred_at": T0 + i * 60_000, "channel": "web",
            "touchpoint": ["visit", "pricing", "signup"][i % 3],
            "identities": {"anonymous_id": f"a{i % 7}"},
        })
        out.append(ResolvedEvent(f"c{i % 7}", ev, "all"))
    return out


def test_a_restarted_worker_continues_from_the_groups_snapshot(
    redis_test_url: str, redis_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings()
    store = CheckpointStore(redis_test_url, unique_name("models"), retry_total_s=5.0)
    config = ModelConfig()
    fresh = initial_models(settings, store, config)  # nothing saved: fresh, corpus learned
    assert fresh.n_events == 0 and fresh.sentiment.predict("Thanks a lot! it works great").label

    states: dict[str, Any] = {}
    for ev in _events(50):
        fresh.update(ev, states.setdefault(ev.customer_id, fresh.new_customer()))
    store.save_models(fresh.snapshot())

    restored = initial_models(settings, store, config)
    assert restored.n_events == 50
    # it continues where the saved models were: the next events score as in the uninterrupted run
    copies = pickle.loads(pickle.dumps(states))
    for ev in _events(60)[50:]:
        a = fresh.update(ev, states[ev.customer_id])
        b = restored.update(ev, copies[ev.customer_id])
        assert repr(a) == repr(b)

    with caplog.at_level(logging.WARNING, logger="streams.app"):
        other = initial_models(settings, store, ModelConfig(segment_min_events=7))
    assert other.n_events == 0 and "other model settings" in caplog.text

    store.save_models(b"not a snapshot")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streams.app"):
        broken = initial_models(settings, store, config)
    assert broken.n_events == 0 and "not restored" in caplog.text
    assert broken.snapshot() == new_model_suite(config).snapshot()
    store.delete_group()


def test_the_running_worker_saves_its_models_from_a_child(
    redis_test_url: str, redis_client: Any
) -> None:
    store = CheckpointStore(redis_test_url, unique_name("models"), retry_total_s=5.0)
    suite = new_model_suite(ModelConfig())
    states: dict[str, Any] = {}
    for ev in _events(20):
        suite.update(ev, states.setdefault(ev.customer_id, suite.new_customer()))
    runtime = _runtime(store, suite)

    async def run() -> None:
        _checkpoint_turn(runtime, [], models=True)  # type: ignore[arg-type]
        assert runtime.models_child is not None
        _checkpoint_turn(runtime, [], models=True)  # type: ignore[arg-type]  # child busy: skipped
        await runtime.models_child

    try:
        asyncio.run(run())
    finally:
        gc.unfreeze()
    assert runtime.models_saved_at > 0
    saved = store.load_models()
    assert saved is not None and ModelSuite.restore(saved).n_events == 20
    store.delete_group()


def _runtime(store: CheckpointStore, suite: ModelSuite) -> SimpleNamespace:
    """What the checkpoint turn reads of a worker's Runtime (no Kafka: nothing to commit)."""
    return SimpleNamespace(models=suite, checkpoints=store, models_saved_at=0.0,
                           models_child=None, heap=HeapFreezer(float("inf")),
                           settings=load_settings(), metrics=Metrics(), bg_checkpoints={},
                           last_checkpoint={}, partitions={}, app=None)


def test_one_child_saves_a_whole_checkpoint_turn(
    redis_test_url: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every partition due and the models' snapshot leave in one forked child (one fork per
    turn, whatever the number of partitions); a partition whose child is still at work skips
    the next turn, and the turn's offsets are committed once the child stored everything."""
    store = CheckpointStore(redis_test_url, unique_name("turn"), retry_total_s=5.0)
    suite = new_model_suite(ModelConfig())
    runtime = _runtime(store, suite)
    parts = {}
    for p in (0, 3):
        chain = JourneyChain(load_settings().processing())
        chain.process_resolved(_events(7 + p))
        parts[p] = PartitionState(chain=chain, offset=40 + p)
        runtime.partitions[p] = parts[p]
    forks: list[int] = []
    fork = store._in_child
    monkeypatch.setattr(store, "_in_child", lambda work: forks.append(1) or fork(work))
    committed: list[tuple[int, int]] = []
    monkeypatch.setattr(app_module, "_commit_checkpoint",
                        lambda rt, p, offset: _record(committed, (p, offset)))

    async def run() -> None:
        _checkpoint_turn(runtime, sorted(parts.items()), models=True)  # type: ignore[arg-type]
        assert len(forks) == 1 and runtime.bg_checkpoints[0] is runtime.bg_checkpoints[3]
        _checkpoint_turn(runtime, sorted(parts.items()), models=True)  # type: ignore[arg-type]
        assert len(forks) == 1  # (the child is still at work: this turn is skipped)
        await runtime.bg_checkpoints[0]

    try:
        asyncio.run(run())
    finally:
        gc.unfreeze()
    assert sorted(committed) == [(0, 40), (3, 43)]
    for p in (0, 3):
        state, offset = store.load(load_settings().kafka.topics.resolved, p)  # type: ignore[misc]
        assert offset == 40 + p and state.chain.journeys.state_of("c1") is not None
    saved = store.load_models()
    assert saved is not None and ModelSuite.restore(saved).n_events == 0
    assert runtime.metrics.checkpoint_child_seconds.collect()[0].samples  # (observed)
    store.delete_group()


async def _record(into: list[tuple[int, int]], item: tuple[int, int]) -> None:
    into.append(item)
