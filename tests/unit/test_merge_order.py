"""The order in which merges reach the partitions (processors.identity.merges_to_send and
merge_waves): related merges in commit order, each step confirmed before the next."""

from __future__ import annotations

from processors.identity import MergeRecord, merge_waves, merges_to_send


def _m(loser: str, winner: str, ev: str) -> MergeRecord:
    return MergeRecord(loser, winner, ev, 0, "shared_identifier")


L_INTO_W = _m("L", "W", "e1")
W_INTO_L = _m("W", "L", "e2")
X_INTO_Y = _m("X", "Y", "e3")
Y_INTO_W = _m("Y", "W", "e4")


def test_an_earlier_related_merge_of_another_batch_goes_first() -> None:
    # Another worker committed L into W (seq 1) and has not produced it yet; this batch
    # committed W back into L (seq 3). X into Y (seq 2) has nothing to do with either.
    outbox = [(1, L_INTO_W), (2, X_INTO_Y), (3, W_INTO_L)]
    assert merges_to_send([W_INTO_L], outbox) == [L_INTO_W, W_INTO_L]


def test_related_through_each_other_counts() -> None:
    # X into Y (1), then Y into W (2) by another batch, then this batch's W into L (3): X into Y
    # touches W's customers only through Y into W, and still goes first.
    outbox = [(1, X_INTO_Y), (2, Y_INTO_W), (3, W_INTO_L)]
    assert merges_to_send([W_INTO_L], outbox) == [X_INTO_Y, Y_INTO_W, W_INTO_L]


def test_later_merges_and_acknowledged_ones_are_not_sent() -> None:
    # Committed after this batch's merge: that batch sends this one first, not the other way.
    assert merges_to_send([L_INTO_W], [(1, L_INTO_W), (2, W_INTO_L)]) == [L_INTO_W]
    # Produced and acknowledged already (gone from the outbox): nothing to re-send.
    assert merges_to_send([W_INTO_L], [(3, W_INTO_L)]) == [W_INTO_L]
    assert merges_to_send([], [(1, L_INTO_W)]) == []


def test_waves_never_hold_two_merges_of_one_customer() -> None:
    assert merge_waves([L_INTO_W, X_INTO_Y, W_INTO_L, X_INTO_Y._replace(loser="Z")]) == [
        [L_INTO_W, X_INTO_Y], [W_INTO_L, X_INTO_Y._replace(loser="Z")]]
    assert merge_waves([X_INTO_Y, Y_INTO_W, W_INTO_L]) == [[X_INTO_Y], [Y_INTO_W], [W_INTO_L]]
    assert merge_waves([]) == []
