"""streams.outputs.snapshot_rows: the replay's snapshot rows, also from several partitions.

A streaming worker holds one chain per partition. Fed the customers split over two chains (each
customer's events in one), its snapshot must be the single chain's: attribution over the union of
the paths, funnel drop-off per shard adding up to the whole. No I/O.
"""

from __future__ import annotations

from collections import defaultdict
from zlib import crc32

import pytest

from processors.chain import JourneyChain
from processors.validation import Source
from simulator.model import SimConfig, simulate
from streams.outputs import snapshot_rows
from streams.settings import load_settings

NOW_MS = 1_900_000_000_000


def _chain() -> JourneyChain:
    return JourneyChain(load_settings().processing())


@pytest.fixture(scope="module")
def chains() -> tuple[JourneyChain, list[tuple[int, JourneyChain]]]:
    # The events as the worker's partitions get them: resolved once (here by a replay chain,
    # which releases them in event-time order under their final customer), keyed by customer.
    sim = simulate(SimConfig(customers=300, seed=11, drift_segment=None))
    replay = _chain()
    released = []
    for i in range(0, len(sim.lines), 1000):
        released += replay.process(
            [(line, Source("t", 0, i + j)) for j, line in enumerate(sim.lines[i : i + 1000])]
        ).released
    released += replay.finish().released
    single, shards = _chain(), {0: _chain(), 1: _chain()}
    for i in range(0, len(released), 500):
        batch = released[i : i + 500]
        single.process_resolved(batch)
        for p, chain in shards.items():
            chain.process_resolved([e for e in batch if crc32(e.customer_id.encode()) % 2 == p])
    for chain in (single, *shards.values()):
        chain.finish()
    return single, sorted(shards.items())


def _attribution(rows: list[dict]) -> dict[tuple[str, str, str], tuple[float, float]]:
    return {(r["model"], r["level"], r["key"]): (r["conversions_attributed"],
                                                 r["revenue_attributed"]) for r in rows}


def test_two_partitions_give_the_single_chains_attribution(chains) -> None:
    single, shards = chains
    want = snapshot_rows([(0, single)], None, [], NOW_MS)
    got = snapshot_rows(shards, None, [], NOW_MS)
    a, b = _attribution(want["attribution"]), _attribution(got["attribution"])
    assert len(a) > 20 and a.keys() == b.keys()
    for key, (conv, rev) in a.items():
        assert b[key][0] == pytest.approx(conv, rel=1e-9, abs=1e-9), key
        assert b[key][1] == pytest.approx(rev, rel=1e-9, abs=1e-6), key
    assert {r["as_of"] for r in got["attribution"]} == {NOW_MS}


def test_funnel_dropoff_per_shard_adds_up(chains) -> None:
    single, shards = chains
    want = snapshot_rows([(0, single)], None, [], NOW_MS)["funnel_dropoff"]
    got = snapshot_rows(shards, None, [], NOW_MS)["funnel_dropoff"]
    assert {r["shard"] for r in got} == {0, 1}

    def totals(rows: list[dict]) -> dict:
        acc: dict = defaultdict(lambda: [0, 0, 0])
        for r in rows:
            t = acc[(r["funnel"], r["stage"], r["segment"], r["cohort_week"])]
            t[0] += r["entered"]
            t[1] += r["advanced"]
            t[2] += r["dropped"]
        return dict(acc)

    assert totals(got) == totals(want)
    assert sum(r["entered"] for r in want) > 0


def test_a_part_of_the_partitions_writes_no_attribution_or_segments(chains) -> None:
    _, shards = chains
    rows = snapshot_rows(shards[:1], None, [], NOW_MS, whole=False)
    assert set(rows) == {"funnel_dropoff"}
    assert {r["shard"] for r in rows["funnel_dropoff"]} == {0}
