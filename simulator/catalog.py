"""What the simulated customers can do: touchpoints, channels and the behavioural segments.

Each segment is a first-order Markov chain over touchpoints (plus the pseudo-states ``start`` and
``null``) and a few behavioural parameters (session length, gaps, revenue, sentiment). A
segment's matrix is one shared structure of plausible moves, re-weighted by the segment's
affinity for each destination, so segments differ in channel mix, frequency, revenue, support
contacts and sentiment: enough for a clustering model to tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

START: Final = "start"
NULL: Final = "null"
CONVERSION: Final = "purchase"
CHURN: Final = "subscription_cancelled"

# touchpoint -> channel. `login` is emitted on "app" when the session is in the app.
TOUCHPOINTS: Final[dict[str, str]] = {
    "landing_page": "web",
    "blog_post": "web",
    "pricing_page": "web",
    "docs_page": "web",
    "signup": "web",
    "login": "web",
    "trial_start": "web",
    "purchase": "web",
    "subscription_cancelled": "web",
    "app_open": "app",
    "feature_use": "app",
    "onboarding_complete": "app",
    "email_open": "email",
    "email_click": "email",
    "support_ticket": "support",
    "support_chat": "support",
    "demo_request": "sales",
    "sales_call": "sales",
    "ad_click": "ads",
    "social_visit": "social",
    "review": "social",
}
ABSORBING: Final = frozenset({CONVERSION, CHURN})
TEXT_TOUCHPOINTS: Final = frozenset({"support_ticket", "support_chat", "review"})
# Server-side events (billing): they carry the account's user_id only, so need an account.
ACCOUNT_TOUCHPOINTS: Final = frozenset({"trial_start", "purchase", "subscription_cancelled"})

# The shared structure: src -> {dst: weight}. Weights are relative within a row.
_BASE: Final[dict[str, dict[str, float]]] = {
    START: {
        "landing_page": 3, "blog_post": 2, "pricing_page": 1, "docs_page": 1, "ad_click": 2,
        "social_visit": 1.5, "email_open": 0.5, "app_open": 0.3, "demo_request": 0.2,
        "support_chat": 0.1,
    },
    "landing_page": {
        "blog_post": 2, "pricing_page": 3, "docs_page": 1, "signup": 1.5, "landing_page": 0.5,
        "demo_request": 0.3, NULL: 0.84,
    },
    "blog_post": {
        "blog_post": 1.5, "landing_page": 1, "pricing_page": 1.5, "docs_page": 1, "signup": 0.7,
        "social_visit": 0.3, NULL: 0.84,
    },
    "pricing_page": {
        "pricing_page": 0.5, "signup": 2, "trial_start": 1, "demo_request": 0.8, CONVERSION: 0.8,
        "docs_page": 0.7, "landing_page": 0.5, "support_chat": 0.3, NULL: 0.84,
    },
    "docs_page": {
        "docs_page": 2, "pricing_page": 1, "signup": 1, "app_open": 0.7, "feature_use": 0.5,
        "support_ticket": 0.3, NULL: 0.56,
    },
    "signup": {
        "onboarding_complete": 1.5, "app_open": 2, "trial_start": 2, "email_open": 1,
        "docs_page": 0.5, "pricing_page": 0.5, NULL: 0.21,
    },
    "login": {
        "feature_use": 2, "app_open": 1, "pricing_page": 1, "docs_page": 1, CONVERSION: 0.5,
        "support_ticket": 0.5, NULL: 0.21,
    },
    "app_open": {
        "feature_use": 3, "login": 1, "onboarding_complete": 0.7, "support_chat": 0.3,
        "pricing_page": 0.3, "app_open": 0.5, NULL: 0.56,
    },
    "feature_use": {
        "feature_use": 2, "app_open": 1, "support_ticket": 0.5, "support_chat": 0.4,
        CONVERSION: 0.4, "review": 0.3, "pricing_page": 0.3, CHURN: 0.05, NULL: 0.56,
    },
    "onboarding_complete": {
        "feature_use": 3, "app_open": 1, "trial_start": 0.5, CONVERSION: 0.5, "email_open": 0.5,
        "support_chat": 0.2, NULL: 0.28,
    },
    "email_open": {"email_click": 2, "email_open": 0.5, "login": 0.3, NULL: 1.12},
    "email_click": {
        "landing_page": 1, "pricing_page": 2, "blog_post": 1, "login": 1, CONVERSION: 0.3,
        NULL: 0.35,
    },
    "support_ticket": {
        "support_chat": 0.8, "support_ticket": 0.5, "feature_use": 1, "app_open": 1,
        "review": 0.4, CHURN: 0.3, CONVERSION: 0.1, NULL: 0.56,
    },
    "support_chat": {
        "support_ticket": 0.6, "feature_use": 1, "pricing_page": 0.5, CONVERSION: 0.2,
        CHURN: 0.2, "review": 0.3, NULL: 0.56,
    },
    "demo_request": {
        "sales_call": 3, "docs_page": 0.5, "pricing_page": 0.5, "email_open": 0.5, NULL: 0.21,
    },
    "sales_call": {
        "sales_call": 0.8, "pricing_page": 0.6, CONVERSION: 1, "trial_start": 0.8,
        "docs_page": 0.5, "demo_request": 0.2, "email_open": 0.5, NULL: 0.42,
    },
    "ad_click": {
        "landing_page": 3, "pricing_page": 1.5, "signup": 0.5, "ad_click": 0.5, NULL: 0.84,
    },
    "social_visit": {"landing_page": 1.5, "blog_post": 1.5, "social_visit": 0.5, NULL: 1.12},
    "review": {
        "support_ticket": 0.5, "feature_use": 1, "app_open": 0.5, CHURN: 0.3, NULL: 0.84,
    },
    "trial_start": {
        "app_open": 2, "onboarding_complete": 2, "feature_use": 1.5, "docs_page": 0.5,
        "support_chat": 0.3, CONVERSION: 0.4, CHURN: 0.1, NULL: 0.21,
    },
}


@dataclass(frozen=True, slots=True)
class Segment:
    """One behavioural segment: its Markov affinities and how its customers behave in time."""

    name: str
    share: float
    description: str
    affinity: dict[str, float]  # destination -> multiplier of the shared weights
    session_continue_p: float  # chance the next step is in the same session
    step_gap_median_s: float  # within a session (lognormal)
    session_gap_median_h: float  # between sessions (lognormal)
    revenue_median: float  # on purchase (lognormal, sigma 0.5)
    sentiment_p: tuple[float, float, float]  # (negative, neutral, positive) of support texts
    extra_cookie_p: float  # chance of each extra browser cookie (up to 3 in all)
    second_device_p: float  # chance of a second app device
    crm_email_p: float = 0.5  # chance a sales/support event also carries the email
    matrix: dict[str, dict[str, float]] = field(init=False)  # src -> {dst: probability}

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrix", _matrix(self.affinity))


def _matrix(affinity: dict[str, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for src, row in _BASE.items():
        weights = {dst: w * affinity.get(dst, 1.0) for dst, w in row.items()}
        total = sum(weights.values())
        out[src] = {dst: w / total for dst, w in weights.items() if w > 0}
    return out


SEGMENTS: Final[tuple[Segment, ...]] = (
    Segment(
        name="bargain_hunter",
        share=0.22,
        description="ads, promotions and the pricing page; short frequent sessions; small basket",
        affinity={
            "pricing_page": 2.5, "ad_click": 3, "email_open": 2, "email_click": 2.5,
            CONVERSION: 1.2, "demo_request": 0.1, "sales_call": 0.1, "docs_page": 0.5,
            "support_ticket": 0.5, "support_chat": 0.5,
        },
        session_continue_p=0.55,
        step_gap_median_s=40,
        session_gap_median_h=20,
        revenue_median=29,
        sentiment_p=(0.3, 0.5, 0.2),
        extra_cookie_p=0.4,
        second_device_p=0.1,
    ),
    Segment(
        name="enterprise_evaluator",
        share=0.12,
        description="docs, demos and sales calls; slow, deliberate, days apart; large contracts",
        affinity={
            "docs_page": 2, "demo_request": 6, "sales_call": 4, "pricing_page": 1.5,
            "ad_click": 0.2, "social_visit": 0.3, "blog_post": 1.2, "app_open": 0.5, NULL: 0.6,
        },
        session_continue_p=0.65,
        step_gap_median_s=180,
        session_gap_median_h=96,
        revenue_median=6000,
        sentiment_p=(0.1, 0.5, 0.4),
        extra_cookie_p=0.3,
        second_device_p=0.1,
        crm_email_p=0.8,
    ),
    Segment(
        name="self_serve_dev",
        share=0.29,
        description="docs, app and trial; long frequent sessions; converts on its own",
        affinity={
            "docs_page": 3, "app_open": 2.5, "feature_use": 3, "onboarding_complete": 2,
            "signup": 2, "trial_start": 2, "login": 1.5, "blog_post": 1.5, "demo_request": 0.1,
            "sales_call": 0.1, "ad_click": 0.3, CONVERSION: 1.3, NULL: 0.5,
        },
        session_continue_p=0.8,
        step_gap_median_s=90,
        session_gap_median_h=10,
        revenue_median=120,
        sentiment_p=(0.15, 0.45, 0.4),
        extra_cookie_p=0.5,
        second_device_p=0.35,
    ),
    Segment(
        name="support_heavy",
        share=0.15,
        description="app users who open tickets and chats, write reviews, often unhappy; churn",
        affinity={
            "support_ticket": 5, "support_chat": 5, "review": 3, "feature_use": 1.5,
            "app_open": 1.5, CHURN: 3, CONVERSION: 0.7, NULL: 0.7, "login": 1.5,
        },
        session_continue_p=0.7,
        step_gap_median_s=150,
        session_gap_median_h=30,
        revenue_median=150,
        sentiment_p=(0.55, 0.35, 0.1),
        extra_cookie_p=0.3,
        second_device_p=0.25,
        crm_email_p=0.6,
    ),
    Segment(
        name="window_shopper",
        share=0.22,
        description="blog, social and landing pages; rarely signs up; long gaps; mostly no outcome",
        affinity={
            "landing_page": 2, "blog_post": 2.5, "social_visit": 3, "signup": 0.15,
            "trial_start": 0.3, CONVERSION: 0.3, "login": 0.3, "app_open": 0.3, NULL: 1.4,
            "demo_request": 0.2,
        },
        session_continue_p=0.45,
        step_gap_median_s=60,
        session_gap_median_h=120,
        revenue_median=60,
        sentiment_p=(0.2, 0.5, 0.3),
        extra_cookie_p=0.6,
        second_device_p=0.05,
    ),
)
SEGMENT_NAMES: Final = tuple(s.name for s in SEGMENTS)


def segment_named(name: str) -> Segment:
    for seg in SEGMENTS:
        if seg.name == name:
            return seg
    raise ValueError(f"unknown segment {name!r}; known: {', '.join(SEGMENT_NAMES)}")


def drifted_matrix(
    matrix: dict[str, dict[str, float]], conversion_factor: float
) -> dict[str, dict[str, float]]:
    """Every move into `purchase` scaled by `conversion_factor`; the freed mass goes to `null`."""
    out: dict[str, dict[str, float]] = {}
    for src, row in matrix.items():
        p = row.get(CONVERSION, 0.0)
        if p == 0.0:
            out[src] = dict(row)
            continue
        new_row = dict(row)
        new_row[CONVERSION] = p * conversion_factor
        new_row[NULL] = row.get(NULL, 0.0) + p * (1.0 - conversion_factor)
        out[src] = new_row
    return out
