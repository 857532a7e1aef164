"""A chain holding its frontier while a merged customer is on its way (streaming merges).

Timeline (lateness 10 min; W lives in the winner's chain, L in the loser's):

    W:  landing .......................... signup ........ [far-future event]
    L:          pricing   purchase
                 ^ merge L->W announced; L's transfer arrives only after the far-future event

Without the hold the far-future event releases W's events to the funnels before L's arrive; with
it the winner's chain releases exactly what one chain seeing the merge in time releases.
"""

from __future__ import annotations

from processors.chain import ChainOutput, JourneyChain
from processors.config import FunnelConfig, FunnelStage, JourneyConfig, ProcessingConfig
from processors.identity import MergeRecord
from tests.factories import MIN_MS, T0_MS, resolved

FUNNEL = FunnelConfig(
    name="f",
    stages=[
        FunnelStage(name="visit", touchpoints=["landing_page"]),
        FunnelStage(name="consider", touchpoints=["pricing_page"]),
        FunnelStage(name="buy", touchpoints=["purchase"]),
    ],
)
CONFIG = ProcessingConfig(
    funnels=[FUNNEL], journey=JourneyConfig(allowed_lateness_s=600), identity_salt="s"
)
MERGE = MergeRecord("L", "W", "ev-merge", T0_MS + 3 * MIN_MS, "shared_identifier")


def _events() -> tuple[list, list, list]:
    w = [resolved("W", "landing_page", T0_MS, event_id="w1"),
         resolved("W", "signup", T0_MS + 5 * MIN_MS, event_id="w2")]
    lo = [resolved("L", "pricing_page", T0_MS + 1 * MIN_MS, event_id="l1"),
          resolved("L", "purchase", T0_MS + 2 * MIN_MS, event_id="l2")]
    far = [resolved("X", "landing_page", T0_MS + 600 * MIN_MS, event_id="x1")]
    return w, lo, far


def _summary(outs: list[ChainOutput]) -> dict[str, list]:
    return {
        "released": [(e.customer_id, e.event.event_id) for o in outs for e in o.released],
        "funnel": sorted((t.customer_id, t.from_stage, t.to_stage) for o in outs
                         for t in o.funnel_transitions),
    }


def _one_chain() -> dict[str, list]:
    w, lo, far = _events()
    chain = JourneyChain(CONFIG)
    outs = [chain.process_resolved(w + lo), chain.process_resolved([], [MERGE]),
            chain.process_resolved(far)]
    return _summary(outs)


def _two_chains(hold: bool) -> tuple[dict[str, list], JourneyChain]:
    w, lo, far = _events()
    winner, loser = JourneyChain(CONFIG), JourneyChain(CONFIG)
    outs = [winner.process_resolved(w), loser.process_resolved(lo)]
    if hold:
        winner.hold_at_current()  # the merge's announcement reached the winner's partition
    outs.append(winner.process_resolved(far))  # overtakes the transfer
    package = loser.detach_customer("L", "W")
    winner.hold = None  # the transfer arrived
    outs.append(winner.attach_customer(package, MERGE))
    return _summary(outs), winner


def test_a_held_chain_releases_nothing_past_its_frontier() -> None:
    w, _, far = _events()
    chain = JourneyChain(CONFIG)
    chain.process_resolved(w)
    chain.hold_at_current()
    out = chain.process_resolved(far)
    assert out.released == [] and out.funnel_transitions == [] and out.cells == []
    chain.hold = None
    later = chain.process_resolved([])
    assert [e.event.event_id for e in later.released] == ["w1", "w2"]


def test_holding_until_the_transfer_gives_the_single_chain_result() -> None:
    want = _one_chain()
    held, _ = _two_chains(hold=True)
    assert held == want
    assert [x for _, x in want["released"]] == ["w1", "l1", "l2", "w2"]


def test_without_the_hold_the_merged_customer_is_released_out_of_order() -> None:
    unheld, _ = _two_chains(hold=False)
    assert unheld != _one_chain()  # the race the hold prevents


def test_a_customer_merged_away_can_win_a_later_merge() -> None:
    # B -> A, then an earlier identifier makes B canonical again: A -> B. No rename cycle.
    chain = JourneyChain(CONFIG)
    chain.process_resolved([resolved("A", "landing_page", T0_MS, event_id="a1"),
                            resolved("B", "pricing_page", T0_MS + MIN_MS, event_id="b1")])
    chain.process_resolved([], [MergeRecord("B", "A", "b1", T0_MS + MIN_MS, "shared_identifier")])
    chain.process_resolved([], [MergeRecord("A", "B", "a0", T0_MS, "earlier_evidence")])
    assert chain.winner_of("A") == "B" and chain.winner_of("B") is None
    out = chain.finish()
    assert {e.customer_id for e in out.released} == {"B"}


def test_a_redelivered_copy_reaching_the_winner_before_the_transfer_counts_once() -> None:
    # After a crash the raw batch with l2 is resolved again, now under W (the merge is
    # committed): that copy reaches the winner's partition before L's transfer brings the first.
    #
    #   winner:  w1 ... w2 ... l2' (copy, as W)      [transfer: l1, l2]
    #   loser:       l1  l2
    want = _one_chain()
    w, lo, far = _events()
    winner, loser = JourneyChain(CONFIG), JourneyChain(CONFIG)
    outs = [winner.process_resolved(w), loser.process_resolved(lo)]
    winner.hold_at_current()
    copy = resolved("W", "purchase", T0_MS + 2 * MIN_MS, event_id="l2")
    outs.append(winner.process_resolved([copy]))
    outs.append(winner.process_resolved(far))
    package = loser.detach_customer("L", "W")
    winner.hold = None
    outs.append(winner.attach_customer(package, MERGE))
    got = _summary(outs)
    assert got == want
    assert [x for _, x in got["released"]].count("l2") == 1
    assert [e[1] for e in winner.journeys.customers["W"].history].count("l2") == 1


def test_a_copy_waiting_at_the_winner_of_an_event_the_loser_released_counts_once() -> None:
    # The loser's partition ran ahead and released l1, l2 to its funnels; the redelivered copy
    # of l2 (as W) waits at the winner's. The transfer brings l2 inside L's funnel run.
    #
    #   winner:  w1 ... w2 ... l2' (copy, as W)          [transfer: L's run with l1, l2]
    #   loser:       l1  l2 .................. y1 (far: releases l1, l2 there)
    w, lo, _ = _events()
    winner, loser = JourneyChain(CONFIG), JourneyChain(CONFIG)
    winner.process_resolved(w)
    loser.process_resolved([*lo, resolved("Y", "signup", T0_MS + 600 * MIN_MS, event_id="y1")])
    winner.hold_at_current()
    copy = resolved("W", "purchase", T0_MS + 2 * MIN_MS, event_id="l2")
    winner.process_resolved([copy])
    package = loser.detach_customer("L", "W")
    assert package["pending"] == []  # released on the loser's side
    winner.hold = None
    winner.attach_customer(package, MERGE)
    rest = winner.finish()
    assert "l2" not in [e.event.event_id for e in rest.released]


def test_events_of_a_customer_merged_into_the_loser_before_go_with_the_transfer() -> None:
    # Y was merged into L on the loser's partition, then L into W (another partition): Y's
    # events still waiting for the frontier belong to W now and must travel with L.
    #
    #   winner:  w1 ................................ [transfer: L with Y's l1, l2]
    #   loser:       l1 l2 (as Y)  l3 (as L)   Y -> L
    y_into_l = MergeRecord("Y", "L", "l3", T0_MS + 3 * MIN_MS, "shared_identifier")
    w = [resolved("W", "landing_page", T0_MS, event_id="w1")]
    lo = [resolved("Y", "pricing_page", T0_MS + 1 * MIN_MS, event_id="l1"),
          resolved("Y", "purchase", T0_MS + 2 * MIN_MS, event_id="l2"),
          resolved("L", "signup", T0_MS + 3 * MIN_MS, event_id="l3")]
    far = [resolved("X", "landing_page", T0_MS + 600 * MIN_MS, event_id="x1")]
    one = JourneyChain(CONFIG)
    want = _summary([one.process_resolved(w + lo[:2]), one.process_resolved(lo[2:], [y_into_l]),
                     one.process_resolved([], [MERGE]), one.process_resolved(far)])
    winner, loser = JourneyChain(CONFIG), JourneyChain(CONFIG)
    outs = [winner.process_resolved(w), loser.process_resolved(lo[:2]),
            loser.process_resolved(lo[2:], [y_into_l])]
    winner.hold_at_current()
    package = loser.detach_customer("L", "W")
    winner.hold = None
    outs += [winner.attach_customer(package, MERGE), winner.process_resolved(far)]
    outs.append(loser.finish())
    assert _summary(outs) == want
    assert ("W", 1, 2) in want["funnel"]  # consider -> buy
