"""Partition checkpoints in a real Redis: in process and from a forked child (BGSAVE-style)."""

from __future__ import annotations

import pickle
import socket
import struct
import zlib
from typing import Any

import pytest

from processors.errors import CheckpointError
from sinks.checkpoints import CheckpointStore
from tests.conftest import unique_name


def _store(url: str) -> CheckpointStore:
    return CheckpointStore(url, unique_name("ckpt"), retry_total_s=5.0)


def test_a_saved_state_loads_back_with_its_offset(redis_test_url: str, redis_client: Any) -> None:
    store = _store(redis_test_url)
    assert store.load("t", 0) is None
    size = store.save("t", 0, {"customers": {"c1": [1, 2, 3]}}, 41)
    assert size > 0
    assert store.load("t", 0) == ({"customers": {"c1": [1, 2, 3]}}, 41)


def test_a_child_stores_the_state_as_it_was_at_the_fork(
    redis_test_url: str, redis_client: Any
) -> None:
    store = _store(redis_test_url)
    state = {"customers": {f"c{i}": list(range(i % 50)) for i in range(20_000)}}
    pid = store.save_turn_in_child("t", [(3, state, 99)])
    # the worker goes on and changes its state while the child pickles the old one
    state["customers"].clear()
    state["customers"]["later"] = [7]
    assert store.wait_child(pid) is True
    loaded, offset = store.load("t", 3)  # type: ignore[misc]
    assert offset == 99
    assert len(loaded["customers"]) == 20_000 and "later" not in loaded["customers"]
    assert loaded["customers"]["c49"] == list(range(49))


def test_a_child_that_cannot_reach_redis_reports_failure() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = CheckpointStore(f"redis://127.0.0.1:{port}/0", "g", retry_total_s=0.5)
    pid = store.save_turn_in_child("t", [(0, {"x": 1}, 5)])
    assert store.wait_child(pid) is False


def test_the_models_snapshot_round_trips_in_process_and_from_a_child(
    redis_test_url: str, redis_client: Any
) -> None:
    store = _store(redis_test_url)
    assert store.load_models() is None
    assert store.save_models(b"JMOM first") == len(b"JMOM first")
    assert store.load_models() == b"JMOM first"
    taken: list[bytes] = []
    pid = store.save_turn_in_child("t", [], lambda: taken.append(b"x") or b"JMOM second")
    assert store.wait_child(pid) is True
    assert store.load_models() == b"JMOM second"
    assert taken == []  # the snapshot was taken in the child, not here
    assert store.models_key() not in {store.key("models", 0)}
    assert store.delete_group() >= 1 and store.load_models() is None


def test_the_child_yields_the_cores_to_its_parent(redis_test_url: str, redis_client: Any) -> None:
    """The child pickles at nice 19: the worker's batches, the broker and the database come
    first while it works (the latency of the events around a checkpoint)."""
    import os

    store = _store(redis_test_url)
    pid = store.save_turn_in_child("t", [], lambda: str(os.nice(0)).encode())
    assert store.wait_child(pid) is True
    assert int(store.load_models()) == min(19, os.nice(0) + 19)  # type: ignore[arg-type]


def test_a_checkpoint_of_the_zlib_format_still_loads(
    redis_test_url: str, redis_client: Any
) -> None:
    """Format 1 (zlib, before session 20) is read; a save writes format 2 (zstd)."""
    store = _store(redis_test_url)
    state = {"customers": {f"c{i}": [i] * 3 for i in range(100)}}
    old = struct.pack(">HQ", 1, 42 + 1) + zlib.compress(pickle.dumps(state), 1)
    redis_client.set(store.key("t", 1), old)
    assert store.load("t", 1) == (state, 42)
    store.save("t", 1, state, 43)
    value = redis_client.get(store.key("t", 1))
    assert struct.unpack_from(">HQ", value) == (2, 44)
    assert store.load("t", 1) == (state, 43)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (struct.pack(">HQ", 2, 5) + b"not zstd at all", "is unreadable"),
        (struct.pack(">HQ", 1, 5) + b"not zlib either", "is unreadable"),
        (struct.pack(">HQ", 9, 5) + b"...", "has format 9, this version reads 1 and 2"),
        (b"\x00", "is unreadable"),
    ],
)
def test_an_unreadable_checkpoint_is_an_error_that_names_it(
    redis_test_url: str, redis_client: Any, value: bytes, says: str
) -> None:
    store = _store(redis_test_url)
    redis_client.set(store.key("t", 2), value)
    with pytest.raises(CheckpointError, match=says) as err:
        store.load("t", 2)
    assert store.key("t", 2) in str(err.value) and "delete it" in str(err.value)


def test_pickling_runs_without_the_collector_and_leaves_it_as_it_was(
    redis_test_url: str, redis_client: Any
) -> None:
    """The collector would walk the objects a checkpoint's pickling piles up (the native cores'
    exports), again and again: the child never collects, and a save in process pauses it."""
    import gc

    store = _store(redis_test_url)
    pid = store.save_turn_in_child("t", [], lambda: str(gc.isenabled()).encode())
    assert store.wait_child(pid) is True
    assert store.load_models() == b"False"

    seen: list[bool] = []

    class Probe:
        def __reduce__(self) -> tuple[Any, ...]:
            seen.append(gc.isenabled())
            return (dict, ())

    assert gc.isenabled()
    store.save("t", 4, Probe(), 1)
    gc.disable()
    try:
        store.save("t", 4, Probe(), 2)
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert seen == [False, False] and gc.isenabled()
