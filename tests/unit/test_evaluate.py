"""`journeymap evaluate` and `streams.evaluate`: one run of the models against the truth."""

from __future__ import annotations

import sys

import orjson
import pytest
from click.testing import CliRunner

from simulator.model import SimConfig, simulate
from simulator.writer import write_simulation
from streams import evaluate as ev
from streams.cli import cli


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["evaluate", *args])
    # a JourneymapError reaches `journeymap`'s main(), which prints it as "error: ..."
    return result.exit_code, result.output + (str(result.exception or ""))


@pytest.fixture(scope="module")
def report() -> dict:
    code, out = _run("--customers", "800", "--seed", "3", "--stationary-customers", "300",
                     "--json", "--quiet")
    assert code == 0, out
    return orjson.loads(out)


def test_json_shape(report: dict) -> None:
    assert set(report) >= {"n_events", "n_customers", "throughput", "segments", "propensity",
                           "drift", "sentiment", "stationary"}
    assert report["n_customers"] == 800
    assert report["n_events"] > 800 * 4
    assert set(report["segments"]) >= {"k", "k_true", "ari_rich", "ari_all", "profiles",
                                       "ceiling"}
    assert set(report["segments"]["ceiling"]) >= {"bayes", "model", "model_of_ceiling", "n",
                                                  "bayes_true_journeys", "true_journeys_same"}
    assert set(report["propensity"]) >= {"prequential_auc", "offline_lr_auc", "offline_gb_auc",
                                         "diff", "n_labelled"}
    assert set(report["drift"]) >= {"injected", "detected", "delay_events", "false_alarms"}
    assert report["drift"]["injected"] is True
    assert report["drift"]["segment"] == "self_serve_dev"
    assert [r["seed"] for r in report["stationary"]["runs"]] == [4]


def test_numbers_in_sane_ranges(report: dict) -> None:
    seg = report["segments"]
    assert seg["k_true"] == 5 and 3 <= seg["k"] <= 10
    # far better than chance (0), below perfect on a small population
    assert 0.2 < seg["ari_rich"] <= 1.0
    assert -0.1 < seg["ari_all"] <= seg["ari_rich"] + 0.2
    c = seg["ceiling"]
    # the model's ARI by bucket is the same measurement as ari_all / ari_rich
    assert c["model"]["all"] == pytest.approx(seg["ari_all"], abs=1e-12)
    assert c["model"][">=5"] == pytest.approx(seg["ari_rich"], abs=1e-12)
    assert sum(c["n"][b] for b in ("1", "2", "3-4", ">=5")) == c["n"]["all"] == 800
    # simulated events are the true journeys: the two ceilings are one
    assert c["true_journeys_same"] and c["bayes_true_journeys"] == c["bayes"]
    # more events, more evidence: the ceiling rises with the bucket
    assert c["bayes"]["1"] < c["bayes"]["3-4"] < c["bayes"][">=5"] <= 1.0
    prop = report["propensity"]
    assert prop["n_labelled"] > 500
    for key in ("prequential_auc", "offline_lr_auc", "offline_gb_auc"):
        assert 0.5 < prop[key] < 0.9, (key, prop[key])
    assert abs(prop["diff"] - (prop["prequential_auc"] - prop["offline_lr_auc"])) < 1e-9
    sent = report["sentiment"]
    assert sent["n_held_out"] > 50
    assert sent["accuracy"] > sent["majority_baseline"] + 0.2
    # the production model (the shipped corpus alone) on every text of the simulation
    corpus = sent["corpus"]
    assert corpus["corpus"] == "shipped" and corpus["n_corpus"] == 3_000
    assert corpus["n_texts"] > sent["n_held_out"]
    assert corpus["accuracy"] > corpus["majority_baseline"] + 0.2
    st = report["stationary"]
    assert st["n_events"] > 300 * 4
    assert st["per_1m_events"] == st["alerts"] / st["n_events"] * 1e6
    assert report["throughput"]["updates_per_s"] > 0


def test_river_baselines_on_the_same_examples(report: dict) -> None:
    river = report["river"]
    from streams.river_baselines import PROPENSITY_SETTINGS

    assert len(river["propensity"]) == len(PROPENSITY_SETTINGS)
    for b in river["propensity"]:
        # an online logistic regression on the same labelled examples: better than chance
        assert 0.5 < b["prequential_auc"] < 0.9, b
    models = [b["model"] for b in river["segments"]]
    assert any(m.startswith("StandardScaler | KMeans(k=5") for m in models)
    assert any(m.startswith("DBSTREAM") for m in models)
    for b in river["segments"]:
        assert set(b["ari"]) == {"all", "1", "2", "3-4", ">=5"}
        assert all(-0.5 < v <= 1.0 for v in b["ari"].values()), b
        assert b["n_clusters"] >= 1


def test_text_output_names_every_measurement() -> None:
    code, out = _run("--customers", "300", "--stationary-runs", "0", "--drift", "none",
                     "--quiet")
    assert code == 0, out
    for phrase in ("segments: k=", "ARI", "prequential ROC AUC", "offline sklearn LR",
                   "drift: none injected", "sentiment accuracy", "Bayes ceiling",
                   "by events: 1:", "River baselines", "LogisticRegression", "KMeans",
                   "production model (trained on the shipped corpus, 3000 texts)"):
        assert phrase in out
    assert "stationary" not in out


def test_file_with_its_truth(tmp_path) -> None:
    sim = simulate(SimConfig(customers=300, seed=5))
    summary = write_simulation(sim, tmp_path / "events.jsonl")
    with open(summary.events_path, "ab") as fh:
        fh.write(b'{"event_id": "broken"\nnot json\n')
    data = ev.from_file(summary.events_path)
    assert data.n_invalid == 2
    # each true event once: the duplicated deliveries are dropped
    assert len(data.events) == sim.truth.n_events
    assert [e.ts_ms for e in data.events] == sorted(e.ts_ms for e in data.events)
    code, out = _run(str(summary.events_path), "--stationary-runs", "0", "--json", "--quiet")
    assert code == 0, out
    r = orjson.loads(out)
    assert r["n_invalid_lines"] == 2 and r["n_customers"] == 300


def test_file_without_truth_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"{}\n")
    code, out = _run(str(path), "--quiet")
    assert code != 0
    assert "ground truth" in out and "--truth" in out


def test_missing_scikit_learn_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ev.MissingDependency, match="scikit-learn"):
        ev.need_sklearn()
    code, out = _run("--customers", "10", "--quiet")
    assert code == 1
    assert "pip install" in out
