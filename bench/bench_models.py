"""Online models on simulator data: throughput and quality, each next to a baseline of this run.

    python bench/bench_models.py [--customers 4000] [--seed 1] [--stationary-customers 4000]
                                 [--stationary-runs 1] [--json] [--profile 25] [--sentiment]

The measurements are `streams.evaluate` (the same as `journeymap evaluate`); this adds the
throughput baseline: model updates per second (CPU time) next to the feature summary alone, the
part the journey processor would do anyway, so the ratio is the models' cost. Then segment ARI
against the true segments, prequential ROC AUC of conversion propensity next to scikit-learn
models trained offline on the first half (by snapshot time) of the same labelled examples,
the drift alert delay after the injected drift (in events of the affected segment), false alarms
on stationary runs (seeds after --seed) and sentiment accuracy on held-out texts.
`--profile N` instead profiles one run of the models (cProfile) and prints the N costliest
functions by own time. `--pipeline` instead runs the simulator's file through the processor
chain with the models, as the replay does (batches of 20k lines, in-memory identities), and
prints model updates/s inside the chain and the share of the pipeline's CPU time the models take.
`--sentiment` instead times the sentiment model per text on the simulation's texts, in the
suite's test-then-train order (predict every text, learn the training ones): the share of texts
among events, microseconds per predict and per learn, and, as the same-run baselines, River's own
`predict_proba_one` on the same pipeline, River's `Pipeline.learn_one` on a twin model (whose
counts must end equal) and River's `BagOfWords` alone.
`--fingerprint` instead prints a hash of every score of one run and the models' updates/s: a
change meant to be exact must leave the hash as it was (compare with a checkout of the base).
Every mode runs with the replay's collector settings (`streams.commands.replay.tune_gc`: start-up
objects frozen, young collections every 50k allocations) unless `--default-gc`: with CPython's
defaults the collector walks the models' growing state ever more often (on 20k simulated
customers the models ran 1.06x faster tuned standalone, 1.21x inside the chain), which is not
what `journeymap replay` pays.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import orjson

from processors.chain import JourneyChain
from processors.validation import Source
from simulator.model import SimConfig, simulate
from streams.commands.replay import tune_gc
from streams.evaluate import evaluate, run_suite, simulated, text_report, train_texts


def pipeline(customers: int, seed: int, batch: int = 20_000) -> None:
    """CPU time of the chain and of the models on the released events, as streams.replay runs
    them (same ModelConfig from the settings, same scoring loop)."""
    from online_models.suite import ModelSuite
    from streams.outputs import score_released
    from streams.replay import model_config
    from streams.settings import load_settings

    lines = simulate(SimConfig(customers=customers, seed=seed)).lines
    config = load_settings().processing()
    models = ModelSuite(model_config(config))
    states: dict = {}
    last: dict = {}
    chain = JourneyChain(config, segment_of=lambda c: st.segment if (st := states.get(c))
                         else "all")
    chain_s = models_s = 0.0
    n_scored = 0
    for i in range(0, len(lines) + 1, batch):
        t0 = time.process_time()
        if i < len(lines):
            out = chain.process([(line, Source("bench", 0, i + j))
                                 for j, line in enumerate(lines[i : i + batch])])
        else:
            out = chain.finish()
        t1 = time.process_time()
        for merge in out.merges:  # as the replay does
            lost = states.pop(merge.loser, None)
            if lost is not None and merge.winner not in states:
                states[merge.winner] = lost
        n_scored += len(score_released(models, states, last, out.released))
        t2 = time.process_time()
        chain_s += t1 - t0
        models_s += t2 - t1
    total = chain_s + models_s
    print(f"{len(lines):,} lines, {n_scored:,} events scored (CPU time)")
    print(f"processor chain alone:     {len(lines) / chain_s:10,.0f} events/s")
    print(f"models (score_released):   {n_scored / models_s:10,.0f} updates/s")
    print(f"chain + models:            {len(lines) / total:10,.0f} events/s")
    print(f"models' share of pipeline time: {models_s / total:.1%}")


def fingerprint(customers: int, seed: int) -> None:
    """Every Scores of a run (all fields, alerts by id) hashed, and the models' CPU rate: two
    versions of the models give the same scores iff they print the same fingerprint."""
    import hashlib

    from online_models.suite import ModelConfig, ModelSuite

    data = simulated(customers, seed)
    train = train_texts(data)
    suite = ModelSuite(ModelConfig(seed=0))
    states: dict = {}
    digest = hashlib.sha256()
    cpu = 0.0
    for e in data.events:
        st = states.get(e.customer_id)
        if st is None:
            st = states[e.customer_id] = suite.new_customer()
        t0 = time.process_time()
        s = suite.update(e, st)
        cpu += time.process_time() - t0
        if e.event.text and e.event.event_id in train:
            suite.learn_sentiment(e.event.text, data.sentiment_of[e.event.event_id])
        digest.update(repr((s.customer_id, s.segment, s.p_convert, s.p_churn, s.top_features,
                            s.next_best_action, s.expected_lift, s.lookalike, s.sentiment,
                            s.sentiment_score, [a.alert_id for a in s.alerts])).encode())
    print(f"{len(data.events):,} events, {len(data.events) / cpu:,.0f} updates/s (CPU time of "
          f"ModelSuite.update), scores fingerprint {digest.hexdigest()[:16]}")


def sentiment(customers: int, seed: int) -> None:
    """CPU time per text of SentimentModel.predict / .learn, River's predict_proba_one,
    River's pipeline.learn_one (on a twin model, whose counts must end equal) and BagOfWords
    alone, on the simulation's texts in event order."""
    from online_models.sentiment import SentimentModel

    data = simulated(customers, seed)
    train = train_texts(data)
    texts = [(e.event.event_id, e.event.text) for e in data.events if e.event.text]
    model, twin = SentimentModel(), SentimentModel()
    bow = model.pipeline["bow"]
    predict_s = learn_s = river_s = bow_s = river_learn_s = 0.0
    n_learned = 0
    clock = time.process_time
    for event_id, text in texts:
        t0 = clock()
        model.predict(text)
        t1 = clock()
        model.pipeline.predict_proba_one(text)
        t2 = clock()
        bow.transform_one(text)
        t3 = clock()
        predict_s += t1 - t0
        river_s += t2 - t1
        bow_s += t3 - t2
        if event_id in train:
            t0 = clock()
            model.learn(text, data.sentiment_of[event_id])
            t1 = clock()
            twin.pipeline.learn_one(text, data.sentiment_of[event_id])  # type: ignore[arg-type]
            learn_s += t1 - t0
            river_learn_s += clock() - t1
            n_learned += 1
    n = len(texts)
    print(f"{len(data.events):,} events, {n:,} texts ({n / len(data.events):.1%} of events), "
          f"{n_learned:,} learned, vocabulary {len(model.vocab):,}")
    print(f"SentimentModel.predict:            {predict_s / n * 1e6:7.1f} us per text")
    learn_us = learn_s / max(n_learned, 1) * 1e6
    print(f"SentimentModel.learn:              {learn_us:7.1f} us per text")
    river_learn_us = river_learn_s / max(n_learned, 1) * 1e6
    same = (model.nb.class_counts == twin.nb.class_counts
            and model.nb.class_totals == twin.nb.class_totals
            and model.nb.feature_counts == twin.nb.feature_counts)
    print(f"River pipeline.learn_one:          {river_learn_us:7.1f} us per text "
          f"(learn is {learn_us / max(river_learn_us, 1e-9):.2f} of it; same counts: "
          f"{'yes' if same else 'NO'})")
    print(f"River pipeline.predict_proba_one:  {river_s / n * 1e6:7.1f} us per text "
          f"(predict is {predict_s / river_s:.2f} of it)")
    print(f"River BagOfWords alone:            {bow_s / n * 1e6:7.1f} us per text")
    per_event = (predict_s + learn_s) / len(data.events) * 1e6
    print(f"sentiment per event (predict + learn over all events): {per_event:.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=4000)
    ap.add_argument("--stationary-customers", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stationary-runs", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", type=int, default=0, metavar="N")
    ap.add_argument("--pipeline", action="store_true")
    ap.add_argument("--default-gc", action="store_true")
    ap.add_argument("--fingerprint", action="store_true")
    ap.add_argument("--sentiment", action="store_true")
    args = ap.parse_args()
    if not args.default_gc:
        tune_gc()

    if args.pipeline:
        pipeline(args.customers, args.seed)
        return
    if args.fingerprint:
        fingerprint(args.customers, args.seed)
        return
    if args.sentiment:
        sentiment(args.customers, args.seed)
        return

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
