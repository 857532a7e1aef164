"""The in-process replay: JSON Lines history -> the processor chain -> models -> ClickHouse.

The same processors as the streaming workers, in one process: identities in memory, ClickHouse
embedded (chDB) by default or a server with ``clickhouse.url``. Every analyst row is written as
a full value under a deterministic key, so replaying the same files again (after a crash, or on
purpose) leaves the same tables.

Rows are written when their facts are final:

* ``touchpoints``, ``funnel_progress`` and the models see events once they are behind the frontier
  (watermark minus allowed lateness), in event-time order and under their final customer id;
* ``transitions`` cells when their pane is final; ``dead_letters`` (bad input, unusable
  identities, late events) and identity links and merges at once;
* ``customer_score_history`` (each customer's last score per event-time day) as the models score
  the released events;
* ``funnel_dropoff``, ``attribution``, ``segments`` and ``customer_scores`` as snapshots at the
  end of the replay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from online_models.suite import CustomerModelState, ModelConfig, Scores
from processors.chain import ChainOutput, JourneyChain
from processors.config import ProcessingConfig
from processors.validation import Lines
from sinks import clickhouse as ch
from streams.corpus import new_model_suite
from streams.files import Chunk, read_chunks
from streams.heap import REPLAY_FULL_EVERY_S, HeapFreezer
from streams.outputs import (
    add_rows,
    chain_rows,
    score_history_rows,
    score_released,
    sentiments_of,
    snapshot_rows,
)
from streams.settings import ModelsSettings

log = logging.getLogger(__name__)

ProgressFn = Callable[[Chunk, dict[str, int]], None]


@dataclass
class ReplayStats:
    counters: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    n_lines: int = 0

    @property
    def events_per_s(self) -> float:
        return self.n_lines / self.elapsed_s if self.elapsed_s else 0.0

    def add(self, counters: dict[str, int]) -> None:
        for key, value in counters.items():
            self.counters[key] = self.counters.get(key, 0) + value


def model_config(config: ProcessingConfig, models: ModelsSettings | None = None) -> ModelConfig:
    """The models' configuration from the processing settings and the `models` group."""
    m = models or ModelsSettings()
    return ModelConfig(
        outcomes=config.outcomes,
        session_gap_s=config.journey.session_gap_s,
        convert_horizon_s=config.outcomes.null_horizon_s,
        churn_horizon_s=config.outcomes.null_horizon_s,
        watch_propensity_error=m.watch_propensity_error,
        propensity_error_min_fit=m.propensity_error_min_fit,
    )


class Replayer:
    """Runs files through the chain into a ClickHouse store. One instance per replay."""

    def __init__(
        self,
        config: ProcessingConfig,
        store: ch.Store,
        *,
        flush_rows: int = 50_000,
        flush_interval_s: float = 5.0,
        retry_total_s: float = 120.0,
        with_models: bool = True,
        chunk_lines: int = 20_000,
        clock: Callable[[], float] = time.time,
        models: ModelsSettings | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.chunk_lines = chunk_lines
        self.clock = clock
        self.writer = store.writer(
            flush_rows=flush_rows, flush_interval_s=flush_interval_s, retry_total_s=retry_total_s
        )
        # the sentiment model learns the `models.sentiment_corpus` setting's texts ("": shipped)
        models = models or ModelsSettings()
        self.models = new_model_suite(model_config(config, models), models.sentiment_corpus) \
            if with_models else None
        self.model_states: dict[str, CustomerModelState] = {}
        self.last_scores: dict[str, Scores] = {}
        self.chain = JourneyChain(config, segment_of=self._segment_of if with_models else None)
        self.heap = HeapFreezer(REPLAY_FULL_EVERY_S)
        self.stats = ReplayStats()
        self.emission_clock = ch.EmissionClock()

    # -- the models -------------------------------------------------------------------------

    def _segment_of(self, customer_id: str) -> str:
        state = self.model_states.get(customer_id)
        return state.segment if state is not None else "all"

    def _score(self, out: ChainOutput) -> dict[str, float]:
        """Feed released events to the models; return each text event's sentiment score."""
        if self.models is None:
            return {}
        for merge in out.merges:
            lost = self.model_states.pop(merge.loser, None)
            if lost is not None and merge.winner not in self.model_states:
                self.model_states[merge.winner] = lost
            self.last_scores.pop(merge.loser, None)
        scores = score_released(self.models, self.model_states, self.last_scores, out.released)
        for score in scores:
            self._add("alerts", [ch.alert_row(alert) for alert in score.alerts])
        self._add("customer_score_history", score_history_rows(scores))
        return sentiments_of(out.released, scores)

    # -- rows -------------------------------------------------------------------------------

    def _add(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self.writer.add(table, rows)
            self.stats.rows[table] = self.stats.rows.get(table, 0) + len(rows)

    def _write(self, out: ChainOutput, now_ms: int) -> None:
        sentiments = self._score(out)
        rows = chain_rows(out, now_ms, 0, sentiments, self.emission_clock)
        add_rows(self.writer, rows, self.stats.rows)
        self.writer.maybe_flush()

    def _write_snapshots(self, now_ms: int) -> None:
        rows = snapshot_rows([(0, self.chain)], self.models, self.last_scores.values(), now_ms)
        add_rows(self.writer, rows, self.stats.rows)

    # -- the run ----------------------------------------------------------------------------

    def run(self, paths: Sequence[Path], progress: ProgressFn | None = None) -> ReplayStats:
        started = time.perf_counter()
        for chunk in read_chunks(paths, self.chunk_lines):
            # (a Source is made only for a line the chain dead-letters: processors.validation.Lines)
            messages = Lines(chunk.lines, chunk.path, 0, chunk.line_nos)
            with self.heap.batch():
                out = self.chain.process(messages)
            self._write(out, int(self.clock() * 1000))
            self.stats.add(out.counters())
            self.stats.n_lines += len(messages)
            if progress is not None:
                progress(chunk, self.stats.counters)
        now_ms = int(self.clock() * 1000)
        final = self.chain.finish()
        self._write(final, now_ms)
        self._write_snapshots(now_ms)
        self.writer.flush()
        self.stats.elapsed_s = time.perf_counter() - started
        return self.stats
