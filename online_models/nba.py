"""Next-best action: the touchpoint that most raises a customer's chance to convert. Pure.

From a first-order Markov transition matrix (``{src: {dst: p}}`` with absorbing ``conversion``
and ``null`` states) the probability of eventually converting from every state is the absorption
probability, solved exactly as a linear system. The Markov lift of moving the customer to `a` is
P(convert | next = a) - P(convert | here). With a customer's own propensity, the lift is applied
on the odds scale: the customer keeps their personal odds, scaled by the odds ratio the Markov
chain gives for the move.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

Matrix = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True, slots=True)
class NextBestAction:
    """The recommended touchpoint, its expected lift and the alternatives considered."""

    action: str | None
    expected_lift: float
    p_convert_now: float
    p_convert_after: dict[str, float]


def absorption_probabilities(
    matrix: Matrix, *, conversion: str = "conversion", null: str = "null"
) -> dict[str, float]:
    """P(reach `conversion` eventually) from every state (1 for it, 0 for `null`/dead ends)."""
    states = sorted(set(matrix) | {d for row in matrix.values() for d in row})
    transient = [s for s in states if s not in (conversion, null) and matrix.get(s)]
    index = {s: i for i, s in enumerate(transient)}
    n = len(transient)
    q = np.zeros((n, n))
    r = np.zeros(n)
    for s in transient:
        row = matrix[s]
        total = sum(row.values())
        if total <= 0:
            continue
        for dst, p in row.items():
            if dst == conversion:
                r[index[s]] += p / total
            elif dst in index:
                q[index[s], index[dst]] += p / total
    # (I - Q) b = R; lstsq keeps a chain with a closed recurrent class (no absorption) finite.
    b = np.linalg.lstsq(np.eye(n) - q, r, rcond=None)[0] if n else np.zeros(0)
    out = {s: 0.0 for s in states}
    out[conversion] = 1.0
    for s, i in index.items():
        out[s] = float(min(max(b[i], 0.0), 1.0))
    return out


def odds(p: float) -> float:
    """p / (1 - p), clipped away from 0 and 1."""
    p = min(max(p, 1e-6), 1 - 1e-6)
    return p / (1 - p)


def next_best_action(
    absorption: Mapping[str, float],
    current: str,
    candidates: Iterable[str],
    *,
    p_customer: float | None = None,
) -> NextBestAction:
    """The candidate touchpoint with the largest expected lift in P(convert).

    `absorption` comes from :func:`absorption_probabilities`. Without `p_customer` the lift is
    the Markov one; with it, the customer's odds are scaled by the Markov odds ratio of the move.
    """
    base = absorption.get(current, 0.0)
    now = base if p_customer is None else p_customer
    after: dict[str, float] = {}
    for a in candidates:
        pa = absorption.get(a)
        if pa is None:
            continue
        if p_customer is None:
            after[a] = pa
        else:
            o = odds(p_customer) * odds(pa) / odds(base)
            after[a] = o / (1 + o) if math.isfinite(o) else 1.0
    if not after:
        return NextBestAction(None, 0.0, now, {})
    best = max(after, key=lambda a: (after[a], a))
    return NextBestAction(best, after[best] - now, now, after)
