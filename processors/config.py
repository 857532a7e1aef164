"""The domain configuration the processors take: plain, validated values.

These models are filled by :mod:`streams.settings` (from ``journeymap.toml`` and the environment)
and handed down; processors never read files or the environment themselves.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from processors.events import IDENTITY_KINDS, TOUCHPOINT_PATTERN

Touchpoint = Annotated[str, Field(pattern=TOUCHPOINT_PATTERN)]
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

HOUR_S = 3600
DAY_S = 86_400


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OutcomesConfig(_Frozen):
    """Which touchpoints end a journey: conversion and churn are absorbing outcomes."""

    conversion: list[Touchpoint] = ["purchase"]
    churn: list[Touchpoint] = ["subscription_cancelled"]
    # A journey with no conversion for this long ends in the `null` state (Markov attribution).
    null_horizon_s: Annotated[int, Field(gt=0)] = 30 * DAY_S

    @model_validator(mode="after")
    def _disjoint(self) -> OutcomesConfig:
        both = set(self.conversion) & set(self.churn)
        if both:
            raise ValueError(f"touchpoints {sorted(both)} are both conversion and churn")
        return self


class FunnelStage(_Frozen):
    name: Annotated[str, Field(pattern=_NAME.pattern)]
    touchpoints: Annotated[list[Touchpoint], Field(min_length=1)]


class FunnelConfig(_Frozen):
    """An ordered funnel. `strict` needs every stage in order; `relaxed` lets a customer skip."""

    name: Annotated[str, Field(pattern=_NAME.pattern)]
    stages: Annotated[list[FunnelStage], Field(min_length=2)]
    conversion_window_s: Annotated[int, Field(gt=0)] = 14 * DAY_S
    order: Literal["strict", "relaxed"] = "relaxed"

    @field_validator("stages")
    @classmethod
    def _distinct(cls, stages: list[FunnelStage]) -> list[FunnelStage]:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be distinct, got {names}")
        seen: dict[str, str] = {}
        for stage in stages:
            for tp in stage.touchpoints:
                if tp in seen:
                    raise ValueError(
                        f"touchpoint {tp!r} is in stages {seen[tp]!r} and {stage.name!r}; "
                        "a touchpoint may belong to one stage of a funnel"
                    )
                seen[tp] = stage.name
        return stages


class WindowsConfig(_Frozen):
    """Hopping event-time windows for transition counts: each size advances by `step_s`."""

    sizes_s: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)] = [
        DAY_S,
        7 * DAY_S,
        28 * DAY_S,
    ]
    step_s: Annotated[int, Field(gt=0)] = HOUR_S

    @model_validator(mode="after")
    def _multiples(self) -> WindowsConfig:
        bad = [s for s in self.sizes_s if s % self.step_s]
        if bad:
            raise ValueError(f"window sizes {bad} are not multiples of step_s={self.step_s}")
        return self


class JourneyConfig(_Frozen):
    session_gap_s: Annotated[int, Field(gt=0)] = 30 * 60
    # How far behind its partition's watermark an event may arrive and still be placed where it
    # belongs, in seconds to the millisecond (0.25 is 250 ms). Rows, scores and alerts wait for
    # it: the shorter, the sooner they leave, and the more events a skewed producer makes late.
    allowed_lateness_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = HOUR_S
    last_touchpoints_kept: Annotated[int, Field(ge=1, le=100)] = 10
    # Bounded memory for duplicate detection: event ids remembered per customer.
    dedup_ids_per_customer: Annotated[int, Field(ge=1, le=10_000)] = 64
    # Who runs the journeys stage (JourneyProcessor and the transition counter's step loop):
    # the Rust core when it is installed (`auto`), always Python, or always native (an error
    # when not installed). Same outputs.
    engine: Literal["auto", "python", "native"] = "auto"

    @field_validator("allowed_lateness_s")
    @classmethod
    def _whole_ms(cls, seconds: float) -> float:
        if abs(seconds * 1000 - lateness_ms(seconds)) > 1e-6:
            raise ValueError(f"allowed_lateness_s={seconds} is not a whole number of "
                             "milliseconds (event times are milliseconds)")
        return seconds

    @property
    def allowed_lateness_ms(self) -> int:
        return lateness_ms(self.allowed_lateness_s)


def lateness_ms(seconds: float) -> int:
    """An allowed lateness in whole milliseconds (the unit of every event time)."""
    return round(seconds * 1000)


class DecodeConfig(_Frozen):
    """How raw messages become events (processors.validation)."""

    # Who decodes: the native fast path when it is installed (`auto`; messages it is not sure
    # of go to the Python path), always Python, or always native (an error when not
    # installed). Same events, same dead letters.
    engine: Literal["auto", "python", "native"] = "auto"


class IdentityConfig(_Frozen):
    """Identity-merge safeguards (see processors.identity)."""

    # Two different values of these kinds never belong to one customer.
    unique_kinds: list[Literal["anonymous_id", "device_id", "user_id", "email", "crm_id"]] = [
        "user_id",
        "crm_id",
    ]
    # One identifier may link at most this many otherwise separate customers.
    max_customers_per_identifier: Annotated[int, Field(ge=1)] = 5
    ignored_values: list[str] = ["", "null", "none", "undefined", "0", "anonymous", "nan", "-"]
    # Who decides for an in-memory graph (replay, demo): the Rust core when it is installed
    # (`auto`), always Python, or always native (an error when not installed). Same outputs.
    engine: Literal["auto", "python", "native"] = "auto"

    @field_validator("unique_kinds")
    @classmethod
    def _known(cls, kinds: list[str]) -> list[str]:
        for kind in kinds:
            if kind not in IDENTITY_KINDS:  # pragma: no cover - Literal already checks
                raise ValueError(f"unknown identity kind {kind!r}")
        return kinds


class ProcessingConfig(_Frozen):
    """Everything the processors need, in one value."""

    outcomes: OutcomesConfig = OutcomesConfig()
    funnels: list[FunnelConfig] = []
    windows: WindowsConfig = WindowsConfig()
    journey: JourneyConfig = JourneyConfig()
    identity: IdentityConfig = IdentityConfig()
    decode: DecodeConfig = DecodeConfig()
    # Salt for hashing identifiers before they leave the resolver (a plain value here).
    identity_salt: str = ""

    @field_validator("funnels")
    @classmethod
    def _unique_funnels(cls, funnels: list[FunnelConfig]) -> list[FunnelConfig]:
        names = [f.name for f in funnels]
        if len(set(names)) != len(names):
            raise ValueError(f"funnel names must be distinct, got {names}")
        return funnels
