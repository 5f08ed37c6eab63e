import datetime as dt

from charlie.calendar import is_trading_day, nyse_holidays, shift_trading_days, trading_days


def test_the_seeds_period_has_376_trading_days():
    assert len(trading_days(dt.date(2023, 10, 24), dt.date(2025, 4, 24))) == 376


def test_nyse_holidays_2024_match_the_exchange_calendar():
    assert sorted(nyse_holidays(2024)) == [
        dt.date(2024, 1, 1),
        dt.date(2024, 1, 15),
        dt.date(2024, 2, 19),
        dt.date(2024, 3, 29),  # Good Friday
        dt.date(2024, 5, 27),
        dt.date(2024, 6, 19),
        dt.date(2024, 7, 4),
        dt.date(2024, 9, 2),
        dt.date(2024, 11, 28),
        dt.date(2024, 12, 25),
    ]


def test_observed_and_special_closures():
    assert not is_trading_day(dt.date(2023, 1, 2))  # New Year on a Sunday, observed Monday
    assert is_trading_day(dt.date(2021, 12, 31))  # no Friday closure for a Saturday New Year
    assert not is_trading_day(dt.date(2025, 1, 9))  # national day of mourning
    assert not is_trading_day(dt.date(2024, 1, 6))  # Saturday


def test_shift_trading_days_skips_weekends_and_holidays():
    assert shift_trading_days(dt.date(2024, 3, 28), 1) == dt.date(2024, 4, 1)
    assert shift_trading_days(dt.date(2024, 4, 1), -1) == dt.date(2024, 3, 28)
