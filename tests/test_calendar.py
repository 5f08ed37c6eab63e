import datetime as dt

import pytest

from charlie.calendar import (
    EODHD_EXCHANGES,
    calendar_for,
    get_calendar,
    is_trading_day,
    shift_trading_days,
    trading_days,
)
from charlie.errors import ConfigError

D = dt.date


def test_the_seeds_period_has_376_trading_days():
    assert len(trading_days(D(2023, 10, 24), D(2025, 4, 24))) == 376


def test_nyse_closures_2024_match_the_exchange_calendar():
    assert get_calendar("XNYS").closures(2024) == [
        D(2024, 1, 1), D(2024, 1, 15), D(2024, 2, 19),
        D(2024, 3, 29),  # Good Friday
        D(2024, 5, 27), D(2024, 6, 19), D(2024, 7, 4), D(2024, 9, 2), D(2024, 11, 28),
        D(2024, 12, 25),
    ]  # fmt: skip


def test_one_off_closures_the_rule_based_calendar_got_wrong():
    """Days of mourning (Ford, Bush, Carter), hurricane Sandy and 9/11: no sessions."""
    for day in (D(2007, 1, 2), D(2012, 10, 29), D(2012, 10, 30), D(2018, 12, 5), D(2025, 1, 9),
                D(2001, 9, 11), D(2001, 9, 14)):  # fmt: skip
        assert not is_trading_day(day), day
    assert is_trading_day(D(1997, 1, 20))  # MLK Day: the NYSE traded on it until 1998


def test_observed_holidays_and_weekends():
    assert not is_trading_day(D(2023, 1, 2))  # New Year on a Sunday, observed Monday
    assert is_trading_day(D(2021, 12, 31))  # no Friday closure for a Saturday New Year
    assert not is_trading_day(D(2024, 1, 6))  # Saturday


def test_early_closes_are_known():
    assert sorted(d for d in get_calendar("XNYS").early_closes if d.year == 2024) == [
        D(2024, 7, 3), D(2024, 11, 29), D(2024, 12, 24)]  # fmt: skip
    assert is_trading_day(D(2024, 11, 29))  # an early close is still a session


def test_shift_trading_days_skips_weekends_and_holidays():
    assert shift_trading_days(D(2024, 3, 28), 1) == D(2024, 4, 1)
    assert shift_trading_days(D(2024, 4, 1), -1) == D(2024, 3, 28)
    assert shift_trading_days(D(2024, 3, 30), 1) == D(2024, 4, 1)  # from a Saturday
    assert shift_trading_days(D(2024, 3, 30), -1) == D(2024, 3, 28)
    assert shift_trading_days(D(2024, 4, 3), 0) == D(2024, 4, 3)
    assert shift_trading_days(D(2024, 1, 2), 252) == trading_days(D(2024, 1, 2), D(2025, 2, 1))[252]


def test_the_exchange_comes_from_the_price_configuration():
    assert calendar_for("US") == "XNYS" and calendar_for("lse") == "XLON"
    assert calendar_for("US", "XTKS") == "XTKS"  # prices.calendar, when set, wins
    # London's August bank holiday: New York trades, London does not
    assert is_trading_day(D(2024, 8, 26)) and not is_trading_day(D(2024, 8, 26), "XLON")
    assert not is_trading_day(D(2024, 7, 4), "XNYS") and is_trading_day(D(2024, 7, 4), "XLON")
    for code, name in EODHD_EXCHANGES.items():
        assert get_calendar(name).sessions, code
    with pytest.raises(
        ConfigError, match=r"'USA' has no known trading calendar \(did you mean 'US'"
    ):
        calendar_for("USA")
    with pytest.raises(
        ConfigError, match=r"unknown exchange calendar 'NYSX' \(did you mean 'XNYS'"
    ):
        get_calendar("NYSX")
    with pytest.raises(ConfigError, match="outside the XNYS calendar"):
        is_trading_day(D(1980, 1, 2))


def test_the_embargo_counts_the_configured_exchanges_sessions():
    from charlie import dataset as core

    spec = core.SplitSpec(D(2024, 1, 2), D(2024, 8, 30), 30, D(2024, 9, 2), embargo_days=3)
    london = core.SplitSpec(**{**spec.__dict__, "calendar": "XLON"})
    # three New York sessions before 2024-09-02 (Labor Day) start on 2024-08-28; in London,
    # where 2024-09-02 trades and 2024-08-26 does not, they start on 2024-08-28 as well, but
    # six sessions back differ by the bank holiday
    assert spec.shift(D(2024, 9, 2), -6) == D(2024, 8, 23)
    assert london.shift(D(2024, 9, 2), -6) == D(2024, 8, 22)
    assert core.assign_split(D(2024, 8, 28), spec) == "embargo"
    assert spec.as_dict()["calendar"] == "XNYS" and london.as_dict()["calendar"] == "XLON"
