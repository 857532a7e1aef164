"""online_models.frozen.maker: a faster constructor giving the very objects the class gives."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field

import numpy as np
import pytest

from online_models.frozen import maker
from online_models.propensity import Labelled, _new_labelled
from online_models.suite import Scores, _Closed, _new_closed, _new_scores


@dataclass(frozen=True, slots=True)
class _Point:
    x: int
    y: float = 0.5
    tags: list[str] = field(default_factory=list)


def test_made_objects_are_the_class_objects() -> None:
    make = maker(_Point)
    for args, kwargs in (((1,), {}), ((1, 2.0), {}), ((), {"x": 3, "tags": ["a"]})):
        a, b = _Point(*args, **kwargs), make(*args, **kwargs)
        assert type(b) is _Point and a == b and repr(a) == repr(b)
        assert pickle.loads(pickle.dumps(b)) == a
        with pytest.raises(dataclasses.FrozenInstanceError):
            b.x = 5  # type: ignore[misc]
    assert make(1).tags is not make(1).tags  # a fresh default per object, as the class's
    with pytest.raises(TypeError):
        make()
    with pytest.raises(TypeError):
        make(1, z=2)


def test_the_models_own_makers() -> None:
    s = dict(customer_id="c", ts_ms=1, segment="s1", p_convert=0.25, p_churn=0.5,
             top_features=(("n_events", 0.1),), next_best_action=None, expected_lift=0.0,
             lookalike=None, sentiment=None, sentiment_score=None)
    assert _new_scores(**s) == Scores(**s) and type(_new_scores(**s)) is Scores
    assert hash(_new_scores(**s)) == hash(Scores(**s))
    c = (3, "s1", 0.25, 0.5, (), 0.9, None)
    assert _new_closed(*c) == _Closed(*c)
    v = np.arange(3.0)
    lab = ("c", 1, 2, "s1", 0.3, True, v, ("a", "b", "c"), 7)
    assert _new_labelled(*lab).x == Labelled(*lab).x and _new_labelled(*lab).fit_at == 7


def test_refuses_what_it_cannot_build_alike() -> None:
    @dataclass(slots=True)
    class Mutable:
        x: int

    @dataclass(frozen=True)
    class NoSlots:
        x: int

    @dataclass(frozen=True, slots=True)
    class Post:
        x: int

        def __post_init__(self) -> None:
            pass

    for cls in (Mutable, NoSlots, Post):
        with pytest.raises(TypeError):
            maker(cls)
