"""The tear sheet's tables, against hand-computed values on tiny books."""

import math

import pandas as pd
import pytest

from charlie.backtest import tearsheet


def daily(returns: list[float], start: str = "2025-01-02") -> pd.DataFrame:
    dates = pd.bdate_range(start, periods=len(returns))
    equity = 100.0 * pd.Series(returns).add(1.0).cumprod()
    return pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "equity": equity, "returns": returns,
                         "turnover": 0.1, "gross_exposure": 0.5, "net_exposure": 0.5})  # fmt: skip


def test_period_returns_compound_within_the_period():
    book = daily([0.01] * 21 + [-0.01] * 5)  # 2025-01-02 .. 2025-02-06 (Jan 31: the first -1%)
    months = tearsheet.monthly_returns(book)
    assert months.loc[2025, 1] == pytest.approx(1.01**21 * 0.99 - 1)
    assert months.loc[2025, 2] == pytest.approx(0.99**4 - 1)  # Feb 3..6
    assert math.isnan(months.loc[2025, 3])
    weeks = tearsheet.weekly_returns(book)
    assert weeks.loc["2025-01", 1] == pytest.approx(1.01**2 - 1)  # Thu 2, Fri 3 January
    assert weeks.loc["2025-02", 2] == pytest.approx(0.99**4 - 1)  # Mon 3 .. Thu 6 February


def test_rolling_risk_is_annualised_and_waits_for_a_full_window():
    book = daily([0.01, -0.01] * 20)
    risk = tearsheet.rolling_risk(book, window=4)
    assert risk["sharpe"].iloc[:3].isna().all()
    assert risk["volatility"].iloc[3] == pytest.approx(
        pd.Series([0.01, -0.01] * 2).std() * 252**0.5
    )
    assert risk["sharpe"].iloc[3] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(tearsheet.rolling_risk(daily([0.0] * 30), 21)["sharpe"].iloc[-1])  # flat
    assert tearsheet.rolling_window(77) == 21 and tearsheet.rolling_window(300) == 63


def test_drawdowns_from_peak_to_trough_to_recovery():
    # 100 -> 110 (peak) -> 99 (trough, -10%) -> 111 (recovered) -> 105 (under water at the end)
    book = daily([0.0, 0.10, -0.05, -0.0526315789, 0.1212121212, -0.0540540541])
    worst, second = tearsheet.drawdown_periods(book)
    assert (worst["start"], worst["trough"], worst["recovery"]) == ("2025-01-03", "2025-01-07",
                                                                    "2025-01-08")  # fmt: skip
    assert worst["depth"] == pytest.approx(-0.10, abs=1e-6) and worst["days"] == 3
    assert second["recovery"] is None and second["start"] == "2025-01-08"
    assert tearsheet.drawdown_periods(daily([0.01] * 5)) == []


def test_round_trips_are_flat_to_flat_with_their_cash_and_sessions():
    trade = lambda day, side, shares, price, after: {  # noqa: E731
        "date": day, "ticker": "AAA", "side": side, "shares": shares if side == "BUY" else -shares,
        "notional": shares * price, "commission": 1.0, "position_after": after}  # fmt: skip
    trades = pd.DataFrame([
        trade("2025-01-02", "BUY", 10, 100.0, 10),
        trade("2025-01-06", "SELL", 4, 110.0, 6),   # trimmed: same trip
        trade("2025-01-08", "SELL", 6, 90.0, 0),    # flat: the trip closes
        trade("2025-01-09", "BUY", 5, 100.0, 5),    # still open at the end
    ])  # fmt: skip
    dates = daily([0.0] * 6)["date"]  # 2025-01-02 .. 2025-01-09, business days
    trips, still_open = tearsheet.round_trips(trades, dates)
    assert still_open == 1 and len(trips) == 1
    trip = trips.iloc[0]
    assert trip["pnl"] == pytest.approx(-1000 + 440 + 540 - 3)  # three fills' commissions
    assert trip["days"] == 4 and trip["side"] == "long"  # Jan 2 -> Jan 8: 4 sessions
    assert trip["return"] == pytest.approx(-23 / 1000)
    stats = tearsheet.trade_statistics(trips, still_open, daily([0.0] * 6))
    assert stats["round_trips"] == 1 and stats["win_rate"] == 0.0 and stats["open_at_end"] == 1
    assert math.isnan(stats["payoff_ratio"]) and stats["profit_factor"] == 0.0
    assert stats["annual_turnover"] == pytest.approx(0.1 * 252)


def test_a_flip_from_long_to_short_closes_one_trip_and_opens_another():
    trades = pd.DataFrame([
        {"date": "2025-01-02", "ticker": "AAA", "side": "BUY", "shares": 10, "notional": 1000.0,
         "commission": 0.0, "position_after": 10},
        {"date": "2025-01-03", "ticker": "AAA", "side": "SELL", "shares": -15, "notional": 1650.0,
         "commission": 0.0, "position_after": -5},
        {"date": "2025-01-06", "ticker": "AAA", "side": "BUY", "shares": 5, "notional": 500.0,
         "commission": 0.0, "position_after": 0},
    ])  # fmt: skip
    trips, still_open = tearsheet.round_trips(trades, daily([0.0] * 3)["date"])
    assert still_open == 0 and list(trips["side"]) == ["long", "short"]
    assert list(trips["pnl"]) == pytest.approx([100.0, 50.0])  # sold 10 at 110; covered 5 at 100
