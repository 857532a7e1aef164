"""Online models on simulator data against the ground truth: the measurements of issue 7.

One place for `journeymap evaluate` and `bench/bench_models.py`:

* segment recovery: adjusted Rand index of each customer's final segment against its true one
  (on customers with >= 5 events, the ones segments learn from, and on all);
* conversion propensity: prequential ROC AUC (each example scored before its label was known)
  next to scikit-learn models trained offline on the same examples' features with a time split
  (first half by snapshot time to train, second half to score);
* drift: the alert delay after the simulator's injected drift, in events of the affected true
  segment, and alerts before it (false alarms);
* false alarms on stationary runs (no injected drift, fresh models): every alert is one;
* sentiment accuracy on held-out labelled texts (the last 20 % by event id), and of the model
  the replay and the workers run (trained on the sentiment corpus alone) on every text;
* River's own models as baselines on the same examples (`streams/river_baselines.py`):
  online logistic regressions next to our propensity, KMeans / DBSTREAM next to our segments.

Events are fed to the models once each, in event time, under their true customer: this measures
the models, not identity resolution or delivery faults (the replay measures those).
scikit-learn is a dev extra; without it the offline comparison raises `MissingDependency`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from online_models.drift import Alert
from online_models.features import CustomerFeatures, features
from online_models.sentiment import SentimentModel
from online_models.suite import ModelConfig, ModelSuite
from processors.errors import ConfigError, JourneymapError
from processors.events import ResolvedEvent, TouchpointEvent
from simulator.model import SimConfig, simulate
from simulator.truth import DriftTruth, Truth, load_truth
from streams import segment_ceiling as ceil
from streams.corpus import SHIPPED_CORPUS, corpus_path, read_corpus
from streams.files import check_files, read_chunks

# phase, done, total: called every few thousand events and at each phase's end
ProgressFn = Callable[[str, int, int], None]

HELD_OUT_SHARE = 0.2
RICH_EVENTS = 5  # segments learn from customers with at least this many events
PROGRESS_EVERY = 5_000


class MissingDependency(JourneymapError):
    """An optional package the evaluation needs is not installed."""


@dataclass
class EvalData:
    """Events in event time under their true customer, with what the truth says about them."""

    events: list[ResolvedEvent]
    true_segment: dict[str, str]
    sentiment_of: dict[str, str]  # event_id -> true sentiment label, for texts
    drift: DriftTruth | None
    n_invalid: int = 0  # lines that are not valid events (a user's file), skipped
    truth: Truth | None = None  # the whole truth: the Bayes ceiling needs its parameters


@dataclass
class SuiteRun:
    suite: ModelSuite
    states: dict[str, Any]
    cpu_s: float


def _noop(phase: str, done: int, total: int) -> None:
    pass


def events_of(lines: Iterable[bytes], truth: Truth) -> EvalData:
    """Each true event once (duplicates and unknown events dropped), sorted by event time."""
    owner = truth.customer_of_event()
    seen: set[str] = set()
    out = []
    n_invalid = 0
    for line in lines:
        try:
            raw = orjson.loads(line)
            event_id = raw["event_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            n_invalid += 1
            continue
        if event_id in seen or event_id not in owner:
            continue
        try:
            ev = TouchpointEvent.model_validate(raw)
        except ValidationError:
            n_invalid += 1
            continue
        seen.add(event_id)
        out.append(ResolvedEvent(owner[event_id], ev))
    out.sort(key=lambda e: (e.ts_ms, e.event.event_id))
    segment = {c.customer_id: c.segment for c in truth.customers}
    sentiment = {e.event_id: e.sentiment for c in truth.customers for e in c.events if e.sentiment}
    return EvalData(out, segment, sentiment, truth.drift, n_invalid, truth)


def simulated(customers: int, seed: int, *, drift_segment: str | None = "self_serve_dev",
              days: float = 90) -> EvalData:
    sim = simulate(SimConfig(customers=customers, seed=seed, days=days,
                             drift_segment=drift_segment))
    return events_of(sim.lines, sim.truth)


def from_file(path: str | Path, truth_path: str | Path | None = None) -> EvalData:
    """A simulator file and its truth (default: `<name>.truth.jsonl` beside it)."""
    (events_path,) = check_files([path])
    try:
        truth = load_truth(truth_path if truth_path is not None else events_path)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no ground truth for {str(events_path)!r} ({exc.filename} not found): evaluate "
            "needs the truth file `journeymap simulate` writes beside the events; pass --truth"
        ) from None
    except (ValueError, KeyError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the ground truth of {str(events_path)!r}: {exc}") from None
    lines = (line for chunk in read_chunks([events_path]) for line in chunk.lines)
    return events_of(lines, truth)


def train_texts(data: EvalData) -> set[str]:
    """The texts the sentiment model learns from: the first 80 % by event id."""
    ids = sorted(data.sentiment_of)
    return set(ids[: int(len(ids) * (1 - HELD_OUT_SHARE))])


def run_suite(data: EvalData, train: set[str], *, config: ModelConfig | None = None,
              progress: ProgressFn = _noop, phase: str = "models") -> SuiteRun:
    """Every event through a fresh ModelSuite, learning the training texts' sentiment."""
    suite = ModelSuite(config or ModelConfig(seed=0))
    suite.keep_labelled = True
    states: dict[str, Any] = {}
    n = len(data.events)
    sentiment_of = data.sentiment_of
    cpu = 0.0
    t0 = time.process_time()
    for i, e in enumerate(data.events, 1):
        st = states.get(e.customer_id)
        if st is None:
            st = states[e.customer_id] = suite.new_customer()
        suite.update(e, st)
        if e.event.text and e.event.event_id in train:
            suite.learn_sentiment(e.event.text, sentiment_of[e.event.event_id])
        if i % PROGRESS_EVERY == 0:
            cpu += time.process_time() - t0
            progress(phase, i, n)
            t0 = time.process_time()
    cpu += time.process_time() - t0
    progress(phase, n, n)
    return SuiteRun(suite, states, cpu)


def summary_cpu_s(data: EvalData) -> float:
    """CPU time of the per-customer feature summary alone (what the models cannot avoid)."""
    t0 = time.process_time()
    summaries: dict[str, CustomerFeatures] = {}
    for e in data.events:
        s = summaries.get(e.customer_id)
        if s is None:
            s = summaries[e.customer_id] = CustomerFeatures()
        s.update(e.event)
        features(s, e.ts_ms)
    return time.process_time() - t0


def segment_recovery(run: SuiteRun, data: EvalData) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    suite, states = run.suite, run.states
    cids = sorted(states)
    pred = [suite.segments.assign_sparse(*suite.vectorizer.journey(states[c].features))
            for c in cids]
    truth = [data.true_segment[c] for c in cids]
    rich = [i for i, c in enumerate(cids) if states[c].features.n_events >= RICH_EVENTS]
    profiles = []
    for p in suite.profiles():
        members = Counter(t for t, q in zip(truth, pred, strict=True) if q == p.segment)
        top = members.most_common(1)
        profiles.append({
            "segment": p.segment, "size": p.size, "conversion_rate": p.conversion_rate,
            "mostly": top[0][0] if top else None,
            "mostly_share": top[0][1] / sum(members.values()) if top else None,
        })
    by_cid = dict(zip(cids, pred, strict=True))
    return {
        "k": len(suite.segments.ids),
        "k_true": len(set(truth)),
        "n_customers": len(cids),
        "n_rich": len(rich),
        "ari_rich": float(adjusted_rand_score([truth[i] for i in rich], [pred[i] for i in rich]))
        if rich else None,
        "ari_all": float(adjusted_rand_score(truth, pred)) if cids else None,
        "target_ari": 0.8,
        "ceiling": bayes_ceiling(data, by_cid,
                                 {c: states[c].features.n_events for c in cids}),
        "profiles": profiles,
        "_pred": by_cid,
    }


def resolved_journeys(data: EvalData) -> dict[str, list[ceil.Step]]:
    """Each customer's events as the models saw them (texts with their labelled sentiment)."""
    out: dict[str, list[ceil.Step]] = {}
    sentiment_of = data.sentiment_of
    for e in data.events:
        ev = e.event
        out.setdefault(e.customer_id, []).append(
            ceil.Step(ev.touchpoint, ev.ts_ms, ev.revenue, sentiment_of.get(ev.event_id)))
    return out


def bayes_ceiling(data: EvalData, pred: dict[str, str], n_events: dict[str, int]
                  ) -> dict[str, Any] | None:
    """The Bayes-optimal assignment's ARI (true parameters, maximum posterior) next to the
    model's, on all customers and by number of events (`streams/segment_ceiling.py`).

    On the journeys as resolved (what the models saw) and on the true journeys; None without a
    truth whose segments the simulator's catalog knows."""
    truth = data.truth
    if truth is None:
        return None
    try:
        params = ceil.params_of(truth)
    except ValueError as exc:
        return {"note": f"no ceiling: {exc}"}
    resolved = resolved_journeys(data)
    cids = [c for c in pred if c in resolved]
    true_journeys = ceil.truth_journeys(truth)
    bayes = ceil.bayes_assign({c: resolved[c] for c in cids}, params, end_ms=truth.end_ms)
    same = all(resolved[c] == true_journeys.get(c) for c in cids)
    bayes_true = bayes if same else ceil.bayes_assign(
        {c: true_journeys[c] for c in cids if c in true_journeys}, params, end_ms=truth.end_ms)
    seg = data.true_segment
    ceiling = ceil.ari_by_bucket(seg, bayes, n_events, cids)
    model = ceil.ari_by_bucket(seg, pred, n_events, cids)
    n_true = {c: len(true_journeys[c]) for c in bayes_true}
    on_true = ceil.ari_by_bucket(seg, bayes_true, n_true, bayes_true)
    share = {b: (model[b]["ari"] / ceiling[b]["ari"]
                 if model[b]["ari"] is not None and ceiling[b]["ari"] else None)
             for b in ceiling}
    return {
        "buckets": [label for label, _, _ in ceil.BUCKETS],
        "bayes": {b: v["ari"] for b, v in ceiling.items()},
        "model": {b: v["ari"] for b, v in model.items()},
        "model_of_ceiling": share,
        "n": {b: v["n"] for b, v in ceiling.items()},
        "bayes_true_journeys": {b: v["ari"] for b, v in on_true.items()},
        "true_journeys_same": same,
        "true_shares": ceil.shares_by_bucket({c: seg[c] for c in cids}, n_events),
    }


def propensity_auc(run: SuiteRun) -> dict[str, Any]:
    """Prequential AUC of the second half (by snapshot time) vs offline models on the first."""
    need_sklearn()
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    lab = sorted(run.suite.labelled, key=lambda r: r.snapshot_ms)
    half = len(lab) // 2
    yte = [r.y for r in lab[half:]]
    ytr = [r.y for r in lab[:half]]
    out: dict[str, Any] = {"n_labelled": len(lab), "target_diff": 0.02}
    if len(set(ytr)) < 2 or len(set(yte)) < 2:
        out.update(prequential_auc=None, offline_lr_auc=None, offline_gb_auc=None, diff=None,
                   note="too few labelled examples of both classes for an AUC")
        return out
    names = sorted(lab[0].x)
    xtr = [[r.x[k] for k in names] for r in lab[:half]]
    xte = [[r.x[k] for k in names] for r in lab[half:]]
    lr = LogisticRegression(max_iter=2000).fit(xtr, ytr)
    auc_lr = float(roc_auc_score(yte, lr.predict_proba(xte)[:, 1]))
    gb = HistGradientBoostingClassifier(random_state=0).fit(xtr, ytr)
    auc_gb = float(roc_auc_score(yte, gb.predict_proba(xte)[:, 1]))
    auc_pre = float(roc_auc_score(yte, [r.p for r in lab[half:]]))
    out.update(
        prequential_auc=auc_pre, offline_lr_auc=auc_lr, offline_gb_auc=auc_gb,
        diff=auc_pre - auc_lr, positive_rate=sum(yte) / len(yte),
        mean_score=sum(r.p for r in lab[half:]) / len(yte),
    )
    return out


def drift_delay(run: SuiteRun, data: EvalData, pred: dict[str, str]) -> dict[str, Any]:
    """Events of the drifted true segment between the drift and its segment's first alert."""
    alerts = list(run.suite.alerts)
    drift = data.drift
    out: dict[str, Any] = {
        "injected": drift is not None, "target_delay": 2000,
        "alerts": [f"{a.metric}/{a.segment}" for a in alerts],
    }
    if drift is None:
        out["false_alarms"] = len(alerts)
        out["n_events_before"] = len(data.events)
        return out
    members = Counter(q for c, q in pred.items() if data.true_segment[c] == drift.segment)
    learned = members.most_common(1)[0][0] if members else None
    before = [a for a in alerts if a.ts_ms < drift.at_ms]
    after = [a for a in alerts if a.ts_ms >= drift.at_ms and a.metric == "conversion_rate"
             and a.segment == learned]
    delay = None
    if after:
        delay = sum(1 for e in data.events if drift.at_ms <= e.ts_ms <= after[0].ts_ms
                    and data.true_segment[e.customer_id] == drift.segment)
    out.update(
        segment=drift.segment, learned_segment=learned, description=drift.description,
        detected=bool(after), delay_events=delay, message=after[0].message if after else None,
        false_alarms=len(before),
        n_events_before=sum(1 for e in data.events if e.ts_ms < drift.at_ms),
        propensity_error=_error_alerts(alerts, data),
    )
    return out


def error_watched(run: SuiteRun) -> dict[str, Any]:
    """How much of the conversion model's prequential error the drift detector saw: labels
    scored by a model fitted on >= `propensity_error_min_fit` labels, per model version."""
    config = run.suite.config
    versions = Counter(r.fit_at for r in run.suite.labelled)
    least = max(config.propensity_error_min_fit, 1)
    return {
        "on": config.watch_propensity_error, "min_fit": config.propensity_error_min_fit,
        "n_labelled": len(run.suite.labelled),
        "n_watched": sum(n for v, n in versions.items() if v >= least)
        if config.watch_propensity_error else 0,
        "versions": {str(v): n for v, n in sorted(versions.items())},
    }


def _error_alerts(alerts: list[Alert], data: EvalData) -> list[dict[str, Any]]:
    """The propensity-error alerts after the injected drift: when, and how many events (all,
    and the drifted true segment's) came between the drift and each."""
    drift = data.drift
    assert drift is not None
    out = []
    for a in alerts:
        if a.ts_ms < drift.at_ms or not a.metric.startswith("propensity_error:"):
            continue
        between = [e for e in data.events if drift.at_ms <= e.ts_ms <= a.ts_ms]
        out.append({
            "metric": a.metric, "message": a.message, "days_after": (a.ts_ms - drift.at_ms) / 864e5,
            "events_after": len(between),
            "segment_events_after": sum(data.true_segment[e.customer_id] == drift.segment
                                        for e in between),
        })
    return out


def sentiment_accuracy(data: EvalData, train: set[str]) -> dict[str, Any]:
    """A fresh sentiment model trained on the training texts, scored on the held-out ones."""
    model = SentimentModel()
    texts = {e.event.event_id: e.event.text for e in data.events if e.event.text}
    for i in sorted(train):
        if i in texts:
            model.learn(texts[i], data.sentiment_of[i])
    held = [i for i in sorted(data.sentiment_of) if i not in train and i in texts]
    if not held:
        return {"n_held_out": 0, "accuracy": None, "majority_baseline": None}
    acc = sum(model.predict(texts[i]).label == data.sentiment_of[i] for i in held) / len(held)
    majority = Counter(data.sentiment_of[i] for i in held).most_common(1)[0][1] / len(held)
    return {"n_held_out": len(held), "accuracy": acc, "majority_baseline": majority}


def corpus_accuracy(data: EvalData, corpus: str | Path = "") -> dict[str, Any]:
    """The sentiment model as the replay and the workers train it (on the corpus the
    `models.sentiment_corpus` setting names, "" the shipped one), scored on every labelled text."""
    path = corpus_path(corpus)
    model = SentimentModel()
    pairs = read_corpus(path)
    for text, label in pairs:
        model.learn(text, label)
    texts = [(e.event.text, data.sentiment_of[e.event.event_id]) for e in data.events
             if e.event.text and e.event.event_id in data.sentiment_of]
    out: dict[str, Any] = {"corpus": "shipped" if path == SHIPPED_CORPUS else str(path),
                           "n_corpus": len(pairs), "n_texts": len(texts)}
    if not texts:
        return {**out, "accuracy": None, "majority_baseline": None}
    acc = sum(model.predict(text).label == label for text, label in texts) / len(texts)
    majority = Counter(label for _, label in texts).most_common(1)[0][1] / len(texts)
    return {**out, "accuracy": acc, "majority_baseline": majority}


def stationary(customers: int, seed: int, runs: int, *, days: float = 90,
               config: ModelConfig | None = None, progress: ProgressFn = _noop
               ) -> dict[str, Any]:
    """Runs without injected drift (seeds after `seed`), fresh models each: all alerts are false."""
    n_alerts = n_events = 0
    messages: list[str] = []
    per_run = []
    for run in range(runs):
        data = simulated(customers, seed + 1 + run, drift_segment=None, days=days)
        result = run_suite(data, set(data.sentiment_of), config=config, progress=progress,
                           phase=f"stationary run {run + 1}/{runs}")
        alerts = list(result.suite.alerts)
        n_alerts += len(alerts)
        n_events += len(data.events)
        messages.extend(a.message for a in alerts)
        per_run.append({"seed": seed + 1 + run, "n_events": len(data.events),
                        "alerts": len(alerts)})
    return {
        "runs": per_run, "n_events": n_events, "alerts": n_alerts,
        "per_1m_events": n_alerts / n_events * 1e6 if n_events else None,
        "target_per_1m": 0, "messages": messages[:5],
    }


def evaluate(data: EvalData, *, stationary_customers: int = 0, stationary_runs: int = 0,
             seed: int = 1, days: float = 90, progress: ProgressFn = _noop,
             baseline: bool = False, config: ModelConfig | None = None,
             river: bool = True, sentiment_corpus: str | Path = "") -> dict[str, Any]:
    """Every measurement on one run of the models (plus the stationary runs): a JSON-able dict.

    `config`: the models' settings (default `ModelConfig(seed=0)`, the benchmark's); `river`:
    River's own models as baselines on the same examples (`river_baselines`);
    `sentiment_corpus`: the corpus the production sentiment model learns ("": the shipped one)."""
    need_sklearn()
    train = train_texts(data)
    run = run_suite(data, train, config=config, progress=progress)
    n = len(data.events)
    throughput: dict[str, Any] = {"n_events": n, "cpu_s": run.cpu_s,
                                  "updates_per_s": n / run.cpu_s if run.cpu_s else None}
    if baseline:
        base = summary_cpu_s(data)
        throughput.update(summary_per_s=n / base if base else None,
                          cost_vs_summary=run.cpu_s / base if base else None)
    segments = segment_recovery(run, data)
    pred = segments.pop("_pred")
    report = {
        "n_events": n,
        "n_customers": len(run.states),
        "n_texts": len(data.sentiment_of),
        "n_invalid_lines": data.n_invalid,
        "throughput": throughput,
        "segments": segments,
        "propensity": propensity_auc(run),
        "drift": {**drift_delay(run, data, pred), "error_watched": error_watched(run)},
        "sentiment": {**sentiment_accuracy(data, train),
                      "corpus": corpus_accuracy(data, sentiment_corpus)},
    }
    if river:
        report["river"] = river_report(run, data, segments["k_true"])
    if stationary_runs and stationary_customers:
        report["stationary"] = stationary(stationary_customers, seed, stationary_runs,
                                          days=days, config=config, progress=progress)
    return report


def river_report(run: SuiteRun, data: EvalData, k: int) -> dict[str, Any]:
    """River's models on our propensity examples and customers' behaviour vectors."""
    from streams import river_baselines as rb

    last_seen = {e.customer_id: i for i, e in enumerate(data.events)}
    lab = sorted(run.suite.labelled, key=lambda r: r.snapshot_ms)
    return {
        "propensity": rb.propensity_baselines(lab),
        "segments": rb.segment_baselines(run.suite, run.states, last_seen, data.true_segment, k),
    }


def need_sklearn() -> None:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise MissingDependency(
            "the offline comparison and the ARI need scikit-learn, a dev extra: "
            "pip install 'journeymap[dev]' (or pip install scikit-learn)"
        ) from None


def text_report(r: dict[str, Any]) -> list[str]:
    """The report as plain lines, each figure next to its target or baseline."""
    lines = [f"{r['n_customers']} customers, {r['n_events']} events, {r['n_texts']} texts"
             + (f" ({r['n_invalid_lines']} invalid lines skipped)" if r["n_invalid_lines"] else "")]
    t = r["throughput"]
    if t["updates_per_s"] is not None:
        extra = ""
        if t.get("summary_per_s"):
            extra = (f"; feature summary alone {t['summary_per_s']:,.0f}/s, models cost "
                     f"{t['cost_vs_summary']:.1f}x it")
        lines.append(f"model updates/s (CPU time): {t['updates_per_s']:,.0f}{extra}")
    s = r["segments"]
    ari_rich = "-" if s["ari_rich"] is None else f"{s['ari_rich']:.3f}"
    ari_all = "-" if s["ari_all"] is None else f"{s['ari_all']:.3f}"
    lines.append(f"segments: k={s['k']} (true {s['k_true']}); ARI on {s['n_rich']} customers "
                 f"with >= {RICH_EVENTS} events {ari_rich} (target >= 0.8); on all "
                 f"{s['n_customers']}: {ari_all}")
    lines.extend(ceiling_lines(s.get("ceiling"), s["target_ari"]))
    for p in s["profiles"]:
        lines.append(f"  {p['segment']}: size {p['size']}, conversion {p['conversion_rate']:.2f},"
                     f" mostly {p['mostly']} ({(p['mostly_share'] or 0):.0%})")
    p = r["propensity"]
    if p["prequential_auc"] is None:
        lines.append(f"conversion propensity: {p.get('note')} ({p['n_labelled']} labelled)")
    else:
        lines.append(
            f"conversion propensity: prequential ROC AUC {p['prequential_auc']:.3f} vs offline "
            f"sklearn LR {p['offline_lr_auc']:.3f} (diff {p['diff']:+.3f}, target within 0.02); "
            f"gradient boosting {p['offline_gb_auc']:.3f}; {p['n_labelled']} labelled")
        lines.append(f"  calibration (2nd half): mean score {p['mean_score']:.3f} vs observed "
                     f"{p['positive_rate']:.3f}")
    d = r["drift"]
    if not d["injected"]:
        lines.append(f"drift: none injected; {d['false_alarms']} alerts (false alarms) in "
                     f"{d['n_events_before']} events")
    else:
        if d["detected"]:
            lines.append(f"drift ({d['description']}) in {d['segment']} (learned "
                         f"{d['learned_segment']}): alert after {d['delay_events']} events of "
                         f"that segment (target <= 2000)")
        else:
            lines.append(f"drift in {d['segment']} (learned {d['learned_segment']}): NOT detected")
        lines.append(f"  false alarms before the drift: {d['false_alarms']} in "
                     f"{d['n_events_before']} events")
        for a in d.get("propensity_error", ()):
            lines.append(f"  {a['metric']} after {a['events_after']} events "
                         f"({a['segment_events_after']} of {d['segment']}): {a['message']}")
    st = r["sentiment"]
    if st["accuracy"] is None:
        lines.append("sentiment: no held-out texts")
    else:
        lines.append(f"sentiment accuracy on {st['n_held_out']} held-out texts: "
                     f"{st['accuracy']:.3f} (majority class {st['majority_baseline']:.3f})")
    sc = st.get("corpus")
    if sc and sc["accuracy"] is not None:
        lines.append(f"sentiment accuracy of the production model (trained on the {sc['corpus']} "
                     f"corpus, {sc['n_corpus']} texts) on all {sc['n_texts']} texts: "
                     f"{sc['accuracy']:.3f} (majority class {sc['majority_baseline']:.3f})")
    if "river" in r:
        lines.extend(river_lines(r))
    if "stationary" in r:
        sr = r["stationary"]
        lines.append(f"stationary: {sr['alerts']} alerts in {sr['n_events']} events over "
                     f"{len(sr['runs'])} runs ({sr['per_1m_events']:.1f} per 1M; target 0)"
                     + (": " + ", ".join(sr["messages"]) if sr["messages"] else ""))
    return lines


def river_lines(r: dict[str, Any]) -> list[str]:
    """River's baselines, each beside our model's figure (and the offline model, the ceiling)."""

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    p, s = r["propensity"], r["segments"]
    out = [f"River baselines on the same examples (propensity: ours {f(p['prequential_auc'])}, "
           f"offline LR {f(p.get('offline_lr_auc'))}; segments ARI all / >=5: ours "
           f"{f(s['ari_all'])} / {f(s['ari_rich'])}"
           + (f", Bayes ceiling {f(s['ceiling']['bayes']['all'])} / "
              f"{f(s['ceiling']['bayes']['>=5'])}" if "bayes" in (s.get("ceiling") or {}) else "")
           + "):"]
    for b in r["river"]["propensity"]:
        diff = (b["prequential_auc"] - p["offline_lr_auc"]
                if b["prequential_auc"] is not None and p.get("offline_lr_auc") is not None
                else None)
        out.append(f"  propensity {b['model']}: prequential AUC {f(b['prequential_auc'])}"
                   + (f" (diff vs offline LR {diff:+.3f})" if diff is not None else ""))
    for b in r["river"]["segments"]:
        out.append(f"  segments {b['model']}: ARI {f(b['ari']['all'])} / {f(b['ari']['>=5'])} "
                   f"({b['n_clusters']} clusters)")
    return out


def ceiling_lines(c: dict[str, Any] | None, target: float) -> list[str]:
    """The Bayes ceiling next to the model's ARI, by number of events, and what it implies."""
    if c is None:
        return []
    if "bayes" not in c:
        return [f"  Bayes ceiling: {c['note']}"]

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    out = [f"  Bayes ceiling (max posterior under the true segments' parameters): ARI on all "
           f"{f(c['bayes']['all'])}, the model {f(c['model']['all'])} = "
           f"{f(c['model_of_ceiling']['all'])} of it"
           + ("" if c["true_journeys_same"] else
              f" (on the true journeys: {f(c['bayes_true_journeys']['all'])})")]
    out.append("  by events: " + "; ".join(
        f"{b}: {c['n'][b]} customers, ceiling {f(c['bayes'][b])}, model {f(c['model'][b])}"
        for b in c["buckets"]))
    ceiling_all = c["bayes"]["all"]
    if ceiling_all is not None and ceiling_all < target:
        rich = c["buckets"][-1]
        out.append(f"  the {target} target on all customers is above what their events allow "
                   f"(ceiling {ceiling_all:.3f}): it is measurable only where the evidence is, "
                   f"customers with {rich} events (ceiling {f(c['bayes'][rich])}, model "
                   f"{f(c['model_of_ceiling'][rich])} of it)")
    return out
