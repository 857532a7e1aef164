"""Partition checkpoints in Redis: one Kafka partition's worker state and its offset, together.

The journey worker keeps each partition's processors in memory and checkpoints them here with
the offset of the last message they contain. A worker that takes the partition over (after a
crash, a rebalance or a restart) loads the checkpoint and seeks the consumer to the next offset,
so the state and the input position always agree: messages after the checkpoint are processed
again, and since the processors are deterministic and every ClickHouse row is an idempotent full
value, nothing is lost and nothing counts twice. This is the Kafka Streams recipe (state plus
offsets, restored together), with Redis as the store because a partition's state can be larger
than a Kafka message.

The value is ``zstd(pickle(state))`` (level 1) with a small header: format version and offset.
Format 1, ``zlib(pickle(state))`` (level 1), is still read: checkpoints written before session 20
load, and the next save writes format 2. zstd at level 1 compresses a partition's pickle about
3x faster than zlib at level 1 and into a smaller value (`bench/bench_checkpoint.py`).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import pickle
import signal
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import cramjam
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from processors.collector import gc_paused
from processors.errors import CheckpointError, ServiceUnavailable

log = logging.getLogger(__name__)

FORMAT: Final = 2  # zstd; 1: zlib (read, no longer written)
_ZLIB: Final = 1
_HEADER: Final = struct.Struct(">HQ")  # format version, offset + 1 (0: none)
T = TypeVar("T")


class CheckpointStore:
    """Save and load partition checkpoints under ``{prefix}:{group}:{topic}:{partition}``."""

    def __init__(
        self,
        url: str,
        group: str,
        *,
        prefix: str = "jm:ckpt",
        retry_total_s: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self.url = url
        self.group = group
        self.prefix = prefix
        self.retry_total_s = retry_total_s
        self.sleep = sleep

    def key(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:{self.group}:{topic}:{partition}"

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        delay, waited = 0.2, 0.0
        while True:
            try:
                return fn()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if waited >= self.retry_total_s:
                    raise ServiceUnavailable(
                        f"Redis at {self.url} unreachable for {waited:.0f}s while trying to "
                        f"{what}: {exc}"
                    ) from None
                log.warning("Redis unreachable (%s); retrying to %s in %.1fs", exc, what, delay)
                self.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)

    def save(self, topic: str, partition: int, state: Any, offset: int) -> int:
        """Store `state` as of `offset` (the last message it includes). Returns the size."""
        with gc_paused():
            body = compress(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
        value = _HEADER.pack(FORMAT, offset + 1) + body
        self._retry("save a checkpoint", lambda: self.client.set(self.key(topic, partition), value))
        return len(value)

    def save_turn_in_child(self, topic: str, partitions: Sequence[tuple[int, Any, int]],
                           models_snapshot: Callable[[], bytes] | None = None) -> int:
        """One forked child for a whole checkpoint turn: it stores each ``(partition, state,
        offset)`` in turn, then the models' snapshot when `models_snapshot` is given (taken in
        the child). Its pid (:meth:`wait_child`: True when it stored all of them).

        Redis's own BGSAVE trick: the child sees the state exactly as it was at the fork (the
        pages are shared copy-on-write) and pickles it while this process goes on; pickling a
        large partition in process holds the interpreter for seconds (about 90 µs per customer
        measured). The child uses a fresh Redis connection, never this process's locks, dies with
        its parent (so an old snapshot cannot land after a restarted worker's newer one), and
        leaves with ``os._exit``: exit code 0 when everything is stored.

        One fork per turn, whatever the number of partitions: each fork blocks the worker while
        the kernel copies its page tables, and children working side by side took both cores of
        a small machine from the worker for seconds (issue 6)."""
        def work(child: CheckpointStore) -> None:
            for partition, state, offset in partitions:
                child.save(topic, partition, state, offset)
            if models_snapshot is not None:
                child.save_models(models_snapshot())

        return self._in_child(work)

    def _in_child(self, work: Callable[[CheckpointStore], object]) -> int:
        """Fork; the child runs `work` with its own store and exits (0 when it returned)."""
        parent = os.getpid()
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            _die_with_parent(parent)
            # Pickling makes Python objects by the hundred thousand (the native cores' exports),
            # and the collector would walk them over and over while they pile up: ~40 % of a
            # partition's pickle at 35k customers (bench/bench_checkpoint.py). The child lives
            # for one turn and leaves by os._exit: it never collects.
            gc.disable()
            # The child's pickling competes for the cores with its parent, the broker and the
            # database for the seconds it takes: it yields to them (nice 19), since the parent's
            # batches carry the events' latency and the child only has to finish eventually.
            with contextlib.suppress(OSError):
                os.nice(19)
            work(CheckpointStore(self.url, self.group, prefix=self.prefix,
                                 retry_total_s=self.retry_total_s))
            code = 0
        finally:
            os._exit(code)

    # -- the worker's models ----------------------------------------------------------------
    # One snapshot per consumer group (`ModelSuite.snapshot()`: versioned bytes), the last
    # saved by any of its workers. The models are shared by all of a worker's partitions, not
    # part of any partition's state: a restarted worker continues learning from the group's
    # latest snapshot instead of from zero.

    def models_key(self) -> str:
        return f"{self.prefix}:{self.group}:models"

    def save_models(self, snapshot: bytes) -> int:
        """Store the models' snapshot bytes; returns their size."""
        key = self.models_key()
        self._retry("save the models", lambda: self.client.set(key, snapshot))
        return len(snapshot)

    def load_models(self) -> bytes | None:
        """The group's latest models snapshot, or None."""
        key = self.models_key()
        value = self._retry("load the models", lambda: self.client.get(key))
        return None if value is None else bytes(value)

    @staticmethod
    def wait_child(pid: int) -> bool:
        """Block until the child of :meth:`save_turn_in_child` ends; True when it stored it all."""
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) == 0

    def load(self, topic: str, partition: int) -> tuple[Any, int] | None:
        """The saved (state, offset), or None when the partition has no checkpoint."""
        key = self.key(topic, partition)
        value = self._retry("load a checkpoint", lambda: self.client.get(key))
        if value is None:
            return None
        try:
            version, offset_plus = _HEADER.unpack_from(value)
            if version not in (FORMAT, _ZLIB):
                raise CheckpointError(
                    f"checkpoint {key} has format {version}, this version reads {_ZLIB} and "
                    f"{FORMAT}; delete it to rebuild the partition from the start of the topic"
                )
            body = memoryview(value)[_HEADER.size :]
            raw = zlib.decompress(body) if version == _ZLIB else decompress(body)
            state = pickle.loads(raw)
        except (struct.error, zlib.error, cramjam.DecompressionError, pickle.UnpicklingError,
                EOFError) as exc:
            raise CheckpointError(
                f"checkpoint {key} is unreadable ({exc}); delete it to rebuild the partition "
                "from the start of the topic"
            ) from None
        return state, offset_plus - 1

    def delete_group(self) -> int:
        """Remove every checkpoint of this consumer group (tests, resets)."""
        keys = list(self.client.scan_iter(f"{self.prefix}:{self.group}:*"))
        return int(self.client.delete(*keys)) if keys else 0

    def close(self) -> None:
        self.client.close()


def compress(data: bytes) -> bytes:
    """A checkpoint's body: zstd, level 1 (format 2)."""
    return bytes(cramjam.zstd.compress(data, level=1))


def decompress(body: bytes | memoryview) -> memoryview:
    """The pickle in a format-2 body (a zero-copy view of cramjam's buffer)."""
    return memoryview(cramjam.zstd.decompress(body))


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: only the check below
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:  # died before the request took effect
        os._exit(1)
