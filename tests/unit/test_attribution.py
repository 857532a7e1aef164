"""Attribution on small chains worked out by hand, and against a second exact method.

The second method is the definition itself: remove a label (its states go to null), solve the
absorbing chain again, ``1 - P(conv | removed) / P(conv)``. The module uses one inverse and
first-hit distributions instead, so agreement checks the algebra, not a copy of it.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from processors.attribution import (
    CONVERSION,
    NULL,
    START,
    MarkovChain,
    Path,
    attribute,
    chain_from_pairs,
    chain_from_paths,
    chain_from_triples,
    heuristic_attribution,
    markov_attribution,
    paths_from_events,
    removal_effects,
)
from tests.factories import DAY_MS, MIN_MS, T0_MS, resolved


def direct_removal(chain: MarkovChain, label: str | None) -> tuple[float, float]:
    """P(conversion) and expected value from start, with `label`'s states sent to null."""
    states = sorted({s for key in chain.counts for s in key if isinstance(s, tuple)}, key=repr)
    idx = {s: i for i, s in enumerate(states)}
    n = len(states)
    a, b_conv, b_val = np.eye(n), np.zeros(n), np.zeros(n)
    totals: dict = {}
    for (src, _), c in chain.counts.items():
        totals[src] = totals.get(src, 0.0) + c
    for (src, dst), c in chain.counts.items():
        if label is not None and label in src:
            continue
        i = idx[src]
        if dst == CONVERSION:
            b_conv[i] += c / totals[src]
            b_val[i] += chain.conversion_value.get(src, 0.0) / totals[src]
        elif isinstance(dst, tuple) and not (label is not None and label in dst):
            a[i, idx[dst]] -= c / totals[src]
    start = idx[()]
    return float(np.linalg.solve(a, b_conv)[start]), float(np.linalg.solve(a, b_val)[start])


def test_a_two_channel_chain_by_hand() -> None:
    #  paths (conversions, nulls):  A>B (1, 1)   A (0, 2)   B (1, 1)
    #  start -> A 4/6, start -> B 2/6;  A -> B 1/2, A -> null 1/2;  B -> conv 1/2, B -> null 1/2
    #  P(conv) = 2/3 * 1/2 * 1/2 + 1/3 * 1/2 = 1/3
    #  without A: 1/3 * 1/2 = 1/6, removal effect 1/2;  without B: 0, removal effect 1
    #  2 conversions shared 1/2 : 1 -> A 2/3, B 4/3
    paths = [Path(("A", "B"), 1, 10.0, 1), Path(("A",), 0, 0.0, 2), Path(("B",), 1, 30.0, 1)]
    effects = removal_effects(chain_from_paths(paths))
    assert effects.p_conversion == pytest.approx(1 / 3)
    assert effects.conversion == pytest.approx({"A": 0.5, "B": 1.0})
    rows = {a.key: a for a in markov_attribution(chain_from_paths(paths))}
    assert rows["A"].conversions == pytest.approx(2 / 3)
    assert rows["B"].conversions == pytest.approx(4 / 3)
    # Value: conversions leaving B are worth (10 + 30) / 2 = 20 each, so value follows conversions.
    assert rows["A"].value == pytest.approx(40.0 / 3)
    assert sum(a.value for a in rows.values()) == pytest.approx(40.0)


def random_paths(seed: int) -> list[Path]:
    rng = random.Random(seed)
    out = []
    for _ in range(rng.randint(1, 25)):
        steps = tuple(rng.choice("abcd") for _ in range(rng.randint(1, 7)))
        conv = rng.choice([0, 1, 3])
        out.append(Path(steps, conv, conv * rng.uniform(1, 50), rng.choice([0, 1, 4])))
    return out


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("seed", range(12))
def test_removal_effects_equal_removing_and_solving_again(seed: int, order: int) -> None:
    paths = random_paths(seed)
    chain = chain_from_paths(paths, order)
    effects = removal_effects(chain)
    p_conv, value = direct_removal(chain, None)
    assert effects.p_conversion == pytest.approx(p_conv)
    assert effects.expected_value == pytest.approx(value)
    for label in chain.labels():
        p_without, v_without = direct_removal(chain, label)
        expected = 1 - p_without / p_conv if p_conv > 0 else 0.0
        assert effects.conversion[label] == pytest.approx(expected, abs=1e-9), label
        expected_v = 1 - v_without / value if value > 0 else 0.0
        assert effects.value[label] == pytest.approx(expected_v, abs=1e-9), label


def test_attributed_totals_add_up_and_order_two_sees_pairs() -> None:
    paths = random_paths(99)
    n_conv = sum(p.n_conversions for p in paths)
    value = sum(p.conversion_value for p in paths)
    rows = attribute(paths)
    for model in ("markov_1", "markov_2", "first_touch", "last_touch", "linear"):
        mine = [a for a in rows if a.model == model]
        assert sum(a.conversions for a in mine) == pytest.approx(n_conv), model
        assert sum(a.value for a in mine) == pytest.approx(value), model
    # order 2 states are windows of two labels (shorter paths are one state)
    chain = chain_from_paths([Path(("a", "b", "c"), 1), Path(("d",), 0, 0, 1)], order=2)
    assert set(chain.counts) == {((), ("a", "b")), (("a", "b"), ("b", "c")),
                                 (("b", "c"), CONVERSION), ((), ("d",)), (("d",), NULL)}


def steps_as_counts(paths: list[Path]) -> tuple[dict, dict, dict, dict]:
    """First- and second-order counts as the journey processor keeps them, and the values."""
    pairs: dict = {}
    triples: dict = {}
    value1: dict = {}
    value2: dict = {}
    for p in paths:
        for outcome, n in ((CONVERSION, p.n_conversions), (NULL, p.n_null)):
            if not n:
                continue
            seq = [START, *p.steps, outcome]
            prev2 = ""
            for src, dst in itertools.pairwise(seq):
                pairs[(src, dst)] = pairs.get((src, dst), 0) + n
                triples[(prev2, src, dst)] = triples.get((prev2, src, dst), 0) + n
                prev2 = src
        if p.n_conversions:
            value1[p.steps[-1]] = value1.get(p.steps[-1], 0) + p.conversion_value
            last2 = (p.steps[-2] if len(p.steps) > 1 else "", p.steps[-1])
            value2[last2] = value2.get(last2, 0) + p.conversion_value
    return pairs, triples, value1, value2


@pytest.mark.parametrize("seed", range(6))
def test_counts_give_the_same_attribution_as_paths(seed: int) -> None:
    # No repeated labels in a row: the counts see a->a as a step, paths see one state.
    paths = [p for p in random_paths(seed)
             if all(a != b for a, b in itertools.pairwise(p.steps))]
    if not any(p.n_conversions for p in paths):
        paths.append(Path(("a", "b"), 1, 5.0))
    pairs, triples, value1, value2 = steps_as_counts(paths)
    for chain_counts, chain_paths in (
        (chain_from_pairs(pairs, value1), chain_from_paths(paths, 1)),
        (chain_from_triples(triples, value2), chain_from_paths(paths, 2)),
    ):
        by_counts = {a.key: a for a in markov_attribution(chain_counts)}
        by_paths = {a.key: a for a in markov_attribution(chain_paths)}
        assert set(by_counts) == set(by_paths)
        for key, a in by_paths.items():
            assert by_counts[key].removal_effect == pytest.approx(a.removal_effect)
            assert by_counts[key].conversions == pytest.approx(a.conversions)
            assert by_counts[key].value == pytest.approx(a.value)


def test_counts_from_a_window_may_trap_and_dangle() -> None:
    # a <-> b with no way out (cut out of a window) and c with nothing after it: both act as null.
    pairs = {(START, "a"): 2, ("a", "b"): 5, ("b", "a"): 5, (START, "c"): 1, (START, "d"): 1,
             ("d", CONVERSION): 1}
    effects = removal_effects(chain_from_pairs(pairs))
    assert effects.p_conversion == pytest.approx(0.25)
    assert effects.conversion == {"a": 0.0, "b": 0.0, "c": 0.0, "d": 1.0}


def test_heuristics_by_hand() -> None:
    paths = [Path(("a", "b", "a"), 3, 30.0, 1), Path(("b",), 0, 0.0, 5), Path(("c", "b"), 1, 4.0)]
    got = {(a.model, a.key): (a.conversions, a.value) for a in heuristic_attribution(paths)}
    assert got[("first_touch", "a")] == (3, 30.0) and got[("first_touch", "c")] == (1, 4.0)
    assert got[("last_touch", "a")] == (3, 30.0) and got[("last_touch", "b")] == (1, 4.0)
    assert got[("linear", "a")] == pytest.approx((2.0, 20.0))
    assert got[("linear", "b")] == pytest.approx((1.5, 12.0))
    assert got[("linear", "c")] == pytest.approx((0.5, 2.0))
    row = next(a for a in heuristic_attribution(paths) if a.model == "linear").as_row(7, "channel")
    assert row == {"as_of": 7, "model": "linear", "level": "channel", "key": "a",
                   "removal_effect": None, "conversions_attributed": pytest.approx(2.0),
                   "revenue_attributed": pytest.approx(20.0)}


def test_paths_from_events_by_touchpoint_and_channel() -> None:
    #  c1: landing(web) email_open(email) purchase($50) pricing(web)  ... 40 days later: null
    #  c2: landing(web) subscription_cancelled          -> null
    #  c3: landing(web) (yesterday)                       -> still open, left out
    events = [
        resolved("c1", "landing_page", T0_MS), resolved("c1", "email_open", T0_MS + MIN_MS,
                                                        channel="email"),
        resolved("c1", "purchase", T0_MS + 2 * MIN_MS, revenue=50.0),
        resolved("c1", "pricing_page", T0_MS + 3 * MIN_MS),
        resolved("c2", "landing_page", T0_MS), resolved("c2", "subscription_cancelled", T0_MS + 5),
        resolved("c3", "landing_page", T0_MS + 39 * DAY_MS),
    ]
    now = T0_MS + 40 * DAY_MS
    by_tp = paths_from_events(events, ["purchase"], now, 30 * 86_400,
                              churn=["subscription_cancelled"])
    assert sorted(by_tp, key=lambda p: p.steps) == [
        Path(("landing_page",), 0, 0.0, 1), Path(("landing_page", "email_open"), 1, 50.0, 0),
        Path(("pricing_page",), 0, 0.0, 1)]
    by_channel = paths_from_events(reversed(events), ["purchase"], now, 30 * 86_400,
                                   by="channel", churn=["subscription_cancelled"])
    assert sorted(by_channel, key=lambda p: p.steps) == [
        Path(("web",), 0, 0.0, 2), Path(("web", "email"), 1, 50.0, 0)]
