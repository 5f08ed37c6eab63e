"""The backtest: metrics against hand-computed values, the engine's execution rules, the
pandas layer's edge cases, and `charlie backtest` on the bundled sample."""

import csv
import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import charlie.cli
from charlie.backtest import engine
from charlie.backtest import metrics as m
from charlie.backtest.config import BacktestConfig
from charlie.backtest.core import DAILY_COLUMNS, exposure_matched, headline, run_backtest
from charlie.backtest.panel import prepare_predictions
from charlie.backtest.report import output_paths, write_outputs
from charlie.config import load_config
from charlie.errors import CharlieError, ConfigError
from charlie.parsing import parse_files

from .conftest import REPO, SAMPLES

EVAL_COLUMNS = ["uid", "ticker", "as_of_date", "true_action", "pred_action", "correct",
                "truncated", "fwd_ret_1", "fwd_ret_5", "fwd_ret_10", "fwd_ret_30"]  # fmt: skip
FREE = {"transaction_cost_bps": 0, "slippage_bps": 0}


# ---------------------------------------------------------------- metrics


def test_metrics_match_hand_computed_values_on_a_tiny_series():
    r = [0.01, -0.02, 0.03]
    growth = 1.01 * 0.98 * 1.03  # 1.019494
    mean, sd = sum(r) / 3, statistics.stdev(r)  # sample std, ddof=1
    downside = math.sqrt((0 + 0.02**2 + 0) / 3) * math.sqrt(252)  # over all 3 observations
    assert m.total_return(r) == pytest.approx(0.019494, abs=1e-12)
    assert m.cagr(r) == pytest.approx(growth ** (252 / 3) - 1, rel=1e-12)
    assert m.annual_volatility(r) == pytest.approx(sd * math.sqrt(252), rel=1e-12)
    assert m.sharpe_ratio(r) == pytest.approx(mean / sd * math.sqrt(252), rel=1e-12)
    assert m.sharpe_ratio(r) == pytest.approx(4.2052, abs=1e-4)
    assert m.downside_deviation(r) == pytest.approx(downside, rel=1e-12)
    assert m.sortino_ratio(r) == pytest.approx(mean * 252 / downside, rel=1e-12)
    assert m.sortino_ratio(r) == pytest.approx(9.1652, abs=1e-4)
    assert m.max_drawdown(r) == pytest.approx(0.98 - 1)  # 1.01 -> 0.9898
    assert m.calmar_ratio(r) == pytest.approx((growth ** (252 / 3) - 1) / 0.02, rel=1e-12)
    rf = 0.001
    excess = [x - rf for x in r]
    assert m.sharpe_ratio(r, risk_free=rf) == pytest.approx(
        statistics.mean(excess) / statistics.stdev(excess) * math.sqrt(252), rel=1e-12
    )


def test_drawdown_is_measured_from_the_initial_equity():
    assert m.max_drawdown([-0.1, 0.2]) == pytest.approx(-0.1)  # the first day is a drawdown
    assert m.max_drawdown([0.1, -0.5, 0.2]) == pytest.approx(-0.5)
    assert m.max_drawdown([0.01, 0.02]) == 0.0
    np.testing.assert_allclose(m.drawdown([-0.1, 0.2, -0.5]), [-0.1, 0.0, -0.5])


def test_undefined_metrics_are_nan_not_exceptions():
    flat = m.summary([0.0, 0.0, 0.0])
    assert math.isnan(flat["sharpe"]) and math.isnan(flat["sortino"])
    assert math.isnan(flat["calmar"])
    assert flat["annual_volatility"] == 0.0 and flat["max_drawdown"] == 0.0
    assert flat["total_return"] == 0.0 and math.isnan(flat["cagr"])  # under a year
    assert m.summary([0.0, 0.0, 0.0], full_year_only=False)["cagr"] == 0.0
    constant = m.summary([0.01] * 5)  # zero variance but not zero
    assert math.isnan(constant["sharpe"]) and math.isnan(constant["sortino"])
    assert math.isnan(m.sortino_ratio([0.01, 0.02]))  # no downside (empyrical: inf)
    one = m.summary([0.05])
    assert one["total_return"] == pytest.approx(0.05)
    assert math.isnan(one["cagr"])  # one day is not a year
    assert m.summary([0.05], full_year_only=False)["cagr"] == pytest.approx(1.05**252 - 1)
    assert all(math.isnan(one[k]) for k in ("annual_volatility", "sharpe", "sortino", "calmar"))
    empty = m.summary([])
    assert all(math.isnan(empty[k]) for k in ("total_return", "cagr", "sharpe", "max_drawdown"))
    assert m.cagr([-1.0, 0.5]) == -1.0  # wiped out


def test_metrics_validate_their_input():
    with pytest.raises(ValueError, match="finite"):
        m.sharpe_ratio([0.01, float("nan")])
    with pytest.raises(ValueError, match="one-dimensional"):
        m.total_return([[0.01], [0.02]])
    with pytest.raises(ValueError, match="below -1"):
        m.max_drawdown([-1.5])


# ---------------------------------------------------------------- engine


def flat_prices(rows: int, cols: int, price: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    return np.full((rows, cols), price), np.full((rows, cols), price)


def test_a_decision_fills_at_the_next_open_with_slippage_and_commission():
    open_ = np.array([[100.0], [102.0], [103.0]])
    close = np.array([[100.0], [104.0], [101.0]])
    weights = np.array([[0.02], [0.0], [0.0]])  # BUY at the first close, flat at the second
    sim = engine.simulate(open_, close, weights, initial_cash=1e6, commission_bps=5,
                          slippage_bps=10)  # fmt: skip
    assert sim.traded[0, 0] == 0 and sim.equity[0] == 1e6  # nothing fills on the decision day
    shares = 0.02 * 1e6 / 102.0  # sized at the fill's reference price (the open)
    buy = 102.0 * (1 + 10e-4)
    fee = shares * buy * 5e-4
    assert sim.traded[1, 0] == pytest.approx(shares)
    assert sim.fill_price[1, 0] == pytest.approx(buy)
    assert sim.commission[1, 0] == pytest.approx(fee)
    assert sim.slippage[1, 0] == pytest.approx(shares * 102.0 * 10e-4)
    cash = 1e6 - shares * buy - fee
    assert sim.cash[1] == pytest.approx(cash)
    assert sim.equity[1] == pytest.approx(cash + shares * 104.0)  # marked at the close
    sell = 103.0 * (1 - 10e-4)
    assert sim.traded[2, 0] == pytest.approx(-shares)
    assert sim.fill_price[2, 0] == pytest.approx(sell)
    assert sim.equity[2] == pytest.approx(cash + shares * sell * (1 - 5e-4))
    assert sim.positions[2, 0] == pytest.approx(0.0)


def test_fixed_pct_and_equal_weight_sizing():
    assert engine.unit_weight("fixed_pct", 50, fixed_pct_value=0.02) == 0.02
    assert engine.unit_weight("equal_weight", 4, max_units=2) == 1 / 8
    units = np.array([[2.0, 1.0, 0.0, 2.0], [2.0, 1.0, 0.0, 2.0]])
    open_, close = flat_prices(2, 4)
    sim = engine.simulate(open_, close, units * 0.02, initial_cash=1e6)
    np.testing.assert_allclose(sim.positions[1] * 100 / 1e6, [0.04, 0.02, 0.0, 0.04])
    all_in = np.full((2, 4), 2.0) * engine.unit_weight("equal_weight", 4, max_units=2)
    sim = engine.simulate(open_, close, all_in, initial_cash=1e6)
    gross, _ = engine.exposures(sim)
    assert gross[1] == pytest.approx(1.0) and sim.cash[1] == pytest.approx(0.0, abs=1e-6)


def test_hold_keeps_the_target_and_the_book_is_rebalanced_to_it_daily():
    decisions = np.array([[1.0], [np.nan], [np.nan], [0.0], [np.nan]])
    targets = engine.hold_forward(decisions)
    np.testing.assert_array_equal(targets[:, 0], [1, 1, 1, 0, 0])
    assert engine.hold_forward(np.array([[np.nan], [2.0]]))[0, 0] == 0.0  # starts flat
    open_ = close = np.array([[100.0], [100.0], [120.0], [120.0], [120.0]])
    sim = engine.simulate(open_, close, targets * 0.5, initial_cash=1000.0)
    value = sim.positions * sim.mark
    # Weight back to 50 % at each open: after the price jump some shares are sold.
    assert value[1, 0] / sim.equity[1] == pytest.approx(0.5)
    assert sim.traded[2, 0] < 0 and value[2, 0] / sim.equity[2] == pytest.approx(0.5)
    assert sim.positions[4, 0] == pytest.approx(0.0)


def test_missing_prices_mean_no_fill_and_a_mark_at_the_last_close():
    nan = np.nan
    open_ = np.array([[10.0, 20.0], [nan, nan], [nan, 22.0], [12.0, 24.0]])
    close = np.array([[10.0, 20.0], [nan, 21.0], [11.0, 23.0], [13.0, 25.0]])
    weights = np.full((4, 2), 0.25)
    sim = engine.simulate(open_, close, weights, initial_cash=1000.0)
    # Ticker 0 has no price on row 1: no fill; it fills on row 2 at the close (no open).
    assert sim.traded[1, 0] == 0 and np.isnan(sim.fill_price[1, 0])
    assert sim.fill_price[2, 0] == 11.0
    # Ticker 1 has a close but no open on row 1: it fills at that close.
    assert sim.fill_price[1, 1] == 21.0
    # A held position is marked at the last known close on a day without one.
    hold = engine.simulate(open_[[0, 3, 1]], close[[0, 3, 1]], weights[:3], initial_cash=1000.0)
    assert hold.mark[2, 0] == 13.0
    assert hold.equity[2] == pytest.approx(hold.cash[2] + hold.positions[2] @ [13.0, 21.0])


def test_a_single_day_fills_nothing():
    sim = engine.simulate(np.array([[10.0]]), np.array([[10.0]]), np.array([[1.0]]),
                          initial_cash=5.0)  # fmt: skip
    assert sim.equity.tolist() == [5.0] and not sim.traded.any()


def test_look_ahead_canary_earns_nothing_once_lagged():
    # Every move happens overnight (open == close), so a weight that knows the next day's
    # close-to-close return knows a move that is over before the next open, where it fills.
    rng = np.random.default_rng(11)
    rows, cols = 1500, 30
    prices = 100 * np.cumprod(1 + rng.normal(0, 0.01, (rows, cols)), axis=0)
    next_return = np.vstack([prices[1:] / prices[:-1] - 1, np.zeros((1, cols))])
    peek = np.sign(next_return) / cols
    canary = engine.simulate(prices, prices, peek, initial_cash=1e6)
    returns = canary.equity[1:] / canary.equity[:-1] - 1
    assert abs(m.sharpe_ratio(returns)) < 2.0  # pure noise: its standard error is ~0.4 here
    # The test has power: a weight that knows the return the engine does expose it to wins.
    cheat = np.vstack([peek[1:], np.zeros((1, cols))])
    cheat_sim = engine.simulate(prices, prices, cheat, initial_cash=1e6)
    assert m.sharpe_ratio(cheat_sim.equity[1:] / cheat_sim.equity[:-1] - 1) > 20


def test_perturbing_prices_after_a_date_leaves_that_dates_trades_unchanged():
    rng = np.random.default_rng(3)
    rows, cols, day = 60, 8, 30
    close = 50 * np.cumprod(1 + rng.normal(0, 0.02, (rows, cols)), axis=0)
    open_ = close * (1 + rng.normal(0, 0.005, (rows, cols)))
    open_[rng.random((rows, cols)) < 0.05] = np.nan
    weights = rng.choice([0.0, 0.02, 0.04, -0.02], (rows, cols))
    costs = {"initial_cash": 1e6, "commission_bps": 5, "slippage_bps": 10}
    base = engine.simulate(open_, close, weights, **costs)
    later_open, later_close, later_w = open_.copy(), close.copy(), weights.copy()
    later_open[day + 1 :] *= rng.uniform(0.5, 1.5, (rows - day - 1, cols))
    later_close[day + 1 :] *= rng.uniform(0.5, 1.5, (rows - day - 1, cols))
    later_close[day + 1 :: 3, 0] = np.nan
    later_w[day:] = rng.choice([0.0, 0.05], (rows - day, cols))  # decisions at day fill later
    moved = engine.simulate(later_open, later_close, later_w, **costs)
    keep = slice(0, day + 1)
    np.testing.assert_array_equal(moved.traded[keep], base.traded[keep])
    np.testing.assert_array_equal(moved.fill_price[keep], base.fill_price[keep])
    np.testing.assert_array_equal(moved.equity[keep], base.equity[keep])
    assert not np.array_equal(moved.traded[day + 1 :], base.traded[day + 1 :])


def test_total_costs_are_the_sum_over_fills_of_notional_times_bps():
    rng = np.random.default_rng(5)
    close = 20 * np.cumprod(1 + rng.normal(0, 0.02, (40, 5)), axis=0)
    open_ = close * 1.001
    weights = rng.choice([0.0, 0.1, 0.2], (40, 5))
    sim = engine.simulate(open_, close, weights, initial_cash=1e5, commission_bps=7)
    filled = sim.traded != 0
    notional = np.abs(sim.traded[filled] * sim.fill_price[filled])
    assert sim.costs.sum() == pytest.approx(notional.sum() * 7e-4, rel=1e-12)
    sim = engine.simulate(open_, close, weights, initial_cash=1e5, commission_bps=7,
                          slippage_bps=12)  # fmt: skip
    filled = sim.traded != 0
    at_fill = np.abs(sim.traded[filled] * sim.fill_price[filled])
    at_ref = np.abs(sim.traded[filled] * sim.reference_price[filled])
    assert sim.commission.sum() == pytest.approx(at_fill.sum() * 7e-4, rel=1e-12)
    assert sim.slippage.sum() == pytest.approx(at_ref.sum() * 12e-4, rel=1e-12)
    assert sim.costs.sum() == pytest.approx(sim.commission.sum() + sim.slippage.sum())


def test_first_fill_mask_makes_buy_and_hold():
    nan = np.nan
    open_ = np.array([[10.0, nan], [11.0, nan], [12.0, 30.0], [13.0, 31.0]])
    close = open_ + 0.5
    mask = engine.first_fill_mask(open_, close)
    assert mask.tolist() == [[True, False], [False, True], [False, False], [False, False]]
    sim = engine.simulate(open_, close, np.full((4, 2), 0.5), initial_cash=1000.0,
                          rebalance=mask)  # fmt: skip
    assert np.count_nonzero(sim.traded) == 2
    assert sim.positions[3, 0] == pytest.approx(500 / 11.0)  # bought once, then held


# ---------------------------------------------------------------- the pandas layer


def bars(dates: list[str], opens: list[float], closes: list[float] | None = None) -> pd.DataFrame:
    closes = opens if closes is None else closes
    return pd.DataFrame(
        {
            "date": pd.to_datetime(dates), "open": opens, "high": closes, "low": closes,
            "close": closes, "adj_close": closes, "volume": 1000.0,
        }
    )  # fmt: skip


def predictions(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["ticker", "as_of_date", "pred_action"])
    return prepare_predictions(frame)


DAYS = ["2025-01-06", "2025-01-07", "2025-01-08", "2025-01-09", "2025-01-10"]


def test_every_prediction_hold_trades_nothing_and_has_defined_results(tmp_path):
    frames = {"AAA": bars(DAYS, [10, 11, 12, 11, 13]), "BBB": bars(DAYS, [5, 5, 6, 7, 6])}
    preds = predictions([(t, d, a) for d in DAYS[:4] for t, a in (("AAA", "HOLD"),
                         ("BBB", "UNPARSEABLE"))])  # fmt: skip
    result = run_backtest(preds, frames, BacktestConfig())
    s = result.metrics["strategy"]
    assert result.trades.empty and s["n_trades"] == 0
    assert (result.daily["equity"] == 1e6).all() and (result.daily["returns"] == 0).all()
    assert math.isnan(s["sharpe"]) and math.isnan(s["sortino"]) and s["max_drawdown"] == 0
    assert s["turnover"] == 0 and s["exposure"] == 0
    assert result.metrics["benchmark"]["n_trades"] == 2
    assert result.metrics["inputs"]["unparseable"] == 4
    paths = write_outputs(result, tmp_path / "bt" / "hold.csv")
    saved = json.loads(paths["metrics"].read_text())
    assert saved["strategy"]["sharpe"] is None  # NaN is null in JSON
    assert pd.read_csv(paths["trades"]).empty
    assert "n/a" in paths["report"].read_text()


def test_run_backtest_daily_table_trades_and_per_ticker_pnl():
    frames = {"AAA": bars(DAYS, [10, 11, 12, 11, 13], [10.5, 11.5, 11.5, 12, 13]),
              "BBB": bars(DAYS, [5, 5, 6, 7, 6])}  # fmt: skip
    preds = predictions([("AAA", DAYS[0], "STRONG_BUY"), ("BBB", DAYS[0], "BUY"),
                         ("AAA", DAYS[2], "SELL"), ("BBB", DAYS[3], "hold")])  # fmt: skip
    config = BacktestConfig(position_sizing="equal_weight", **FREE)
    result = run_backtest(preds, frames, config)
    daily, trades = result.daily, result.trades
    assert list(daily.columns) == list(DAILY_COLUMNS)
    assert daily["date"].tolist() == DAYS[1:]  # from the first fill to the last decision's fill
    first = trades[trades["date"] == DAYS[1]].set_index("ticker")
    assert (
        first.loc["AAA", "action"] == "STRONG_BUY" and first.loc["AAA", "target_as_of"] == DAYS[0]
    )
    assert first.loc["AAA", "target_weight"] == pytest.approx(0.5)  # 2 / (2 tickers x 2 units)
    assert first.loc["BBB", "target_weight"] == pytest.approx(0.25)
    assert first.loc["AAA", "fill_price"] == 11  # the open
    sold = trades[(trades["ticker"] == "AAA") & (trades["date"] == DAYS[3])]
    assert sold["side"].tolist() == ["SELL"] and sold["position_after"].iloc[0] == 0
    pnl = sum(t["pnl"] for t in result.metrics["per_ticker"])
    assert pnl == pytest.approx(daily["equity"].iloc[-1] - 1e6)
    returns = daily["equity"] / daily["equity"].shift(fill_value=1e6) - 1
    np.testing.assert_allclose(daily["returns"], returns)


def test_missing_prices_mid_period_and_predictions_on_a_holiday():
    frames = {"AAA": bars(["2025-01-03", *DAYS], [9, 10, 11, 12, 11, 13]),
              "BBB": bars([DAYS[0], DAYS[1], DAYS[3], DAYS[4]], [5, 5, 7, 6])}  # fmt: skip
    preds = predictions([("AAA", "2025-01-05", "BUY"), ("BBB", DAYS[1], "BUY"),
                         ("AAA", DAYS[3], "HOLD")])  # fmt: skip
    result = run_backtest(preds, frames, BacktestConfig(**FREE))
    trades = result.trades
    # A Sunday prediction counts at Friday's close, so it fills at Monday's open.
    aaa = trades[trades["ticker"] == "AAA"]
    assert (aaa["date"].iloc[0], aaa["target_as_of"].iloc[0]) == (DAYS[0], "2025-01-03")
    assert aaa["fill_price"].iloc[0] == 10
    # BBB has no bar on the day after its decision: it fills on the next day with one.
    bbb = trades[trades["ticker"] == "BBB"]
    assert bbb["date"].iloc[0] == DAYS[3] and (bbb["action"] == "").all()
    assert result.metrics["inputs"]["missing_prices"] == 1
    assert result.daily["equity"].notna().all()


def test_a_single_day_of_predictions():
    frames = {"AAA": bars(DAYS[:2], [10, 11], [10, 12])}
    result = run_backtest(predictions([("AAA", DAYS[0], "BUY")]), frames,
                          BacktestConfig(**FREE))  # fmt: skip
    assert len(result.daily) == 1 and len(result.trades) == 1
    s = result.metrics["strategy"]
    assert s["total_return"] == pytest.approx(0.02 * (12 / 11 - 1))
    assert math.isnan(s["sharpe"]) and math.isnan(s["annual_volatility"])
    with pytest.raises(CharlieError, match="no trading day after 2025-01-07"):
        run_backtest(predictions([("AAA", DAYS[1], "BUY")]), frames, BacktestConfig())


def test_shorts_only_when_allowed():
    frames = {"AAA": bars(DAYS[:3], [10, 10, 10])}
    preds = predictions([("AAA", DAYS[0], "STRONG_SELL")])
    long_only = run_backtest(preds, frames, BacktestConfig(**FREE))
    assert long_only.trades.empty
    shorts = run_backtest(preds, frames, BacktestConfig(allow_shorts=True, **FREE))
    assert shorts.trades["target_weight"].iloc[0] == pytest.approx(-0.04)
    assert shorts.daily["net_exposure"].iloc[-1] == pytest.approx(-0.04)


def test_prepare_predictions_rejects_what_it_cannot_trade():
    def frame(**row):
        return pd.DataFrame([{"ticker": "AAA", "as_of_date": "2025-01-06", **row}])

    assert prepare_predictions(frame(pred_action=" buy "))["pred_action"][0] == "BUY"
    assert prepare_predictions(frame(pred_action=""))["pred_action"][0] == "UNPARSEABLE"
    with pytest.raises(CharlieError, match=r"line 2 .* lacks a pred_action in STRONG_BUY"):
        prepare_predictions(frame(pred_action="MAYBE"))
    with pytest.raises(CharlieError, match="lacks an as_of_date"):
        prepare_predictions(frame(pred_action="BUY", as_of_date="06/01/2025"))
    with pytest.raises(CharlieError, match="lacks the column"):
        prepare_predictions(pd.DataFrame({"ticker": ["AAA"]}))


def test_a_metric_added_only_in_the_metrics_module_is_in_the_json_and_the_html(
    tmp_path, monkeypatch
):
    def up_days(x: m.MetricInputs) -> float:
        return float((x.returns > 0).mean())

    monkeypatch.setitem(m.METRICS, "up_days", m.Metric(up_days, "pct"))
    frames = {"AAA": bars(DAYS, [10, 11, 12, 11, 13])}
    preds = predictions([("AAA", DAYS[0], "BUY"), ("AAA", DAYS[2], "SELL")])
    result = run_backtest(preds, frames, BacktestConfig(**FREE))
    paths = write_outputs(result, tmp_path / "bt.csv")
    saved = json.loads(paths["metrics"].read_text())
    strategy, benchmark = saved["strategy"]["up_days"], saved["benchmark"]["up_days"]
    matched = saved["benchmark_exposure_matched"]["up_days"]
    returns = result.daily["returns"]
    assert strategy == pytest.approx((returns > 0).mean())
    assert benchmark == pytest.approx((result.benchmark_daily["returns"] > 0).mean())
    assert matched == pytest.approx(
        (exposure_matched(result.daily, result.benchmark_daily) > 0).mean()
    )
    page = paths["report"].read_text()
    row = (
        f'<tr><td title="up_days">up_days</td><td>{strategy:.2%}</td><td>{matched:.2%}</td>'
        f"<td>{strategy - matched:.2%}</td><td>{benchmark:.2%}</td>"
    )
    assert f"{row}<td>{strategy - benchmark:.2%}</td></tr>" in page
    # no label: the key stands in; the registry's order is the table's
    assert page.index('<td title="exposure">') < page.index('<td title="up_days">')


def test_the_report_escapes_every_text_it_shows(tmp_path):
    hostile = "<script>alert('x')</script>"
    preds = predictions([(hostile, DAYS[0], "BUY")])
    ticker = preds["ticker"][0]  # upper-cased, kept as written otherwise
    result = run_backtest(preds, {ticker: bars(DAYS[:3], [10, 11, 12])}, BacktestConfig())
    result.metrics["conventions"]["timing"] = 'Filled at the <b>open</b> & "marked"'
    page = write_outputs(result, tmp_path / "bt.csv")["report"].read_text()
    assert "<script" not in page.lower()
    assert "<td>&lt;SCRIPT&gt;ALERT(&#39;X&#39;)&lt;/SCRIPT&gt;</td>" in page
    assert "Filled at the &lt;b&gt;open&lt;/b&gt; &amp; &#34;marked&#34;" in page
    assert "<b>" not in page
    # The report's own markup is not escaped: tables, the n/a marker, the embedded images.
    assert '<td><span class="na" title="undefined: see the conventions">n/a</span></td>' in page
    assert (
        page.count('src="data:image/png;base64,') == 6
    )  # equity, drawdown, monthly, weekly, rolling, exposure


def test_the_shipped_config_loads_with_the_seed_values():
    config = load_config(REPO / "configs" / "backtest_config.yaml", BacktestConfig)
    assert config == BacktestConfig()
    assert (config.initial_cash, config.transaction_cost_bps, config.slippage_bps) == (1e6, 5, 10)
    assert (config.position_sizing, config.fixed_pct_value) == ("fixed_pct", 0.02)
    assert config.units() == {"STRONG_BUY": 2, "BUY": 1, "HOLD": None, "SELL": 0,
                              "STRONG_SELL": 0}  # fmt: skip
    assert config.cost_sensitivity_bps == [0, 5, 10, 25, 50]


def test_config_errors_are_one_sentence(tmp_path):
    path = tmp_path / "bt.yaml"
    path.write_text("position_sizing: kelly\n")
    with pytest.raises(ConfigError, match="'position_sizing' = 'kelly' is not allowed"):
        load_config(path, BacktestConfig)
    path.write_text("action_units:\n  BUY: 0\n  STRONG_BUY: 0\n")
    with pytest.raises(ConfigError, match="nothing could ever be held"):
        load_config(path, BacktestConfig)


# ---------------------------------------------------------------- the stage


@pytest.fixture
def cli():
    return charlie.cli.main


def write_eval_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, EVAL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def params_file(tmp_path: Path, prices: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(f"prices:\n  file_dir: {prices}\n  cache_dir: {tmp_path / 'cache'}\n")
    return path


def test_demo_sample_shows_the_model_and_the_benchmark_side_by_side(tmp_path, cli, capsys):
    records = parse_files(sorted((SAMPLES / "xml").glob("*.xml"))).records
    test = [r for r in records if "2025-01-01" <= r["as_of_date"] <= "2025-04-24"]
    rows = [{"uid": r["uid"], "ticker": r["ticker"], "as_of_date": r["as_of_date"],
             "true_action": r["action"], "pred_action": r["action"], "correct": True,
             "truncated": False} for r in test]  # fmt: skip
    rows[0].update(pred_action="UNPARSEABLE", truncated=True)
    eval_csv = write_eval_csv(tmp_path / "eval_results.csv", rows)
    out = tmp_path / "backtests" / "baseline.csv"
    args = ["backtest", "--params", str(params_file(tmp_path, SAMPLES / "prices")),
            "--eval-csv", str(eval_csv), "--config", str(REPO / "configs/backtest_config.yaml"),
            "--out", str(out)]  # fmt: skip
    assert cli(args) == 0

    paths = output_paths(out)
    assert all(p.is_file() for p in paths.values())
    assert [p.name for p in paths.values()] == [
        "baseline.csv", "baseline_trades.csv", "baseline_metrics.json", "baseline_headline.json",
        "baseline_equity.png", "baseline_drawdown.png", "baseline_report.html",
    ]  # fmt: skip
    saved = json.loads(paths["metrics"].read_text())
    for side in ("strategy", "benchmark"):
        assert set(saved[side]) == set(m.METRIC_NAMES)
        assert saved[side]["n_trades"] > 0 and saved[side]["sharpe"] is not None
        assert saved[side]["cagr"] is None and saved[side]["calmar"] is None  # 77 days
    assert set(saved["benchmark_exposure_matched"]) == set(m.METRIC_NAMES)
    assert saved["annualisation"]["annualised"] is False and saved["annualisation"]["days"] == 77
    assert all(r["strategy_cagr"] is None for r in saved["cost_sensitivity"])
    # Trades are target changes and drift outside the band, not daily top-ups of a HOLD.
    assert saved["strategy"]["n_trades"] < 0.5 * 6 * 77
    full = saved["versus_full_benchmark"]
    assert full["total_return"] == pytest.approx(
        saved["strategy"]["total_return"] - saved["benchmark"]["total_return"]
    )
    assert saved["strategy_minus_benchmark"]["total_return"] == full["total_return"]
    versus = saved["versus_exposure_matched_benchmark"]
    assert {"beta", "alpha", "alpha_t", "information_ratio", "tracking_error"} <= set(versus)
    matched_exposure = saved["benchmark_exposure_matched"]["exposure"]
    assert matched_exposure == pytest.approx(saved["strategy"]["exposure"], rel=0.1)
    inference = saved["sharpe_inference"]["strategy"]
    assert inference["ci_low"] < saved["strategy"]["sharpe"] < inference["ci_high"]
    assert inference["n_trials"] == 6 == len(saved["sharpe_inference"]["trials"])
    assert 0 <= inference["deflated_sharpe"] <= 1
    assert 0 <= inference["probabilistic_sharpe_vs_benchmark"] <= 1
    assert saved["inputs"]["predictions"] == len(test)
    assert saved["inputs"]["unparseable"] == 1 and saved["inputs"]["forced"] is False
    assert saved["inputs"]["parse_rate"] == pytest.approx(1 - 1 / len(test))
    assert set(saved["inputs"]["tickers"]) == set(json.loads((SAMPLES / "manifest.json")
                                                               .read_text())["tickers"])  # fmt: skip
    assert [r["commission_bps"] for r in saved["cost_sensitivity"]] == [0, 0, 5, 10, 25, 50]
    returns = [r["strategy_total_return"] for r in saved["cost_sensitivity"][1:]]
    assert returns == sorted(returns, reverse=True)  # more costs, less return
    assert {"timing", "sizing", "metrics", "benchmark"} <= set(saved["conventions"])

    daily = pd.read_csv(paths["daily"])
    assert list(daily.columns) == list(DAILY_COLUMNS)
    assert daily["date"].iloc[0] == "2025-01-03" and daily["date"].iloc[-1] == "2025-04-25"
    trades = pd.read_csv(paths["trades"])
    assert daily["costs"].sum() == pytest.approx((trades["commission"] + trades["slippage"]).sum())
    assert paths["equity_png"].read_bytes().startswith(b"\x89PNG")

    page = paths["report"].read_text()
    # equity, drawdown, monthly and (77 days: a short test) weekly returns, rolling risk, exposure
    assert page.count("data:image/png;base64,") == 6 and "<script" not in page
    for name, metric in m.METRICS.items():
        assert metric.label and f'<td title="{name}">{metric.label}</td>' in page  # for people
    strategy_sharpe = f"{saved['strategy']['sharpe']:.3f}"
    benchmark_sharpe = f"{saved['benchmark']['sharpe']:.3f}"
    matched_sharpe = f"{saved['benchmark_exposure_matched']['sharpe']:.3f}"
    assert (f'<td title="sharpe">Sharpe ratio</td><td>{strategy_sharpe}</td>'
            f"<td>{matched_sharpe}</td>") in page  # fmt: skip
    for section in ("Returns by period", "Weekly returns heatmap", "Worst drawdowns",
                    "Profit factor", "Average holding period", "Rolling Sharpe"):  # fmt: skip
        assert section in page, section
    headline = json.loads(paths["headline"].read_text())
    assert headline["sharpe"] == saved["strategy"]["sharpe"] and " " not in "".join(headline)
    assert f"<td>{benchmark_sharpe}</td>" in page
    assert page.count("n/a (under a year)</span>") >= 6  # CAGR and Calmar, every benchmark
    assert "Deflated Sharpe ratio over 6 trials" in page
    assert "<th>excess return</th>" not in page
    assert "Cost sensitivity" in page and "UNPARSEABLE" in page and "Forced run" not in page
    err = capsys.readouterr().err
    table = {line.split()[0]: line.split()[1:] for line in err.splitlines()
             if line.split()[:1] in (["strategy"], ["matched"], ["benchmark"])}  # fmt: skip
    assert set(table) == {"strategy", "matched", "benchmark"} and "nan" not in err
    strategy = saved["strategy"]
    assert table["strategy"] == [f"{strategy['total_return']:.2%}", "n/a",
                                 f"{strategy['sharpe']:.2f}", f"{strategy['max_drawdown']:.2%}",
                                 str(strategy["n_trades"])]  # fmt: skip
    assert len(table["matched"]) == 4  # a scaled series trades nothing: no trade count


@pytest.mark.parametrize(
    ("content", "config", "message"),
    [
        (None, None, "eval CSV .* does not exist; run `charlie evaluate` first."),
        ("", None, "eval CSV .* is empty."),
        (",".join(EVAL_COLUMNS) + "\n", None, "holds no prediction."),
        ("ticker,as_of_date\nAAA,2025-01-06\n", None, "lacks the column\\(s\\) pred_action"),
        ("ticker,as_of_date,pred_action\nAAA,2025-01-06,BUY\n", "sizing: all\n",
         "unknown key 'sizing'; allowed keys here are: initial_cash"),
        ("ticker,as_of_date,pred_action\nZZZ,2025-01-06,BUY\n", None, "no price data for ZZZ"),
    ],
)  # fmt: skip
def test_user_errors_end_in_one_sentence(tmp_path, cli, capsys, content, config, message):
    eval_csv = tmp_path / "eval.csv"
    if content is not None:
        eval_csv.write_text(content)
    config_path = REPO / "configs" / "backtest_config.yaml"
    if config is not None:
        config_path = tmp_path / "bt.yaml"
        config_path.write_text(config)
    out = tmp_path / "bt" / "x.csv"
    args = ["backtest", "--params", str(params_file(tmp_path, SAMPLES / "prices")),
            "--eval-csv", str(eval_csv), "--config", str(config_path), "--out", str(out)]  # fmt: skip
    assert cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("charlie backtest: error: ")
    assert re.search(message, err), err
    assert not out.exists()


def gated_eval_csv(tmp_path: Path, parsed: int, rows: int = 8) -> Path:
    """An eval CSV whose first ``parsed`` rows have an action; the rest ran out of budget."""
    days = pd.bdate_range("2025-01-06", periods=rows).strftime("%Y-%m-%d")
    return write_eval_csv(tmp_path / "eval_results.csv", [
        {"uid": f"ACME-{d}", "ticker": "ACME", "as_of_date": d, "true_action": "BUY",
         "pred_action": "BUY" if i < parsed else "UNPARSEABLE", "correct": i < parsed,
         "truncated": i >= parsed} for i, d in enumerate(days)
    ])  # fmt: skip


def backtest_args(tmp_path: Path, eval_csv: Path, *extra: str) -> list[str]:
    return ["backtest", "--params", str(params_file(tmp_path, SAMPLES / "prices")),
            "--eval-csv", str(eval_csv), "--config", str(REPO / "configs/backtest_config.yaml"),
            "--out", str(tmp_path / "bt" / "x.csv"), *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("parsed", "flags", "message"),
    [
        (0, [], r"eval CSV .*eval_results.csv has no parseable action \(8 of 8 predictions are "
                r"UNPARSEABLE, 8 of them truncated by the generation budget\), so a backtest "
                r"would trade nothing; fix the evaluation \(see its eval_metrics.json\) or lower "
                r"min_parse_rate, or pass --force to backtest them anyway.$"),
        (3, [], r"has a parse rate of 0.375, below min_parse_rate 0.5 \(5 of 8 predictions are "
                r"UNPARSEABLE, 5 of them truncated by the generation budget\); fix the"),
        (7, ["--min-parse-rate", "0.9"], r"has a parse rate of 0.875, below min_parse_rate 0.9 "),
        (0, ["--min-parse-rate", "0"], r"has no parseable action"),  # never worth a backtest
    ],
)  # fmt: skip
def test_predictions_without_enough_actions_are_refused(tmp_path, cli, capsys, parsed, flags,
                                                        message):  # fmt: skip
    args = backtest_args(tmp_path, gated_eval_csv(tmp_path, parsed), *flags)
    assert cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("charlie backtest: error: eval CSV ")
    assert re.search(message, err), err
    assert not (tmp_path / "bt").exists()


def test_enough_actions_pass_the_gate(tmp_path, cli):
    assert cli(backtest_args(tmp_path, gated_eval_csv(tmp_path, 4))) == 0  # 0.5: at the gate
    saved = json.loads((tmp_path / "bt" / "x_metrics.json").read_text())
    assert saved["inputs"]["forced"] is False and saved["inputs"]["parse_rate"] == 0.5


def test_force_backtests_them_anyway_and_says_so(tmp_path, cli, capsys):
    assert cli(backtest_args(tmp_path, gated_eval_csv(tmp_path, 0), "--force")) == 0
    err = capsys.readouterr().err
    assert re.search(r"--force: backtesting anyway, though the eval CSV .* has no "
                     r"parseable action \(8 of 8", err), err  # fmt: skip
    paths = output_paths(tmp_path / "bt" / "x.csv")
    saved = json.loads(paths["metrics"].read_text())
    assert saved["inputs"]["forced"] is True and saved["inputs"]["parse_rate"] == 0.0
    assert saved["strategy"]["n_trades"] == 0
    page = paths["report"].read_text()
    assert "Forced run:" in page and "parse rate 0.000, min_parse_rate 0.5" in page
    # A CSV without the truncated column (an older evaluate) is judged on its actions alone.
    plain = tmp_path / "plain.csv"
    plain.write_text("ticker,as_of_date,pred_action\nACME,2025-01-06,UNPARSEABLE\n")
    assert cli(backtest_args(tmp_path, plain)) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "(1 of 1 predictions are UNPARSEABLE), so a backtest would trade nothing; fix the "
            "evaluation (see its eval_metrics.json) or lower min_parse_rate, or pass --force to "
            "backtest them anyway."
        )
    )


def test_the_gate_counts_truncated_rows_when_the_csv_has_them():
    from charlie.backtest.panel import parse_rate_problem

    preds = predictions([("AAA", DAYS[0], "BUY"), ("AAA", DAYS[1], "UNPARSEABLE")])
    assert parse_rate_problem(preds, 0.5, "x") is None
    assert parse_rate_problem(preds, 0.6, "x", pd.Series(["False", "True"])) == (
        "x has a parse rate of 0.500, below min_parse_rate 0.6 (1 of 2 predictions are "
        "UNPARSEABLE, 1 of them truncated by the generation budget)"
    )


# ---------------------------------------------------------------- rebalancing band


def test_a_hold_keeps_its_shares_inside_the_rebalance_band_and_trades_outside_it():
    prices = np.array([[100.0], [100.0], [101.0], [120.0], [120.0]])
    targets = engine.hold_forward(np.array([[0.5], [np.nan], [np.nan], [np.nan], [np.nan]]))
    banded = engine.simulate(prices, prices, targets, initial_cash=1000.0, rebalance_band=0.05)
    # Row 1 buys (the target changed from flat); at 101 the weight is 0.5025, inside
    # 0.5 +- 5 % of 0.5, so nothing trades; at 120 it is 0.545, outside: back to 0.5.
    assert np.flatnonzero(banded.traded[:, 0]).tolist() == [1, 3]
    value = banded.positions * banded.mark
    assert value[3, 0] / banded.equity[3] == pytest.approx(0.5)
    daily = engine.simulate(prices, prices, targets, initial_cash=1000.0)  # no band: every day
    assert np.flatnonzero(daily.traded[:, 0]).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="rebalance_band must be a finite number >= 0"):
        engine.simulate(prices, prices, targets, initial_cash=1.0, rebalance_band=-0.1)


def test_a_changed_target_is_traded_whatever_the_band_and_retried_without_a_price():
    nan = np.nan
    open_ = close = np.array([[100.0], [100.0], [nan], [100.0], [100.0]])
    targets = np.array([[0.5], [0.49], [0.49], [0.49], [0.49]])  # a 2 % change, inside 5 %
    sim = engine.simulate(open_, close, targets, initial_cash=1000.0, rebalance_band=0.05)
    # 0.5 fills on row 1; 0.49, decided at row 1, has no price on row 2 and fills on row 3.
    assert np.flatnonzero(sim.traded[:, 0]).tolist() == [1, 3]
    assert sim.positions[3, 0] * 100 / sim.equity[3] == pytest.approx(0.49)
    flat = engine.simulate(open_, close, np.array([[0.5], [0.0], [0.0], [0.0], [0.0]]),
                           initial_cash=1000.0, rebalance_band=0.05)  # fmt: skip
    assert flat.positions[3, 0] == 0 and np.count_nonzero(flat.traded) == 2


def test_hold_days_trade_only_outside_the_configured_band(tmp_path):
    frames = {"AAA": bars(DAYS, [10, 11, 11.1, 11.2, 11.3])}
    preds = predictions([("AAA", DAYS[0], "BUY")] + [("AAA", d, "HOLD") for d in DAYS[1:4]])
    banded = run_backtest(preds, frames, BacktestConfig(**FREE))
    assert BacktestConfig().rebalance_band == 0.05
    assert len(banded.trades) == 1 and banded.metrics["strategy"]["n_trades"] == 1
    assert "rebalance_band 0.05" in banded.metrics["conventions"]["rebalancing"]
    daily = run_backtest(preds, frames, BacktestConfig(rebalance_band=None, **FREE))
    assert len(daily.trades) == 4  # the seed's behaviour: a top-up every day
    assert "rebalanced daily" in daily.metrics["conventions"]["rebalancing"]
    page = write_outputs(banded, tmp_path / "bt.csv")["report"].read_text()
    assert "rebalance_band 0.05" in page


def test_a_negative_rebalance_band_is_a_one_sentence_config_error(tmp_path):
    path = tmp_path / "bt.yaml"
    path.write_text("rebalance_band: -0.1\n")
    with pytest.raises(ConfigError, match="rebalance_band"):
        load_config(path, BacktestConfig)
    path.write_text("rebalance_band: null\n")
    assert load_config(path, BacktestConfig).rebalance_band is None


# ---------------------------------------------------------------- short periods


def year_of_bars(days: int, seed: int = 1) -> tuple[pd.DatetimeIndex, pd.DataFrame]:
    dates = pd.bdate_range("2024-01-02", periods=days)
    rng = np.random.default_rng(seed)
    prices = 50 * np.cumprod(1 + rng.normal(0.0005, 0.01, days))
    return dates, bars([f"{d:%Y-%m-%d}" for d in dates], prices.tolist())


def test_cagr_and_calmar_are_reported_from_a_year_on(tmp_path):
    dates, frame = year_of_bars(300)
    rows = [("AAA", f"{dates[0]:%Y-%m-%d}", "BUY"), ("AAA", f"{dates[260]:%Y-%m-%d}", "HOLD")]
    result = run_backtest(predictions(rows), {"AAA": frame}, BacktestConfig(**FREE))
    assert len(result.daily) == 261
    assert result.metrics["annualisation"]["annualised"] is True
    returns = result.daily["returns"]
    assert result.metrics["strategy"]["cagr"] == pytest.approx(m.cagr(returns))
    assert math.isfinite(result.metrics["benchmark"]["calmar"])
    assert result.metrics["cost_sensitivity"][0]["strategy_cagr"] == pytest.approx(m.cagr(returns))
    page = write_outputs(result, tmp_path / "bt.csv")["report"].read_text()
    assert "n/a (under a year)</span>" not in page
    short = run_backtest(predictions([*rows[:1], ("AAA", f"{dates[100]:%Y-%m-%d}", "HOLD")]),
                         {"AAA": frame}, BacktestConfig(**FREE))  # fmt: skip
    note = short.metrics["annualisation"]
    assert note["annualised"] is False and "101 days is under a year" in note["note"]
    assert math.isnan(short.metrics["strategy"]["cagr"])
    assert math.isfinite(short.metrics["strategy"]["sharpe"])  # an annualised rate: kept
    saved = json.loads(write_outputs(short, tmp_path / "s.csv")["metrics"].read_text())
    assert saved["strategy"]["cagr"] is None and saved["benchmark"]["calmar"] is None


# ---------------------------------------------------------------- Sharpe inference


def test_sharpe_standard_error_and_psr_follow_mertens_and_bailey_lopez_de_prado():
    rng = np.random.default_rng(7)
    r = rng.standard_t(5, 400) * 0.01 + 0.0008
    n, mean, sd = r.size, r.mean(), r.std(ddof=1)
    sr = mean / sd
    c = r - mean
    g3 = np.mean(c**3) / np.mean(c**2) ** 1.5
    g4 = np.mean(c**4) / np.mean(c**2) ** 2
    assert m.higher_moments(r) == pytest.approx((g3, g4), rel=1e-12)
    factor = 1 - g3 * sr + (g4 - 1) / 4 * sr**2
    out = m.sharpe_inference(r, benchmark_sharpe=0.5, confidence=0.9)
    error = math.sqrt(factor / (n - 1)) * math.sqrt(252)
    assert out["sharpe"] == pytest.approx(sr * math.sqrt(252), rel=1e-12)
    assert out["standard_error"] == pytest.approx(error, rel=1e-12)
    z = 1.6448536269514722  # the 95th percentile: a two-sided 90 % interval
    assert out["ci_low"] == pytest.approx(out["sharpe"] - z * error, rel=1e-9)
    assert out["ci_high"] == pytest.approx(out["sharpe"] + z * error, rel=1e-9)
    threshold = 0.5 / math.sqrt(252)
    psr = 0.5 * (1 + math.erf((sr - threshold) * math.sqrt(n - 1) / math.sqrt(factor) / 2**0.5))
    assert out["probabilistic_sharpe_vs_benchmark"] == pytest.approx(psr, rel=1e-12)
    assert m.probabilistic_sharpe(r, sr) == pytest.approx(0.5)  # SR* = SR: a coin flip
    assert out["n_trials"] == 0 and math.isnan(out["deflated_sharpe"])  # one configuration
    flat = m.sharpe_inference([0.0] * 5)
    assert math.isnan(flat["standard_error"]) and math.isnan(flat["deflated_sharpe"])


def test_the_deflated_sharpe_ratio_uses_the_expected_maximum_of_the_trials():
    gamma = 0.5772156649015329
    trials = [0.4, 1.0, 1.6, 0.7]
    n, spread = len(trials), statistics.stdev(trials)
    inv = statistics.NormalDist().inv_cdf
    expected = spread * ((1 - gamma) * inv(1 - 1 / n) + gamma * inv(1 - 1 / (n * math.e)))
    assert m.expected_max_sharpe(trials) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(m.expected_max_sharpe([1.0, math.nan]))  # one finite trial
    rng = np.random.default_rng(2)
    r = rng.normal(0.001, 0.01, 300)
    out = m.sharpe_inference(r, trial_sharpes=trials)
    assert out["n_trials"] == 4 and out["expected_max_sharpe"] == pytest.approx(expected)
    assert out["deflated_sharpe"] == pytest.approx(
        m.probabilistic_sharpe(r, expected / math.sqrt(252))
    )
    more = m.sharpe_inference(r, trial_sharpes=[*trials, -1.0, 3.0])  # more spread, more luck
    assert more["deflated_sharpe"] < out["deflated_sharpe"]


# ---------------------------------------------------------------- exposure-matched benchmark


def test_beta_alpha_and_information_ratio_against_hand_computed_ols():
    rng = np.random.default_rng(4)
    x = rng.normal(0.0004, 0.01, 250)
    y = 0.0003 + 0.6 * x + rng.normal(0, 0.002, 250)
    out = m.relative(y, x)
    beta, intercept = np.polyfit(x, y, 1)
    residual = y - intercept - beta * x
    s2 = residual @ residual / (250 - 2)
    error = math.sqrt(s2 * (1 / 250 + x.mean() ** 2 / ((x - x.mean()) @ (x - x.mean()))))
    assert out["beta"] == pytest.approx(beta, rel=1e-9)
    assert out["alpha"] == pytest.approx(intercept * 252, rel=1e-9)
    assert out["alpha_t"] == pytest.approx(intercept / error, rel=1e-9)
    te = np.std(y - x, ddof=1) * math.sqrt(252)
    assert out["tracking_error"] == pytest.approx(te, rel=1e-12)
    assert out["information_ratio"] == pytest.approx((y - x).mean() * 252 / te, rel=1e-12)
    assert math.isnan(m.relative([0.01, 0.02], [0.0, 0.0])["beta"])  # a constant benchmark
    with pytest.raises(ValueError, match="same length"):
        m.relative([0.01, 0.02], [0.01])


def test_the_exposure_matched_benchmark_scales_each_day_by_the_strategys_exposure(tmp_path):
    frames = {"AAA": bars(DAYS, [10, 11, 12, 11, 13]), "BBB": bars(DAYS, [5, 5, 6, 7, 6])}
    preds = predictions([("AAA", DAYS[0], "STRONG_BUY"), ("BBB", DAYS[1], "BUY"),
                         ("AAA", DAYS[2], "SELL"), ("BBB", DAYS[3], "HOLD")])  # fmt: skip
    result = run_backtest(preds, frames, BacktestConfig(**FREE))
    matched = exposure_matched(result.daily, result.benchmark_daily)
    np.testing.assert_allclose(
        matched, result.daily["gross_exposure"] * result.benchmark_daily["returns"]
    )
    metrics_ = result.metrics
    assert metrics_["benchmark_exposure_matched"]["total_return"] == pytest.approx(
        m.total_return(matched)
    )
    versus = metrics_["versus_exposure_matched_benchmark"]
    assert versus["total_return"] == pytest.approx(
        metrics_["strategy"]["total_return"] - m.total_return(matched)
    )
    assert versus["beta"] == pytest.approx(m.relative(result.daily["returns"], matched)["beta"])
    row = metrics_["cost_sensitivity"][0]
    assert row["versus_full_benchmark_total_return"] == row["excess_total_return"]
    assert "exposure_matched_benchmark" in metrics_["conventions"]


def test_the_kfp_headline_carries_the_new_numbers_and_drops_undefined_ones():
    from charlie.kubeflow.executor import scalars

    frames = {"AAA": bars(DAYS, [10, 11, 12, 11, 13]), "BBB": bars(DAYS, [5, 5, 6, 7, 6])}
    preds = predictions([("AAA", DAYS[0], "STRONG_BUY"), ("BBB", DAYS[1], "BUY"),
                         ("AAA", DAYS[2], "SELL")])  # fmt: skip
    result = run_backtest(preds, frames, BacktestConfig())
    flat = scalars(headline(result.metrics))
    s = result.metrics["strategy"]
    assert flat["strategy_total_return"] == s["total_return"]
    assert flat["strategy_n_trades"] == s["n_trades"]
    assert "strategy_cagr" not in flat  # under a year: NaN, dropped
    inference = result.metrics["sharpe_inference"]["strategy"]
    assert flat["sharpe_n_trials"] == inference["n_trials"] == 6
    for key in ("sharpe_ci_low", "sharpe_ci_high", "sharpe_deflated_sharpe",
                "versus_matched_beta", "versus_matched_alpha_t", "matched_total_return"):  # fmt: skip
        assert key in flat and math.isfinite(flat[key])
    assert all(isinstance(v, int | float) for v in flat.values())
