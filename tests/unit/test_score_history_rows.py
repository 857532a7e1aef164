"""`customer_score_history` rows from a batch of scores: the last score of each customer per
event-time day (UTC), whatever the batch boundaries."""

from __future__ import annotations

from datetime import date

from online_models.suite import Scores
from streams.outputs import score_history_rows

DAY_MS = 86_400_000
T0 = 1_772_323_200_000  # 2026-03-01T00:00:00Z


def _s(customer: str, ts_ms: int, p: float) -> Scores:
    return Scores(customer, ts_ms, "s1", p, 0.1, (), None, 0.0, None, None, None)


def test_the_last_score_of_each_customer_and_day_is_kept() -> None:
    #   day:      28 Feb         | 1 Mar                     | 2 Mar
    #   a:        0.9 @23:59:59.999 | 0.8 @00:00, 0.7 @12:00  | 0.6
    #   b:                       | 0.5 @01:00                |
    batch = [_s("a", T0 - 1, 0.9), _s("a", T0, 0.8), _s("b", T0 + 3_600_000, 0.5),
             _s("a", T0 + DAY_MS // 2, 0.7), _s("a", T0 + DAY_MS, 0.6)]
    rows = {(r["customer_id"], r["day"]): r for r in score_history_rows(batch)}
    assert {k: r["p_convert"] for k, r in rows.items()} == {
        ("a", date(2026, 2, 28)): 0.9, ("a", date(2026, 3, 1)): 0.7,
        ("b", date(2026, 3, 1)): 0.5, ("a", date(2026, 3, 2)): 0.6,
    }
    assert rows[("a", date(2026, 3, 1))]["ts"] == T0 + DAY_MS // 2  # the version: newest wins
    assert rows[("a", date(2026, 3, 1))]["next_best_action"] == ""


def test_batch_boundaries_change_only_versions_not_the_final_rows() -> None:
    scores = [_s(c, T0 + i * 3_000_000, i / 100) for i in range(60) for c in ("a", "b")]
    whole = score_history_rows(scores)
    final: dict[tuple[str, date], dict[str, object]] = {}
    for cut in range(0, len(scores), 7):  # written in batches of 7: newer ts replaces older
        for r in score_history_rows(scores[cut:cut + 7]):
            key = (r["customer_id"], r["day"])
            if key not in final or final[key]["ts"] < r["ts"]:  # type: ignore[operator]
                final[key] = r
    assert sorted(final.values(), key=repr) == sorted(whole, key=repr)
