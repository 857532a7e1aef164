"""identity_merges rows: a customer id that becomes canonical again gets its own row first."""

from __future__ import annotations

from processors.identity import MergeRecord
from streams.outputs import merge_rows_of


def test_a_renamed_winner_replaces_its_stale_row_and_a_plain_merge_writes_one_row() -> None:
    revival = MergeRecord("B", "A", "e2", 1, "earlier_evidence")  # A had been merged into B
    plain = MergeRecord("D", "C", "e3", 2, "shared_identifier")
    rows = merge_rows_of([revival, plain])
    assert [(r.loser, r.winner) for r in rows] == [("A", "A"), ("B", "A"), ("D", "C")]
