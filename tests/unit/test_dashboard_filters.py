"""Dashboard filters and trend indicators: parsed and computed without any store."""

from __future__ import annotations

from datetime import date

import pytest

from streams.web.charts import trend
from streams.web.dashboard import BadRequest, Filters, parse_filters


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
