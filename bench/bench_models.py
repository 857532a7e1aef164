"""Online models on simulator data: throughput and quality, each next to a baseline of this run.

    python bench/bench_models.py [--customers 4000] [--seed 1] [--stationary-customers 4000]
                                 [--stationary-runs 1] [--json] [--profile 25]

The measurements are `streams.evaluate` (the same as `journeymap evaluate`); this adds the
throughput baseline: model updates per second (CPU time) next to the feature summary alone, the
part the journey processor would do anyway, so the ratio is the models' cost. Then segment ARI
against the true segments, prequential ROC AUC of conversion propensity next to scikit-learn
models trained offline on the first half (by snapshot time) of the same labelled examples,
the drift alert delay after the injected drift (in events of the affected segment), false alarms
on stationary runs (seeds after --seed) and sentiment accuracy on held-out texts.
`--profile N` instead profiles one run of the models (cProfile) and prints the N costliest
functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

import orjson

from streams.evaluate import evaluate, run_suite, simulated, text_report, train_texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=4000)
    ap.add_argument("--stationary-customers", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stationary-runs", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", type=int, default=0, metavar="N")
    args = ap.parse_args()

    data = simulated(args.customers, args.seed)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run = run_suite(data, train_texts(data))
        profiler.disable()
        print(f"{len(data.events)} events, {len(data.events) / run.cpu_s:,.0f} updates/s "
              "(CPU time, under the profiler)")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
        return
    report = evaluate(data, stationary_customers=args.stationary_customers,
                      stationary_runs=args.stationary_runs, seed=args.seed, baseline=True)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print("\n".join(text_report(report)))


if __name__ == "__main__":
    main()
