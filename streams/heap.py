"""The cyclic garbage collector against a long-lived state (issues 4 and 6).

A replay or a worker keeps every customer's state alive for the whole run. CPython's collector
walks every batch's survivors on their way from the young generation to the old one (~350k
container objects per batch of 20k events: the batch's events and outputs, new state), and all of
the state again at each full collection. On the 20k-customer chain benchmark that was about a
third of the chain's CPU time, for no garbage worth the name: the processors make almost no
reference cycles (reference counting frees what they drop; the run's peak memory is the same with
the collector off).

`HeapFreezer.batch` runs a batch with the collector paused and, before it resumes, moves every
object alive to the permanent generation (``gc.freeze``), which collections skip. Reference
counting still frees frozen objects as usual; only a reference cycle that dies among them waits
for the next full collection: every `full_every_s` everything is unfrozen and collected once.
That collection walks the whole state (about 2 s at 13k customers in the worker), so it is rare.
The worker also freezes before each checkpoint's fork, as the Python docs advise (the collector
then no longer writes to the pages the child shares), after collecting the young generations.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from processors.chain import gc_paused

log = logging.getLogger(__name__)

# The worker: the full collection stops consuming for seconds (minutes at 1M customers).
WORKER_FULL_EVERY_S = 6 * 3600.0
# A replay: throughput, not latency; at 1M customers the full walk is ~1-2 % of 10 minutes.
REPLAY_FULL_EVERY_S = 600.0


class HeapFreezer:
    """Freeze the heap after each batch; unfreeze and collect it all every `full_every_s`."""

    def __init__(self, full_every_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.full_every_s = full_every_s
        self.clock = clock
        self.full_at = clock()  # the last full collection
        self.n_full = 0

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run a batch with the collector paused, then freeze what it left alive."""
        with gc_paused():
            yield
            self.freeze()

    def freeze(self, young: bool = False) -> None:
        """Freeze every object alive, after a full collection if one is due. With `young`, the
        young generations are collected first, so what died in them is freed, not frozen (one
        walk over everything allocated since the last freeze)."""
        now = self.clock()
        if now - self.full_at >= self.full_every_s:
            started = time.perf_counter()
            gc.unfreeze()
            found = gc.collect()
            self.full_at = now
            self.n_full += 1
            log.info("full garbage collection: %d objects freed in %.2f s", found,
                     time.perf_counter() - started)
        elif young:
            gc.collect(1)
        gc.freeze()
