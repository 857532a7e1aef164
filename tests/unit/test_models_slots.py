"""`online_models.slots.tuple_state`: the per-customer objects of a checkpoint pickle as tuples,
and what earlier checkpoints pickled still restores."""

from __future__ import annotations

import pickle
from array import array
from dataclasses import dataclass, fields

import pytest

from online_models.features import CustomerFeatures
from online_models.slots import tuple_state
from online_models.suite import CustomerModelState, Scores, _Closed


def _features() -> CustomerFeatures:
    f = CustomerFeatures(first_ts_ms=1, last_ts_ms=5, last_touchpoint="pricing_page", n_events=3)
    f.channel_counts["web"] = 3
    f.transitions[("^", "pricing_page")] = 1
    f.adopted = {"export"}
    return f


def _objects() -> list[object]:
    return [
        _features(),
        CustomerModelState(_features(), segment="s1", scored_ms=9, top_features=(("x", 0.5),),
                           counts=array("d", [1.0, 2.5]), cells=array("q", [3])),
        Scores("c1", 5, "s1", 0.25, 0.5, (("x", 0.5),), "demo", 0.1, None, "negative", -0.5),
        _Closed(3, "s1", 0.25, 0.5, (), 0.75, None),
    ]


def _fields(obj: object) -> list[object]:
    return [getattr(obj, f.name, "<unset>") for f in fields(obj)]  # type: ignore[arg-type]


@pytest.mark.parametrize("obj", _objects(), ids=lambda o: type(o).__name__)
def test_pickled_as_a_tuple_and_restored_equal(obj: object) -> None:
    assert type(obj.__getstate__()) is tuple  # type: ignore[attr-defined]
    copy = pickle.loads(pickle.dumps(obj, protocol=5))
    assert type(copy) is type(obj) and copy == obj and _fields(copy) == _fields(obj)


@pytest.mark.parametrize("obj", _objects(), ids=lambda o: type(o).__name__)
def test_the_default_states_of_earlier_checkpoints_restore(obj: object) -> None:
    """A frozen dataclass pickled its values as a list, a mutable one ``(None, {slot: value})``."""
    cls = type(obj)
    frozen = cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}  # type: ignore[arg-type]
    old = list(values.values()) if frozen else (None, values)
    copy = cls.__new__(cls)
    copy.__setstate__(pickle.loads(pickle.dumps(old)))  # type: ignore[attr-defined]
    assert copy == obj


def test_a_slot_never_set_stays_unset() -> None:
    """An object restored from a checkpoint older than one of its fields lacks that slot: it is
    pickled without it (not refused) and comes back without it."""
    f = _features()
    older = CustomerFeatures.__new__(CustomerFeatures)
    for name in [f.name for f in fields(CustomerFeatures)][:-3]:
        setattr(older, name, getattr(f, name))
    state = older.__getstate__()  # type: ignore[attr-defined]
    assert isinstance(state, dict) and "revenue_log_sq" not in state
    copy = pickle.loads(pickle.dumps(older))
    assert not hasattr(copy, "revenue_log_sq") and copy.n_events == 3


def test_a_state_with_more_fields_than_the_class_is_refused() -> None:
    s = _objects()[2]
    copy = Scores.__new__(Scores)
    with pytest.raises(ValueError, match="Scores with 13 fields, expected 12"):
        copy.__setstate__((*s.__getstate__(), "extra"))  # type: ignore[attr-defined]


def test_only_slotted_dataclasses_of_three_fields_or_more() -> None:
    @dataclass
    class Plain:
        a: int
        b: int
        c: int

    @dataclass(slots=True)
    class Two:
        a: int
        b: int

    for cls in (Plain, Two):
        with pytest.raises(TypeError, match="three fields or more"):
            tuple_state(cls)
