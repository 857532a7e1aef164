"""Dashboard filters, trend indicators, the interval chart and the experiment reading: parsed
and computed without any store."""

from __future__ import annotations

from datetime import date

import pytest

from processors.experiments import Intervention, VariantOutcome, analyse
from streams.web.charts import intervals, trend
from streams.web.dashboard import BadRequest, Filters, _verdict, parse_filters


def test_defaults_mean_everything_over_thirty_days() -> None:
    f = parse_filters([])
    assert (f.segment, f.channel, f.cohort, f.window_d, f.end) == ("*", "*", None, 30, None)


def test_empty_form_fields_mean_all() -> None:
    f = parse_filters([("segment", ""), ("channel", ""), ("cohort", ""), ("window", "7d"),
                       ("end", "2026-03-31")])
    assert (f.segment, f.channel, f.cohort, f.window_d, f.end) == (
        "*", "*", None, 7, date(2026, 3, 31))


def test_query_string_round_trips() -> None:
    f = parse_filters([("segment", "s2"), ("channel", "email"), ("cohort", "2026-03-02"),
                       ("window", "14")])
    assert f.query() == "segment=s2&channel=email&cohort=2026-03-02&window=14"
    assert "window=7" in f.query(window="7")


@pytest.mark.parametrize(("items", "says"), [
    ([("window", "0")], "between 1 and 366"),
    ([("window", "367")], "between 1 and 366"),
    ([("window", "1; DROP")], "window"),
    ([("channel", "TV")], "web, app"),
    ([("segment", "a b")], "segment name"),
    ([("cohort", "2026-03-04")], "Wednesday"),
    ([("cohort", "03/02/2026")], "YYYY-MM-DD"),
    ([("end", "2026-02-29")], "valid calendar date"),
    ([("funnel", "x")], "unknown parameter 'funnel'"),
    ([("window", "7"), ("window", "8")], "given twice"),
])
def test_bad_values_say_what_is_wrong(items: list[tuple[str, str]], says: str) -> None:
    with pytest.raises(BadRequest, match=None) as err:
        parse_filters(items)
    assert says in str(err.value)


def test_a_page_may_take_more_parameters() -> None:
    assert parse_filters([("funnel", "f1")], extra=("funnel",)).extra == {"funnel": "f1"}
    assert isinstance(parse_filters([]), Filters)


def test_trends() -> None:
    assert trend(120, 100).text == "+20%" and trend(120, 100).good
    assert trend(80, 100, higher_is_better=False).good
    assert trend(5, 0).direction == "new"
    assert trend(0, 0).direction == "flat"
    assert trend(None, 3).text == "n/a"
    rate = trend(0.25, 0.30, points=True)
    assert rate.text == "-5.0 pp" and rate.direction == "down" and rate.good is False
    assert trend(0.3, 0.3, points=True).direction == "flat"
    assert "▲" in trend(2, 1).__html__()


def test_intervals_colour_by_where_the_interval_lies() -> None:
    svg = intervals([("win", 0.5, 1.0, 1.5, "+1.0 pp"), ("loss", -2.0, -1.0, -0.2, "-1.0 pp"),
                     ("unclear", -1.0, 0.2, 1.4, "+0.2 pp"), ("<b>", 0.0, 0.0, 0.0, "0")])
    circles = svg.split("<circle")[1:]
    assert [c.split('fill="')[1][:7] for c in circles] == ["#54a24b", "#e45756", "#8a8f98",
                                                           "#8a8f98"]
    assert "<b>" not in svg and "&lt;b&gt;" in svg
    assert "no data" in intervals([])


AB = Intervention("i1", "new checkout", 0, experiment="checkout", variants=("control", "b"),
                  control="control", outcome_touchpoints=("purchase",))


def _reading(n: int, x_control: int, x_b: int, planned: int) -> str:
    iv = Intervention(**{**{f: getattr(AB, f) for f in AB.__slots__},
                         "planned_n_per_variant": planned})
    report = analyse(iv, [VariantOutcome("control", "s1", n, x_control),
                          VariantOutcome("b", "s1", n, x_b)])
    overall = next(c for c in report.comparisons if c.segment == "*")
    return _verdict(overall, planned)


def test_the_reading_says_too_early_until_the_planned_size() -> None:
    assert _reading(500, 50, 90, planned=4000).startswith("too early: 500 of 4,000")
    assert _reading(5000, 500, 650, planned=4000).startswith("b converts better than control")
    assert _reading(5000, 650, 500, planned=4000).startswith("b converts worse")
    assert _reading(5000, 500, 510, planned=4000).startswith("no difference detected (p = 0.7")
