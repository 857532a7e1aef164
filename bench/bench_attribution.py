"""Attribution speed: exact removal effects (one inverse) vs the definition (one solve per label).

Both are exact; the baseline removes each label and solves the chain again, in the same run.

    python bench/bench_attribution.py [n_labels] [n_paths]
"""

from __future__ import annotations

import random
import sys
import time

import numpy as np

from processors.attribution import CONVERSION, Path, chain_from_paths, removal_effects


def make_paths(n_labels: int, n_paths: int, seed: int = 5) -> list[Path]:
    rng = random.Random(seed)
    labels = [f"tp{i}" for i in range(n_labels)]
    out = []
    for _ in range(n_paths):
        steps = tuple(rng.choice(labels) for _ in range(rng.randint(1, 8)))
        conv = rng.random() < 0.3
        out.append(Path(steps, float(conv), 40.0 * conv, float(not conv)))
    return out


def per_label_solves(chain) -> dict[str, float]:
    states = sorted({s for k in chain.counts for s in k if isinstance(s, tuple)}, key=repr)
    idx = {s: i for i, s in enumerate(states)}
    totals: dict = {}
    for (src, _), c in chain.counts.items():
        totals[src] = totals.get(src, 0.0) + c

    def p_conv(label: str | None) -> float:
        a, b = np.eye(len(states)), np.zeros(len(states))
        for (src, dst), c in chain.counts.items():
            if label is not None and label in src:
                continue
            if dst == CONVERSION:
                b[idx[src]] += c / totals[src]
            elif isinstance(dst, tuple) and not (label is not None and label in dst):
                a[idx[src], idx[dst]] -= c / totals[src]
        return float(np.linalg.solve(a, b)[idx[()]])

    base = p_conv(None)
    return {lab: 1 - p_conv(lab) / base for lab in chain.labels()}


def main() -> None:
    n_labels = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    n_paths = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    paths = make_paths(n_labels, n_paths)
    for order in (1, 2):
        t = time.perf_counter()
        chain = chain_from_paths(paths, order)
        t_chain = time.perf_counter() - t
        n_states = len({s for k in chain.counts for s in k if isinstance(s, tuple)})
        t = time.perf_counter()
        ours = removal_effects(chain)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        ref = per_label_solves(chain)
        t_ref = time.perf_counter() - t
        err = max(abs(ours.conversion[k] - v) for k, v in ref.items())
        print(f"order {order}: {n_labels} labels, {n_states} states, {n_paths:,} paths | "
              f"chain {t_chain * 1000:.0f} ms | removal effects {t_ours * 1000:.0f} ms | "
              f"per-label solves {t_ref * 1000:.0f} ms (x{t_ref / t_ours:.1f}) | "
              f"max diff {err:.1e}")


if __name__ == "__main__":
    main()
