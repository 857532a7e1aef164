"""Outside oracle: our exact attribution against the `channelattribution` package, same paths.

ChannelAttribution estimates removal effects by simulating journeys on the chain. Two settings
make its estimate comparable to an exact value: `max_step` far above any path length (by default
a simulated journey longer than the longest observed one counts as not converting, a truncation
the exact chain does not have) and enough simulations that the Monte Carlo error is well under
the 1 % the comparison allows. Heuristic models are deterministic there and compared exactly.
"""

from __future__ import annotations

import contextlib
import io
import random

import pytest

from processors.attribution import (
    Path,
    chain_from_paths,
    heuristic_attribution,
    markov_attribution,
    removal_effects,
)

with contextlib.redirect_stdout(io.StringIO()):  # it prints an advertisement on import
    import ChannelAttribution as ca
import pandas as pd

HAND = [Path(("A", "B", "C"), 3, 30.0, 1), Path(("A", "A", "B"), 1, 5.0, 2),
        Path(("C",), 0, 0.0, 4), Path(("B", "C", "A"), 2, 10.0, 1), Path(("A", "C"), 1, 7.0, 3)]


def random_paths(seed: int, n_paths: int = 40, channels: str = "abcde") -> list[Path]:
    rng = random.Random(seed)
    out: dict[tuple[str, ...], Path] = {}
    while len(out) < n_paths:
        steps = tuple(rng.choice(channels) for _ in range(rng.randint(1, 6)))
        n_conv = rng.choice([0, 0, 1, 2, 5])
        out[steps] = Path(steps, n_conv, round(n_conv * rng.uniform(10, 200), 2),
                          rng.choice([0, 1, 3, 8]) if n_conv else rng.randint(1, 8))
    return list(out.values())


def frame(paths: list[Path]) -> pd.DataFrame:
    return pd.DataFrame({"path": [" > ".join(p.steps) for p in paths],
                         "conv": [int(p.n_conversions) for p in paths],
                         "value": [p.conversion_value for p in paths],
                         "null": [int(p.n_null) for p in paths]})


def oracle_markov(paths: list[Path], order: int) -> tuple[dict, dict]:
    with contextlib.redirect_stdout(io.StringIO()):
        res = ca.markov_model(frame(paths), "path", "conv", var_value="value", var_null="null",
                              order=order, out_more=True, verbose=False, flg_pro=False,
                              nsim_start=4e6, max_step=500, seed=11)
    totals = {r.channel_name: (r.total_conversions, r.total_conversion_value)
              for r in res["result"].itertuples()}
    effects = {r.channel_name: (r.removal_effects_conversion, r.removal_effects_conversion_value)
               for r in res["removal_effects"].itertuples()}
    return totals, effects


CASES = [("hand", HAND), ("random-1", random_paths(1)), ("random-2", random_paths(2, 30, "abcd"))]


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize(("name", "paths"), CASES, ids=[c[0] for c in CASES])
def test_markov_matches_channelattribution_within_one_percent(name: str, paths: list[Path],
                                                              order: int) -> None:
    totals, effects = oracle_markov(paths, order)
    chain = chain_from_paths(paths, order)
    ours = removal_effects(chain)
    rows = {a.key: a for a in markov_attribution(chain, f"markov_{order}")}
    assert set(rows) == set(totals)
    for label, (conv, value) in totals.items():
        assert rows[label].conversions == pytest.approx(conv, rel=0.01, abs=1e-3), label
        assert rows[label].value == pytest.approx(value, rel=0.01, abs=1e-2), label
        re_conv, re_value = effects[label]
        assert ours.conversion[label] == pytest.approx(re_conv, rel=0.01, abs=1e-3), label
        assert ours.value[label] == pytest.approx(re_value, rel=0.01, abs=1e-3), label


@pytest.mark.parametrize(("name", "paths"), CASES, ids=[c[0] for c in CASES])
def test_heuristics_match_channelattribution(name: str, paths: list[Path]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        res = ca.heuristic_models(frame(paths), "path", "conv", var_value="value", flg_pro=False)
    ours = {(a.model, a.key): a for a in heuristic_attribution(paths)}
    for r in res.itertuples():
        for model in ("first_touch", "last_touch", "linear_touch"):
            mine = ours[(model.replace("_touch", "") if model == "linear_touch" else model,
                         r.channel_name)]
            assert mine.conversions == pytest.approx(getattr(r, f"{model}_conversions"))
            assert mine.value == pytest.approx(getattr(r, f"{model}_value"))
