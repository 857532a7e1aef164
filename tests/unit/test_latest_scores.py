"""The journey agent sends each customer's last scores of a batch, once (issue 6)."""

from __future__ import annotations

from online_models.suite import Scores
from streams.app import latest_scores


def _scores(customer_id: str, ts_ms: int) -> Scores:
    return Scores(customer_id=customer_id, ts_ms=ts_ms, segment="all", p_convert=0.1,
                  p_churn=0.2, top_features=(), next_best_action=None, expected_lift=0.0,
                  lookalike=None, sentiment=None, sentiment_score=None)


def test_one_message_per_customer_the_last_in_batch_order() -> None:
    batch = [_scores("a", 1), _scores("b", 2), _scores("a", 3), _scores("c", 4),
             _scores("b", 5)]
    assert [(s.customer_id, s.ts_ms) for s in latest_scores(batch)] == [
        ("a", 3), ("c", 4), ("b", 5)]


def test_an_empty_batch_sends_nothing() -> None:
    assert latest_scores([]) == []
