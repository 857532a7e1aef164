"""Online models on simulator data: throughput and quality, each next to a baseline of this run.

    python bench/bench_models.py [--customers 4000] [--seed 1] [--stationary-customers 4000]
                                 [--stationary-runs 1]

Prints: model updates per second (baseline: the feature summary alone, the part the journey
processor would do anyway; the ratio is the models' cost), segment ARI against the true segments,
prequential ROC AUC of conversion propensity next to scikit-learn logistic regression trained
offline on the first half (by snapshot time) of the same labelled examples and scored on the
second half, the drift alert delay after the simulator's injected drift (in events of the
affected segment), false alarms on stationary runs (seeds after --seed), and sentiment accuracy
on held-out texts.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import orjson
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, roc_auc_score

from online_models.features import CustomerFeatures, features
from online_models.sentiment import SentimentModel
from online_models.suite import ModelConfig, ModelSuite
from processors.events import ResolvedEvent, TouchpointEvent
from simulator.model import SimConfig, simulate


def events_of(sim) -> tuple[list[ResolvedEvent], dict[str, str], dict[str, str]]:
    """Each true event once, in event time, with its true customer; true segments; sentiments."""
    owner = sim.truth.customer_of_event()
    seen: set[str] = set()
    out = []
    for line in sim.lines:
        raw = orjson.loads(line)
        if raw["event_id"] in seen or raw["event_id"] not in owner:
            continue
        seen.add(raw["event_id"])
        ev = TouchpointEvent.model_validate(raw)
        out.append(ResolvedEvent(owner[ev.event_id], ev))
    out.sort(key=lambda e: (e.ts_ms, e.event.event_id))
    segment = {c.customer_id: c.segment for c in sim.truth.customers}
    sentiment = {
        e.event_id: e.sentiment for c in sim.truth.customers for e in c.events if e.sentiment
    }
    return out, segment, sentiment


def run_suite(events, sentiment_of, train_texts: set[str]):
    suite = ModelSuite(ModelConfig(seed=0))
    suite.keep_labelled = True
    states: dict[str, object] = {}
    t0 = time.process_time()
    for e in events:
        st = states.get(e.customer_id)
        if st is None:
            st = states[e.customer_id] = suite.new_customer()
        suite.update(e, st)
        if e.event.text and e.event.event_id in train_texts:
            suite.learn_sentiment(e.event.text, sentiment_of[e.event.event_id])
    return suite, states, time.process_time() - t0


def baseline_features(events) -> float:
    t0 = time.process_time()
    summaries: dict[str, CustomerFeatures] = {}
    for e in events:
        s = summaries.get(e.customer_id)
        if s is None:
            s = summaries[e.customer_id] = CustomerFeatures()
        s.update(e.event)
        features(s, e.ts_ms)
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=4000)
    ap.add_argument("--stationary-customers", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stationary-runs", type=int, default=1)
    args = ap.parse_args()

    sim = simulate(SimConfig(customers=args.customers, seed=args.seed, days=90))
    events, true_segment, sentiment_of = events_of(sim)
    text_ids = sorted(i for i in sentiment_of)
    train_texts = set(text_ids[: int(len(text_ids) * 0.8)])
    print(f"simulated {args.customers} customers, {len(events)} events, {len(text_ids)} texts")

    base_s = baseline_features(events)
    suite, states, suite_s = run_suite(events, sentiment_of, train_texts)
    n = len(events)
    # CPU time of this process: the machine is shared, wall time measures the neighbours too
    print(f"model updates/s (CPU time): {n / suite_s:,.0f} (target >= 20,000; feature summary "
          f"alone: {n / base_s:,.0f}/s; models cost {suite_s / base_s:.1f}x the summary)")

    # segments: final assignment of every customer vs the true segment
    cids = sorted(states)
    pred = [suite.segments.assign_sparse(*suite.vectorizer.journey(states[c].features))
            for c in cids]
    truth = [true_segment[c] for c in cids]
    rich = [i for i, c in enumerate(cids) if states[c].features.n_events >= 5]
    ari_rich = adjusted_rand_score([truth[i] for i in rich], [pred[i] for i in rich])
    print(f"segments: k={len(suite.segments.ids)} (true {len(set(truth))}), ARI on {len(rich)} "
          f"customers with >= 5 events = {ari_rich:.3f} (target >= 0.8); on all "
          f"{len(cids)}: {adjusted_rand_score(truth, pred):.3f}")
    for p in suite.profiles():
        members = Counter(t for t, q in zip(truth, pred, strict=True) if q == p.segment)
        print(f"  {p.segment}: size={p.size} conv={p.conversion_rate:.2f} "
              f"mostly {members.most_common(1)[0] if members else '-'}")

    # propensity: prequential AUC vs offline LR with a time split on the same examples
    lab = sorted(suite.labelled, key=lambda r: r.snapshot_ms)
    half = len(lab) // 2
    names = sorted(lab[0].x)
    xtr = [[r.x[k] for k in names] for r in lab[:half]]
    xte = [[r.x[k] for k in names] for r in lab[half:]]
    ytr = [r.y for r in lab[:half]]
    yte = [r.y for r in lab[half:]]
    offline = LogisticRegression(max_iter=2000).fit(xtr, ytr)
    auc_off = roc_auc_score(yte, offline.predict_proba(xte)[:, 1])
    gb = HistGradientBoostingClassifier(random_state=0).fit(xtr, ytr)
    auc_gb = roc_auc_score(yte, gb.predict_proba(xte)[:, 1])
    auc_pre = roc_auc_score(yte, [r.p for r in lab[half:]])
    print(f"conversion propensity: prequential ROC AUC {auc_pre:.3f} vs offline sklearn LR "
          f"{auc_off:.3f} (diff {auc_pre - auc_off:+.3f}, target within 0.02); "
          f"{len(lab)} labelled, {sum(yte) / len(yte):.3f} positive; offline gradient "
          f"boosting {auc_gb:.3f}")
    mean_p = sum(r.p for r in lab[half:]) / len(yte)
    rate = sum(yte) / len(yte)
    print(f"  calibration (2nd half): mean score {mean_p:.3f} vs observed {rate:.3f}")

    # drift: delay in events of the affected true segment; earlier alerts are false alarms
    drift = sim.truth.drift
    alerts = list(suite.alerts)
    print(f"alerts: {len(alerts)} -> " + ", ".join(f"{a.metric}/{a.segment}" for a in alerts))
    if drift is not None:
        seg_members = [q for t, q in zip(truth, pred, strict=True) if t == drift.segment]
        learned = Counter(seg_members).most_common(1)[0][0]
        before = [a for a in alerts if a.ts_ms < drift.at_ms]
        after = [a for a in alerts if a.ts_ms >= drift.at_ms and a.metric == "conversion_rate"
                 and a.segment == learned]
        if after:
            delay = sum(1 for e in events if drift.at_ms <= e.ts_ms <= after[0].ts_ms
                        and true_segment[e.customer_id] == drift.segment)
            print(f"drift ({drift.description}) in {drift.segment} (learned {learned}): alert "
                  f"after {delay} events of that segment (target <= 2000): {after[0].message}")
        else:
            print(f"drift in {drift.segment} (learned {learned}): NOT detected")
        print(f"  alerts before the drift (false alarms): {len(before)} in "
              f"{sum(1 for e in events if e.ts_ms < drift.at_ms)} events")

    # sentiment: held-out texts (the last 20 % by event id), model trained on the rest
    model = SentimentModel()
    texts = {e.event.event_id: e.event.text for e in events if e.event.text}
    for i in sorted(train_texts):
        if i in texts:
            model.learn(texts[i], sentiment_of[i])
    held = [i for i in text_ids if i not in train_texts and i in texts]
    acc = sum(model.predict(texts[i]).label == sentiment_of[i] for i in held) / max(len(held), 1)
    majority = Counter(sentiment_of[i] for i in held).most_common(1)[0][1] / max(len(held), 1)
    print(f"sentiment accuracy on {len(held)} held-out texts: {acc:.3f} "
          f"(majority-class baseline {majority:.3f})")

    # stationary runs (no injected drift), each with fresh models from day 0: every alert is
    # a false alarm; several seeds add up to a 1M-event-equivalent count
    n_alerts = n_events = 0
    messages: list[str] = []
    for run in range(args.stationary_runs if args.stationary_customers else 0):
        sim2 = simulate(SimConfig(customers=args.stationary_customers, seed=args.seed + 1 + run,
                                  days=90, drift_segment=None))
        ev2, _, sent2 = events_of(sim2)
        suite2, _, _ = run_suite(ev2, sent2, set(sent2))
        n_alerts += len(suite2.alerts)
        n_events += len(ev2)
        messages.extend(a.message for a in suite2.alerts)
        print(f"stationary run {run + 1} (seed {args.seed + 1 + run}): {len(suite2.alerts)} "
              f"alerts in {len(ev2)} events")
    if n_events:
        print(f"stationary: {n_alerts} alerts in {n_events} events "
              f"({n_alerts / n_events * 1e6:.1f} per 1M; target 0): " + ", ".join(messages[:5]))


if __name__ == "__main__":
    main()
