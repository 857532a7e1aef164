"""Transition corrections as single cells (issue 4, migration 0011), against embedded chDB.

The same simulated history goes through the processor chain three times, and every transition
view must answer the same:

* pane: ``corrections="pane"``, a corrected pane written whole (the chain before 0011);
* cells: the chain as it is, ``corrections="cells"``, a correction written as its changed cells;
* upgraded: pane mode on the schema before 0011 for the first half, then 0011 applied over
  those rows (the views must not change) and the rest in cells mode by the same chain.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from processors.chain import ChainOutput, JourneyChain
from processors.config import ProcessingConfig
from processors.transitions import CellRow, TransitionCounter
from processors.validation import Source
from simulator.model import SimConfig, simulate
from sinks import clickhouse as ch
from sinks.clickhouse import SinkWriter, Store, connect, migrate, run_query
from streams.outputs import chain_rows
from streams.settings import ClickHouseSettings, Settings

pytestmark = pytest.mark.integration
BATCH = 400
BEFORE_0011 = 10  # migrations 1..10
T_WRITE = 1_800_000_000_000  # wall-clock ms of the first emission; the clock moves on


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    return simulate(SimConfig(customers=300, seed=11)).lines


@pytest.fixture(scope="module")
def config(jm_settings: Settings) -> ProcessingConfig:
    return jm_settings.processing()


def view_results(store: Store, config: ProcessingConfig) -> dict[str, list[tuple[Any, ...]]]:
    """Every transition view, whole and sorted; the matrix for every window size, a few
    segments and ends (the latest and three earlier ones)."""
    q: dict[str, list[tuple[Any, ...]]] = {
        "transition_cells_current": run_query(
            store, "SELECT * FROM transition_cells_current ORDER BY ALL").rows,
        "transitions": run_query(store, "SELECT * FROM transitions ORDER BY ALL").rows,
        "transition_latest": run_query(store, "SELECT * FROM transition_latest").rows,
    }
    seen = run_query(store, "SELECT DISTINCT segment FROM transition_cells ORDER BY segment")
    segments = ["*", *[s for (s,) in seen.rows][:2]]
    panes = run_query(store, "SELECT DISTINCT pane_start FROM transition_cells ORDER BY pane_start")
    ends = ["latest", *[str(end) for (end,) in panes.rows][::500][1:4]]
    for size in config.windows.sizes_s:
        for segment in segments:
            for end in ends:
                q[f"transition_matrix {size} {segment} {end}"] = run_query(
                    store, "SELECT * FROM transition_matrix(window_size_s = {size:UInt32}, "
                    "segment = {segment:String}, window_end = {end:String}) ORDER BY ALL",
                    {"size": size, "segment": segment, "end": end}).rows
    return q


@contextmanager
def opened(path: Path, migrations: int | None = None) -> Iterator[Store]:
    """An embedded store, migrated to the latest version or only up to `migrations`."""
    with connect(ClickHouseSettings(url=str(path))) as store:
        if migrations is None:
            migrate(store)
        else:
            every = ch.load_migrations()
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(ch, "load_migrations", lambda: every[:migrations])
                migrate(store)
        yield store


def replay(chain: JourneyChain, lines: list[bytes], store: Store, clock: ch.EmissionClock,
           emitted: Counter[str], start: int = 0, stop: int | None = None, *,
           legacy: bool = False) -> None:
    """Feed lines [start, stop) in batches (the end of the file when `stop` is None) and write
    the transition rows the way the replay and the worker do (streams.outputs.chain_rows);
    `legacy`: as the sink did before 0011, without the `partial` column."""
    writer = SinkWriter(store.client)
    end = len(lines) if stop is None else stop
    for i in range(start, end, BATCH):
        batch = lines[i : min(i + BATCH, end)]
        messages = [(line, Source("t", 0, i + j)) for j, line in enumerate(batch)]
        write(chain.process(messages).cells, writer, clock, emitted, legacy)
    if stop is None:
        write(chain.finish().cells, writer, clock, emitted, legacy)
    writer.flush()


def write(cells: list[CellRow], writer: SinkWriter, clock: ch.EmissionClock,
          emitted: Counter[str], legacy: bool) -> None:
    emitted.update(type(c).__name__ + (" n=0" if not c.n else "") for c in cells)
    rows = chain_rows(ChainOutput(cells=cells), T_WRITE, 0, {}, clock)["transition_cells"]
    if legacy:
        assert not any(row.pop("partial") for row in rows)
    if rows:
        writer.add("transition_cells", rows)


def pane_chain(config: ProcessingConfig) -> JourneyChain:
    chain = JourneyChain(config)
    chain.transitions = TransitionCounter(config.windows, config.journey.allowed_lateness_s,
                                          corrections="pane")
    return chain


def run(path: Path, config: ProcessingConfig, lines: list[bytes],
        make: Callable[[ProcessingConfig], JourneyChain], emitted: Counter[str]
        ) -> dict[str, list[tuple[Any, ...]]]:
    with opened(path) as store:
        replay(make(config), lines, store, ch.EmissionClock(), emitted)
        return view_results(store, config)


def test_cells_corrections_give_the_views_of_whole_pane_corrections(
    tmp_path: Path, lines: list[bytes], config: ProcessingConfig,
) -> None:
    by_pane: Counter[str] = Counter()
    by_cells: Counter[str] = Counter()
    want = run(tmp_path / "pane", config, lines, pane_chain, by_pane)
    got = run(tmp_path / "cells", config, lines, JourneyChain, by_cells)

    # The history corrects published panes (merges, late events), some down to empty cells,
    # so the cells run wrote partial rows, and fewer rows than the pane run.
    assert by_pane["CellUpdate"] == 0 and by_cells["CellUpdate"] > 0
    assert by_cells["CellUpdate n=0"] > 0
    assert sum(by_cells.values()) < sum(by_pane.values())
    assert want["transitions"] and want["transition_cells_current"]
    assert any(want[k] for k in want if k.startswith("transition_matrix"))
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], name


def test_rows_written_before_0011_keep_their_answers_and_a_chain_can_switch_to_cells(
    tmp_path: Path, lines: list[bytes], config: ProcessingConfig,
) -> None:
    emitted: Counter[str] = Counter()
    want = run(tmp_path / "pane", config, lines, pane_chain, Counter())
    half = len(lines) // 2 // BATCH * BATCH
    assert ch.load_migrations()[BEFORE_0011].name == "transition_cell_updates"
    chain = pane_chain(config)
    clock = ch.EmissionClock()
    with opened(tmp_path / "upgraded", migrations=BEFORE_0011) as store:
        replay(chain, lines, store, clock, emitted, stop=half, legacy=True)
        old = view_results(store, config)
        assert BEFORE_0011 + 1 in {m.version for m in migrate(store).applied}
        assert view_results(store, config) == old
        chain.transitions.corrections = "cells"  # a worker restarted on the new version
        replay(chain, lines, store, clock, emitted, start=half)
        got = view_results(store, config)
    assert emitted["CellUpdate"] > 0
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], name
