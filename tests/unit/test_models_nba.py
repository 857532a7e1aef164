"""Next-best action from absorption probabilities of a small hand-solved Markov chain."""

from __future__ import annotations

import math

from online_models.nba import absorption_probabilities, next_best_action

# landing --0.5--> pricing --0.4--> conversion        pricing --0.6--> null
#    \--0.5--> blog --0.2--> pricing, 0.8 null        demo --0.8--> conversion
MATRIX = {
    "landing_page": {"pricing_page": 0.5, "blog_post": 0.5},
    "blog_post": {"pricing_page": 0.2, "null": 0.8},
    "pricing_page": {"conversion": 0.4, "null": 0.6},
    "demo_request": {"conversion": 0.8, "null": 0.2},
}


def test_absorption_matches_hand_solution() -> None:
    b = absorption_probabilities(MATRIX)
    assert math.isclose(b["pricing_page"], 0.4)
    assert math.isclose(b["blog_post"], 0.08)
    assert math.isclose(b["landing_page"], 0.5 * 0.4 + 0.5 * 0.08)
    assert b["conversion"] == 1 and b["null"] == 0


def test_loops_are_solved_exactly() -> None:
    b = absorption_probabilities({"a": {"a": 0.5, "conversion": 0.25, "null": 0.25}})
    assert math.isclose(b["a"], 0.5)


def test_best_action_and_lift() -> None:
    b = absorption_probabilities(MATRIX)
    best = next_best_action(b, "landing_page", ["pricing_page", "blog_post", "demo_request"])
    assert best.action == "demo_request"
    assert math.isclose(best.expected_lift, 0.8 - b["landing_page"])
    assert best.p_convert_after["blog_post"] < best.p_convert_now


def test_customer_propensity_scales_on_the_odds() -> None:
    b = absorption_probabilities(MATRIX)
    base = next_best_action(b, "pricing_page", ["demo_request"], p_customer=0.4)
    assert math.isclose(base.p_convert_after["demo_request"], 0.8)  # same odds as the chain
    keen = next_best_action(b, "pricing_page", ["demo_request"], p_customer=0.7)
    assert keen.p_convert_after["demo_request"] > 0.8 and keen.expected_lift > 0
    assert next_best_action(b, "pricing_page", ["unknown"]).action is None
