"""Evaluation: forward returns, metrics against hand-computed values, baselines, the stage."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from charlie import UNPARSEABLE
from charlie.backtest.config import BacktestConfig
from charlie.errors import CharlieError, QualityGateError
from charlie.evaluation import budget, core
from charlie.evaluation import metrics as m
from charlie.evaluation import uncertainty as u
from charlie.evaluation.config import EvalConfig
from charlie.evaluation.report import summary_markdown
from charlie.evaluation.returns import forward_returns, momentum_sign
from charlie.inference import (
    END_OF_TURN,
    STOP_TOKEN,
    chat_prompt,
    extract_prediction,
    generate,
    stop_token_ids,
)
from charlie.strategy import load_strategy, row_units

BARS = pd.DataFrame({
    "date": pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08"]),
    "open": [99.0, 105.0, 120.0, 130.0, 70.0],
    "close": [100.0, 110.0, 121.0, 133.1, 66.55],
    "adj_close": [100.0, 110.0, 121.0, 133.1, 66.55],
})  # fmt: skip


def test_forward_returns_count_trading_days_and_never_use_partial_windows():
    fwd = forward_returns(BARS, ["2024-01-02", "2024-01-06", "2024-01-01"], [1, 3, 4])
    assert fwd[1][0] == pytest.approx(0.10) and fwd[3][0] == pytest.approx(0.331)
    assert fwd[4][0] == pytest.approx(66.55 / 100 - 1)
    assert fwd[1][1] == pytest.approx(66.55 / 133.1 - 1)  # Saturday: from Friday's bar
    assert np.isnan(fwd[3][1])  # runs past the data
    assert np.isnan(fwd[1][2])  # no bar on or before the date


def test_momentum_sign():
    assert momentum_sign(BARS, ["2024-01-05", "2024-01-08", "2024-01-03"], lookback=2).tolist() == [
        1.0,
        -1.0,
        0.0,
    ]


def test_price_window_covers_the_momentum_lookback_and_the_longest_window():
    frame = pd.DataFrame({"ticker": ["AAA", "BBB", "AAA"],
                          "as_of_date": ["2024-03-01", "2024-02-01", "2024-01-15"]})  # fmt: skip
    assert core.price_window(frame, [1, 5]) == {
        "AAA": (dt.date(2024, 1, 15) - dt.timedelta(days=40), dt.date(2024, 3, 21)),
        "BBB": (dt.date(2023, 12, 23), dt.date(2024, 2, 21)),
    }


def test_attach_forward_returns_per_ticker_leaves_the_input_alone():
    frame = pd.DataFrame({"ticker": ["AAA", "BBB", "AAA"],
                          "as_of_date": ["2024-01-02", "2024-01-03", "2024-01-08"]})  # fmt: skip
    other = BARS.assign(adj_close=[50.0, 40.0, 60.0, 30.0, 45.0])
    out, momentum = core.attach_forward_returns(frame, {"AAA": BARS, "BBB": other}, [1, 2])
    assert list(frame.columns) == ["ticker", "as_of_date"]
    assert list(out.columns) == ["ticker", "as_of_date", "fwd_ret_1", "fwd_ret_2", "exec_ret_1",
                                 "exec_ret_2"]  # fmt: skip
    assert out["exec_ret_1"][0] == pytest.approx(110 / 105 - 1)  # the next open to its close
    assert out["exec_ret_2"][1] == pytest.approx(30 / (120 * 60 / 121) - 1)  # adjusted open
    assert out["fwd_ret_1"].tolist()[:2] == [pytest.approx(0.10), pytest.approx(0.5)]
    assert out["fwd_ret_2"][1] == pytest.approx(-0.25) and np.isnan(out["fwd_ret_1"][2])
    assert momentum.tolist() == [0.0, 0.0, 0.0]  # fewer than 20 bars behind every date
    raw, _ = core.attach_forward_returns(frame, {"AAA": BARS, "BBB": other}, [1, 2], "raw")
    assert raw["exec_ret_2"][1] == pytest.approx(other["close"][3] / other["open"][2] - 1)
    assert raw["fwd_ret_2"][1] == out["fwd_ret_2"][1]  # close to close stays adjusted


def test_classification_against_hand_counts():
    truth = ["BUY", "BUY", "SELL", "HOLD"]
    pred = ["BUY", "SELL", "SELL", UNPARSEABLE]
    c = m.classification(truth, pred, [False, False, False, True])
    assert c["accuracy"] == 0.5 and c["parse_rate"] == 0.75 and c["unparseable"] == 1
    assert c["truncated"] == 1 and m.classification(truth, pred)["truncated"] == 0
    assert c["per_class"]["BUY"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    assert c["per_class"]["SELL"]["precision"] == 0.5 and c["per_class"]["SELL"]["recall"] == 1.0
    assert c["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0 + 0 + 0) / 5)
    labels = c["confusion_matrix"]["labels"]
    matrix = c["confusion_matrix"]["matrix"]
    assert matrix[labels.index("HOLD")][labels.index(UNPARSEABLE)] == 1
    assert matrix[labels.index("BUY")][labels.index("SELL")] == 1


def test_financial_signs_holds_and_missing_returns():
    pred = ["BUY", "STRONG_SELL", "HOLD", "SELL", "BUY"]
    ret = np.array([0.02, -0.01, 0.05, 0.03, np.nan])
    f = m.financial(pred, {1: ret})["1d"]
    signed = np.array([0.02, 0.01, -0.03])
    assert f["directional"] == 3 and f["missing_returns"] == 1
    assert f["hit_rate"] == pytest.approx(2 / 3)
    assert f["mean_signed_return"] == pytest.approx(signed.mean())
    assert f["std_signed_return"] == pytest.approx(signed.std(ddof=1))
    assert f["sharpe_like"] == pytest.approx(signed.mean() / signed.std(ddof=1))
    assert f["hold"] == {"count": 1, "mean_fwd_return": 0.05}
    assert f["per_action"]["BUY"] == {"count": 2, "mean_fwd_return": 0.02}


def test_baselines_act_on_the_same_rows():
    truth = ["BUY", "SELL", "HOLD", "BUY"]
    b = m.baselines(truth, ["SELL"] * 4, ["HOLD", "HOLD", "BUY"], np.array([1.0, -1.0, 0.0, 1.0]))
    assert b["majority (HOLD)"] == ["HOLD"] * 4
    assert b["always BUY"] == ["BUY"] * 4 and b["teacher (thesis labels)"] == truth
    assert b["momentum 20d sign"] == ["BUY", "SELL", "HOLD", "BUY"]
    assert "random at the model's frequencies" not in b  # a permutation null, not one draw
    assert all(len(v) == 4 for v in b.values())
    assert m.naive(b) == ["majority (HOLD)", "always BUY", "momentum 20d sign"]


def test_the_strategy_is_the_backtests_mapping_with_hold_flat_per_row():
    assert EvalConfig().strategy_config == Path("configs/backtest_config.yaml")
    assert load_strategy(REPO / "configs/backtest_config.yaml") == BacktestConfig()
    assert row_units(BacktestConfig()) == {"STRONG_BUY": 2.0, "BUY": 1.0, "HOLD": 0.0,
                                           "SELL": 0.0, "STRONG_SELL": 0.0, UNPARSEABLE: 0.0}  # fmt: skip
    shorts = BacktestConfig(allow_shorts=True, action_units={"HOLD": 0.5})
    assert row_units(shorts) == {"STRONG_BUY": 2.0, "BUY": 1.0, "HOLD": 0.5, "SELL": -1.0,
                                 "STRONG_SELL": -2.0, UNPARSEABLE: 0.0}  # fmt: skip


def test_trade_metrics_hold_the_backtests_units_on_executable_returns():
    pred = ["STRONG_BUY", "BUY", "SELL", "HOLD", "STRONG_SELL", UNPARSEABLE, "BUY"]
    fwd = np.array([0.04, -0.02, -0.05, 0.01, -0.03, 0.02, 0.01])  # close to close
    exe = np.array([0.03, -0.01, -0.04, 0.02, -0.02, 0.01, np.nan])  # next open to close
    f = m.financial(pred, {1: fwd}, {1: exe}, row_units(BacktestConfig()))["1d"]
    trade = np.array([2 * 0.03, -0.01])  # long-only: SELL, STRONG_SELL flat; the last BUY unknown
    assert (f["long_trades"], f["short_trades"], f["trades"]) == (3, 0, 2)
    assert f["missing_executable_returns"] == 1
    assert f["mean_trade_return"] == pytest.approx(trade.mean())
    assert f["trade_hit_rate"] == 0.5
    assert f["sharpe_like_trade"] == pytest.approx(trade.mean() / trade.std(ddof=1))
    assert f["rows_with_return"] == 6 and f["mean_row_return"] == pytest.approx(trade.sum() / 6)
    c2c = np.array([2 * 0.04, -0.02, 0.01])
    assert f["mean_trade_return_close_to_close"] == pytest.approx(c2c.mean())
    assert f["mean_row_return_close_to_close"] == pytest.approx(c2c.sum() / 7)
    # the sign view keeps its meaning: shorts counted, STRONG_BUY as BUY, close to close
    signed = np.array([0.04, -0.02, 0.05, 0.03, 0.01])
    assert f["mean_signed_return"] == pytest.approx(signed.mean()) and f["directional"] == 5
    assert f["per_action"]["BUY"]["mean_executable_return"] == -0.01
    shorts = BacktestConfig(allow_shorts=True)
    g = m.financial(pred, {1: fwd}, {1: exe}, row_units(shorts))["1d"]
    assert g["short_trades"] == 2 and g["mean_trade_return"] == pytest.approx(
        np.mean([0.06, -0.01, 0.04, 0.04])
    )


def test_baselines_and_the_model_are_scored_with_the_same_strategy():
    frame = panel(days=30, tickers=3, seed=6, skill=0.1)
    frame["exec_ret_1"] = frame["fwd_ret_1"] * 0.5  # executable differs from close to close
    cfg = EvalConfig(forward_windows=[1, 5], permutations=50, bootstrap_samples=100)
    info = core.compute_metrics(cfg, frame, np.sign(frame["fwd_ret_1"].to_numpy()), [])
    json.dumps(info, allow_nan=False)
    exe = frame["exec_ret_1"].to_numpy()
    buy = info["baselines"]["always BUY"]
    assert buy["mean_trade_return_1d"] == pytest.approx(exe.mean())
    assert buy["mean_row_return_1d"] == pytest.approx(exe.mean())
    momentum = info["baselines"]["momentum 20d sign"]  # SELL is flat: long-only by default
    up = frame["fwd_ret_1"].to_numpy() > 0
    assert momentum["mean_trade_return_1d"] == pytest.approx(exe[up].mean())
    assert momentum["mean_row_return_1d"] == pytest.approx(exe[up].sum() / len(exe))
    model = frame["pred_action"] == "BUY"
    assert info["financial"]["1d"]["mean_trade_return"] == pytest.approx(exe[model].mean())
    assert info["baselines"]["model"]["mean_trade_return_1d"] == pytest.approx(exe[model].mean())
    assert info["strategy"]["units"]["SELL"] == 0.0 and info["strategy"]["allow_shorts"] is False
    assert len(info["financial"]["1d"]["mean_trade_return_ci95"]) == 2
    assert info["conventions"][0].startswith("Strategy (the headline trade metrics")
    summary = summary_markdown(info, [1, 5])
    assert "STRONG_BUY +2, BUY +1, HOLD 0, SELL 0, STRONG_SELL 0 units (long-only" in summary
    assert "per trade, close to close" in summary and "Sign view (its old meaning)" in summary
    shorts = core.compute_metrics(cfg, frame, np.sign(frame["fwd_ret_1"].to_numpy()), [],
                                  strategy=BacktestConfig(allow_shorts=True))  # fmt: skip
    signed = np.where(up, 1, -1) * exe
    assert shorts["baselines"]["momentum 20d sign"]["mean_trade_return_1d"] == pytest.approx(
        signed.mean()
    )
    with pytest.raises(CharlieError, match=r"^the per-sample frame has no exec_ret_5 column"):
        core.compute_metrics(cfg, frame.drop(columns="exec_ret_5"), np.zeros(len(frame)), [])
    with pytest.raises(CharlieError, match=r"^the prices of AAA have no open column"):
        core.attach_forward_returns(frame.assign(ticker="AAA"), {"AAA": BARS.drop(columns="open")},
                                    [1])  # fmt: skip


# ------------------------------------------------------------------- is the edge real


def panel(days=80, tickers=4, seed=1, skill=0.0, truncate=0):
    """A per-sample frame with returns: ``tickers`` rows per business day, 5-day forward returns
    from shared daily moves (overlapping windows, correlated across tickers), the model right
    about the 1-day direction with probability 0.5 + ``skill``, the last ``truncate`` rows cut."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2024-01-01", periods=days + 5).strftime("%Y-%m-%d")
    market = rng.normal(0, 0.01, days + 5)
    rows = []
    for d in range(days):
        for t in range(tickers):
            daily = market[d + 1 : d + 6] + rng.normal(0, 0.003, 5)
            up = daily[0] > 0
            right = rng.random() < 0.5 + skill
            rows.append({"uid": f"T{t}-{d}", "ticker": f"T{t}", "as_of_date": dates[d],
                         "action": "BUY" if up else "SELL", "pred": "BUY" if up == right else "SELL",
                         "fwd_ret_1": daily[0], "fwd_ret_5": daily.sum()})  # fmt: skip
    table = pd.DataFrame(rows)
    cut = [False] * (len(table) - truncate) + [True] * truncate
    pred = [UNPARSEABLE if c else p for p, c in zip(table["pred"], cut, strict=True)]
    frame = core.prediction_frame(table, pred, cut)
    for h in (1, 5):
        frame[f"fwd_ret_{h}"] = table[f"fwd_ret_{h}"]
    for h in (1, 5):
        frame[f"exec_ret_{h}"] = table[f"fwd_ret_{h}"]  # the same moves: no overnight gap here
    return frame


def assess(frame, strategies, windows=(1, 5), measures=None, **kw):
    settings = {"candidates": [s for s in strategies if s != "model"], "block_length": 5,
                "samples": 500, "permutations": 50, "seed": 0, **kw}  # fmt: skip
    measures = measures or {
        f"mean_signed_return_{h}d": (m.SIGN, frame[f"fwd_ret_{h}"].to_numpy(), True)
        for h in windows
    }
    return u.assess(frame["true_action"], strategies, measures,
                    list(frame["as_of_date"]), list(frame["ticker"]), list(frame["truncated"]),
                    **settings)  # fmt: skip


def test_stationary_block_counts_resample_whole_dates_reproducibly():
    counts = u.stationary_counts(50, 10, 400, seed=3)
    assert counts.shape == (400, 50) and (counts.sum(axis=1) == 50).all()
    assert (counts == u.stationary_counts(50, 10, 400, seed=3)).all()
    codes, n = u.date_codes(["2024-01-03", "2024-01-02", "2024-01-03"])
    assert codes.tolist() == [1, 0, 1] and n == 2  # every row of a date moves with its date
    num, den = u.per_date(codes, 2, [1.0, 0.0, 1.0]), u.per_date(codes, 2, [1.0, 1.0, 1.0])
    assert u.ratio_samples(np.ones((1, 2)), num, den) == pytest.approx([2 / 3])
    assert np.isnan(u.ratio_samples(np.ones((1, 2)), num, np.zeros(2))).all()


def test_block_intervals_are_wider_than_row_level_ones_on_dependent_returns():
    frame = panel(days=120, tickers=5, seed=2)
    buy = {"model": list(frame["pred_action"]), "always BUY": ["BUY"] * len(frame)}
    blocks = assess(frame, buy, block_length=10, samples=1000)["intervals"]["always BUY"]
    dates = assess(frame, buy, block_length=1, samples=1000)["intervals"]["always BUY"]
    ret = frame["fwd_ret_5"].to_numpy()  # always BUY: the plain mean of the returns
    rng = np.random.default_rng(0)
    rows = np.percentile(ret[rng.integers(0, len(ret), (1000, len(ret)))].mean(axis=1), [2.5, 97.5])
    lo, hi = blocks["mean_signed_return_5d"]
    assert lo < ret.mean() < hi
    assert hi - lo > 1.5 * (rows[1] - rows[0])  # 5 tickers a day, 5-day windows overlapping
    assert hi - lo > np.diff(dates["mean_signed_return_5d"])[0]


def test_the_nulls_move_predictions_within_a_ticker_only():
    groups = np.array([0, 0, 0, 1, 1, 5])  # 5: a truncated row, a group of its own
    dates = np.array([2, 0, 1, 0, 1, 0])
    shuffled = u.shuffle_sources(groups, 200, seed=0)
    assert (groups[shuffled] == groups).all() and (shuffled[:, 5] == 5).all()
    assert all(sorted(row[:3]) == [0, 1, 2] for row in shuffled)  # a permutation per ticker
    assert len({tuple(row) for row in shuffled}) > 6  # many draws, not one
    rotated = u.rotate_sources(groups, dates, 200, seed=0)
    assert (groups[rotated] == groups).all() and (rotated[:, 5] == 5).all()
    by_date = [1, 2, 0]  # ticker 0's rows in date order
    for row in rotated:
        seq = [int(row[i]) for i in by_date]
        k = by_date.index(seq[0])
        assert seq == by_date[k:] + by_date[:k]  # a rotation keeps the order, cyclically
    assert len({tuple(row) for row in rotated}) == 6  # 3 offsets x 2 offsets


def test_p_values_are_small_for_skill_and_large_for_chance():
    for skill, small in ((0.4, True), (0.0, False)):
        frame = panel(days=60, tickers=4, seed=5, skill=skill)
        info = core.compute_metrics(EvalConfig(forward_windows=[1, 5], permutations=200), frame,
                                    np.zeros(len(frame)), [])  # fmt: skip
        for scheme in ("shuffle_within_ticker", "rotate_within_ticker"):
            p = info["null"][scheme]["accuracy"]["p_value"]
            assert (p < 0.05) is small, (scheme, skill, p)
            assert 1 / 201 <= p <= 1
            assert info["null"][scheme]["mean_signed_return_1d"]["p_value"] is not None
    frame = panel(days=20).assign(pred_action="BUY")
    constant = core.compute_metrics(EvalConfig(forward_windows=[1], permutations=50), frame,
                                    np.zeros(len(frame)), [])  # fmt: skip
    assert constant["null"]["rotate_within_ticker"]["accuracy"]["p_value"] == 1.0  # nothing moves


def test_mcnemar_exact_against_the_binomial():
    from scipy.stats import binomtest

    assert u.mcnemar_exact(0, 0) == 1.0 and u.mcnemar_exact(3, 3) == 1.0
    assert u.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    for b, c in ((2, 9), (12, 4), (30, 41)):
        assert u.mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue)


def test_the_paired_test_says_plainly_when_the_edge_is_not_distinguishable_from_zero():
    frame = panel(days=60, tickers=4, seed=7).assign(pred_action="BUY")  # the model IS always BUY
    info = core.compute_metrics(EvalConfig(forward_windows=[1, 5], permutations=50), frame,
                                np.zeros(len(frame)), ["SELL"])  # fmt: skip
    test = info["paired"]["accuracy"]
    assert test["baseline"] in ("always BUY", "majority (SELL)")
    assert test["distinguishable"] is False
    assert test["sentence"].startswith(f"The model's edge in accuracy over {test['baseline']} (")
    assert test["sentence"].endswith("is not distinguishable from zero.")
    summary = summary_markdown(info, [1, 5])
    assert f"- {test['sentence']}" in summary
    assert "mean close-to-close signed return (sign view) over 5 trading days" in summary
    assert "mean executable return per trade over 5 trading days" in summary
    frame = panel(days=60, seed=7, skill=0.45)
    skilled = core.compute_metrics(EvalConfig(forward_windows=[1], permutations=50), frame,
                                   np.zeros(len(frame)), ["SELL"])  # fmt: skip
    test = skilled["paired"]["accuracy"]
    assert test["distinguishable"] is True and test["mcnemar_p"] < 1e-6
    assert test["difference_ci95"][0] > 0 and test["sentence"].endswith("the model is ahead of it.")
    assert test["model_only_correct"] > test["baseline_only_correct"]


def test_a_model_equal_to_the_baseline_has_no_edge():
    frame = panel(days=40, seed=8)
    same = {"model": list(frame["pred_action"]), "copy": list(frame["pred_action"])}
    paired = assess(frame, same)["paired"]
    for test in paired.values():
        assert test["difference"] == 0 and test["difference_ci95"] == [0.0, 0.0]
        assert test["distinguishable"] is False
    assert paired["accuracy"]["mcnemar_p"] == 1.0


def test_truncated_rows_hold_no_position_everywhere_and_are_reported_apart():
    frame = panel(days=30, tickers=4, seed=4, skill=0.2, truncate=20)
    cfg = EvalConfig(forward_windows=[1, 5], permutations=100, block_length=5)
    info = core.compute_metrics(cfg, frame, np.zeros(len(frame)), [])
    assert info["bootstrap"]["truncated_rows_flat"] == 20 == info["classification"]["truncated"]
    assert info["null"]["truncated_rows_kept_flat"] == 20
    kept = frame.iloc[:-20]
    signed = np.where(kept["pred_action"] == "BUY", 1, -1) * kept["fwd_ret_1"]
    observed = info["null"]["shuffle_within_ticker"]["mean_signed_return_1d"]["observed"]
    assert observed == pytest.approx(signed.mean())
    # the flag alone makes a row flat (and wrong), whatever action it carries
    forced = frame.assign(
        pred_action=["BUY"] * (len(frame) - 20) + list(frame["true_action"][-20:])
    )
    again = assess(forced, {"model": list(forced["pred_action"])}, candidates=[])
    buy = kept["fwd_ret_1"].mean()
    null = again["null"]["shuffle_within_ticker"]
    assert null["mean_signed_return_1d"]["observed"] == pytest.approx(buy)
    assert null["accuracy"]["observed"] == pytest.approx((kept["true_action"] == "BUY").sum() / 120)
    lo, hi = again["intervals"]["model"]["mean_signed_return_1d"]
    assert lo <= buy <= hi


def test_compute_metrics_keeps_its_keys_and_adds_the_edge_for_json_and_kfp():
    frame = panel(days=40, tickers=3, seed=9, skill=0.1, truncate=3)
    cfg = EvalConfig(forward_windows=[1, 5], permutations=100, bootstrap_samples=200)
    info = core.compute_metrics(cfg, frame, np.sign(frame["fwd_ret_1"].to_numpy()), [])
    json.dumps(info, allow_nan=False)  # JSON-ready
    assert len(info["baselines"]) == 6
    for b in info["baselines"].values():
        assert len(b["accuracy_ci95"]) == 2 and len(b["mean_signed_return_1d_ci95"]) == 2
        assert "mean_signed_return_5d" in b and len(b["mean_signed_return_5d_ci95"]) == 2
    random = info["baselines"]["random at the model's frequencies"]
    shuffle = info["null"]["shuffle_within_ticker"]["accuracy"]
    assert (random["accuracy"], random["accuracy_ci95"]) == (
        shuffle["null_mean"],
        shuffle["null_ci95"],
    )
    assert info["bootstrap"]["block_length"] == 5  # auto: the longest window
    assert info["bootstrap"]["dates"] == 40 and info["bootstrap"]["samples"] == 200
    assert len(info["financial"]["5d"]["mean_signed_return_ci95"]) == 2
    assert any(
        "block bootstrap over dates" in c and "mean length 5" in c for c in info["conventions"]
    )
    top = core.headline(info)
    assert {"block_length", "p_shuffle_accuracy", "p_rotate_accuracy", "p_shuffle_mean_signed_return_5d",
            "p_rotate_mean_signed_return_1d", "paired_accuracy_mcnemar_p", "paired_accuracy_difference",
            "paired_mean_signed_return_5d_difference_ci95_lo", "baseline_momentum_20d_sign_accuracy",
            "baseline_random_at_the_model_s_frequencies_accuracy"} <= set(top)  # fmt: skip
    assert all(isinstance(v, (int, float)) for v in top.values() if v is not None)
    summary = summary_markdown(info, [1, 5])
    assert "## Is the edge real?" in summary and "mean block length **5** dates" in summary
    assert "| accuracy |" in summary and "p (rotation)" in summary
    assert summary.count("- The model's edge in ") == 7  # accuracy, 3 statistics per window
    assert {"mean_trade_return_1d", "trade_hit_rate_5d", "mean_row_return_5d", "trades_1d",
            "mean_trade_return_close_to_close_5d", "p_shuffle_mean_trade_return_5d",
            "paired_mean_row_return_1d_difference", "hit_rate_1d", "sharpe_like_1d"} <= set(top)  # fmt: skip
    assert "few independent blocks" not in summary
    rough = core.compute_metrics(cfg.model_copy(update={"block_length": 20}), frame,
                                 np.zeros(len(frame)), [])  # fmt: skip
    assert "Only 40 dates for blocks of mean length 20: few independent blocks" in (
        summary_markdown(rough, [1, 5])
    )


def test_the_block_bootstrap_and_the_nulls_stay_fast():
    import time

    frame = panel(days=90, tickers=5, seed=3, skill=0.1, truncate=10)  # 450 rows
    strategies = m.baselines(list(frame["true_action"]), list(frame["pred_action"]), ["BUY"],
                             np.sign(frame["fwd_ret_1"].to_numpy()))  # fmt: skip
    units = row_units(BacktestConfig())
    measures = {}
    for h in (1, 5):  # what compute_metrics assesses: per trade, per row, the sign view
        exe, fwd = frame[f"exec_ret_{h}"].to_numpy(), frame[f"fwd_ret_{h}"].to_numpy()
        measures.update({f"mean_trade_return_{h}d": (units, exe, True),
                         f"mean_row_return_{h}d": (units, exe, False),
                         f"mean_signed_return_{h}d": (m.SIGN, fwd, True)})  # fmt: skip
    start = time.perf_counter()
    assess(frame, strategies, candidates=m.naive(strategies), block_length=30, samples=1000,
           permutations=500, measures=measures)  # fmt: skip
    assert time.perf_counter() - start < 1.0


def test_block_length_is_auto_or_a_whole_number():
    assert EvalConfig().block_length == "auto" and EvalConfig(block_length="12").block_length == 12
    assert u.effective_block_length("auto", [1, 5, 10, 30]) == 30
    assert u.effective_block_length(7, [1, 5, 10, 30]) == 7
    for bad in (0, "x", True):
        with pytest.raises(ValueError, match="block_length must be auto or a whole number"):
            EvalConfig(block_length=bad)


# ------------------------------------------------------------------- the generation budget


def tokenize_report(p99=8.0, top=10.0, context=None, **splits_extra):
    """A tokenize_report.json as `charlie tokenize` writes it (the keys evaluation reads)."""
    split = {"examples": 12, "completion_tokens": {"min": 3.0, "p50": 6.0, "p90": 7.0, "p99": p99,
             "max": top, "mean": 6.0}}  # fmt: skip
    small = {"examples": 4, "completion_tokens": {"p50": 4.0, "p90": 5.0, "p99": 5.0, "max": 6.0}}
    return {"max_length": 512, "context_length": context,
            "splits": {"train": split, "validation": small, **splits_extra}}  # fmt: skip


def test_auto_budget_is_the_p99_plus_the_margin_never_below_the_longest_completion():
    report = ("run/tokenize_report.json", tokenize_report(p99=400, top=687))
    b = budget.plan_budget("auto", 0.25, report, None, 200)
    assert (b.max_new_tokens, b.source, b.wanted) == (687, "auto", 687)  # 500 < the max 687
    b = budget.plan_budget("auto", 0.25, ("r", tokenize_report(p99=650, top=687)), None, 200)
    assert b.max_new_tokens == 813 and b.completion_p99 == 650 and b.margin == 0.25  # ceil(812.5)
    assert (
        budget.plan_budget("auto", 0.0, ("r", tokenize_report(650, 687)), None, 9).max_new_tokens
        == 687
    )
    assert "p99 650 x 1.25" in budget.plan_budget("auto", 0.25, ("r", tokenize_report(650, 687)),
                                                    None, 9).describe()  # fmt: skip
    fixed = budget.plan_budget(320, 0.25, None, 2048, 200)
    assert (fixed.max_new_tokens, fixed.source, fixed.context_length) == (320, "config", 2048)


def test_the_largest_split_decides_and_a_report_without_completion_lengths_is_one_sentence():
    report = tokenize_report(p99=8, top=10, test={"completion_tokens": {"p99": 30.0, "max": 31.0}})
    assert budget.completion_lengths(report) == (30.0, 31.0)
    with pytest.raises(CharlieError, match=r"^old.json has no splits.<split>.completion_tokens"):
        budget.plan_budget(
            "auto", 0.25, ("old.json", {"splits": {"train": {"tokens": {}}}}), None, 5
        )


def test_the_context_caps_the_budget_shrinking_the_margin_first_never_below_the_max():
    report = ("r", tokenize_report(p99=100, top=110, context=300))
    assert budget.plan_budget("auto", 0.25, report, None, 150).max_new_tokens == 125  # room 150
    shrunk = budget.plan_budget("auto", 0.25, report, None, 180)
    assert shrunk.max_new_tokens == 120 and shrunk.wanted == 125  # the longest prompt still fits
    assert "capped so the longest prompt (180 tokens) fits" in shrunk.describe()
    assert budget.plan_budget("auto", 0.25, report, None, 250).max_new_tokens == 110  # trim prompts
    assert budget.plan_budget("auto", 0.25, report, 200, 150).context_length == 200  # the smaller
    assert budget.context_limit(None, 1024) == 1024 and budget.context_limit(None, None) is None
    with pytest.raises(
        CharlieError, match=r"leaves no room for a prompt in the model's context of 100"
    ):
        budget.plan_budget("auto", 0.25, report, 100, 50)


def test_the_report_is_found_in_model_dir_or_beside_a_merged_model(tmp_path):
    run = tmp_path / "run"
    (run / "merged").mkdir(parents=True)
    assert budget.find_report(run) is None and budget.find_report(run / "merged") is None
    (run / budget.REPORT).write_text(json.dumps(tokenize_report()))
    assert budget.find_report(run) == (run / budget.REPORT, tokenize_report())
    assert budget.find_report(run / "merged")[0] == run / budget.REPORT  # the parent
    assert budget.find_report(tmp_path / "other") is None  # only a dir named merged looks up
    (run / "merged" / budget.REPORT).write_text(json.dumps(tokenize_report(p99=1, top=2)))
    assert budget.find_report(run / "merged")[0] == run / "merged" / budget.REPORT  # its own first
    (run / budget.REPORT).write_text("{")
    with pytest.raises(CharlieError, match=r"tokenize_report.json is not valid JSON"):
        budget.find_report(run)


def test_auto_without_a_report_is_one_sentence_naming_where_it_looked():
    with pytest.raises(CharlieError) as info:
        budget.plan_budget("auto", 0.25, None, 1024, 10, model_dir=Path("ckpt/run/merged"))
    assert str(info.value) == (
        "max_new_tokens is auto but there is no tokenize_report.json in ckpt/run/merged or "
        "ckpt/run (`charlie train` copies it next to the model from the tokenized dataset); set "
        "max_new_tokens in the eval config to a number of tokens."
    )


PROMPT = """You are an equity analyst. Write a thesis.

Market snapshot for ACME as of the close of 2025-01-02 (Thursday).
Bar: open 88.48, high 89.52, low 82.57, close 83.36, volume 14,297,156.
Returns: 1-day -5.8%, 5-day -3.4%, 20-day -12.7%.
Momentum: RSI14 31.7 (soft).
52-week range: close 46.9% below the high 157.13 and 1.0% above the low 82.57."""


def test_prompts_beyond_the_context_lose_whole_sections_and_are_counted():
    words = lambda text: len(text.split())  # noqa: E731  (a stand-in token count)
    full, short = words(PROMPT), words(PROMPT.rsplit("\n", 1)[0])
    b = budget.Budget(10, "config", full + 10)
    assert budget.fit_prompts([PROMPT, "A short prompt."], words, b) == (
        [PROMPT, "A short prompt."], [False, False])  # fmt: skip
    prompts, trimmed = budget.fit_prompts([PROMPT, "A short prompt."], words,
                                          budget.Budget(10, "config", full + 9))  # fmt: skip
    assert trimmed == [True, False] and words(prompts[0]) == short
    assert "52-week range" not in prompts[0] and prompts[0].startswith(PROMPT.rsplit("\n", 1)[0])
    assert budget.fit_prompts([PROMPT], words, budget.Budget(10, "config", None))[1] == [False]
    with pytest.raises(CharlieError, match=r"^the prompt of ACME-1 does not fit in 5 tokens"):
        budget.fit_prompts([PROMPT], words, budget.Budget(10, "config", 15), ["ACME-1"])


def test_a_row_cut_off_before_its_action_is_truncated_and_unparseable():
    cut = "<reasoning>The trend says buy, buy, buy"
    assert extract_prediction(cut, finished=False) == (UNPARSEABLE, True)  # no text fallback
    assert extract_prediction(cut, finished=True) == ("BUY", False)  # it chose to stop there
    assert extract_prediction("<action><SELL>", finished=False) == ("SELL", False)
    assert extract_prediction("<action><HOLD></action>") == ("HOLD", False)


def test_the_parse_gate_is_one_sentence_with_the_counts():
    info = {"classification": {"parse_rate": 0.0, "n": 1516, "unparseable": 1516, "truncated": 1516},
            "generation": {"max_new_tokens": 320}}  # fmt: skip
    assert core.parse_gate(info, 0.5, "results/eval_generations.jsonl") == (
        "parse rate 0.000 is below min_parse_rate 0.5: 1,516 of 1,516 rows have no action "
        "(1,516 truncated at max_new_tokens 320); see results/eval_generations.jsonl"
    )
    assert core.parse_gate(info, 0.0, "x") is None
    info["classification"].update(parse_rate=0.5, unparseable=758)
    assert core.parse_gate(info, 0.5, "x") is None  # at the gate is enough


# ------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny LoRA adapter trained for a few steps, and the sample's test rows."""
    from datasets import Dataset, DatasetDict

    from charlie.training.config import TrainConfig
    from charlie.training.sft import train

    from .test_training import SPEC, save_base_and_data, tokenized

    tmp = tmp_path_factory.mktemp("eval")
    from charlie import dataset as core
    from charlie.parsing import parse_files
    from charlie.training.tokens import train_tokenizer

    from .conftest import SAMPLES

    records = parse_files(sorted((SAMPLES / "xml").glob("*.xml"))).records
    frames = {
        p.stem: pd.read_csv(p, parse_dates=["date"]) for p in (SAMPLES / "prices").glob("*.csv")
    }
    rows, _, _ = core.build_rows(records, frames, SPEC, drop_outside=False)
    tok = train_tokenizer((r["prompt"] + r["completion"] for r in rows["train"][:300]), 600)
    data = tokenized(tok, {"train": rows["train"][:32], "validation": rows["validation"][:8]})
    base = save_base_and_data(tmp, tok, data)
    cfg = TrainConfig(base_model=str(base), dataset_dir=tmp / "data", output_dir=tmp / "run",
                      method="lora", gpu_type="CPU", max_steps=2, per_device_train_batch_size=8, merge=True,
                      report_to=["none"], disable_tqdm=True, save_strategy="no")  # fmt: skip
    train(cfg)
    # What `charlie train` copies next to the model: the tokenized dataset's length report.
    (tmp / "run" / budget.REPORT).write_text(json.dumps(tokenize_report(p99=8, top=10)))
    sft = DatasetDict({s: Dataset.from_list(rows[s][:12]) for s in ("train", "test")})
    sft.save_to_disk(str(tmp / "sft"))
    return tmp


REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["uid", "ticker", "as_of_date", "true_action", "pred_action", "correct", "truncated",
           "fwd_ret_1", "fwd_ret_5", "fwd_ret_10", "fwd_ret_30",
           "exec_ret_1", "exec_ret_5", "exec_ret_10", "exec_ret_30"]  # fmt: skip


def stage_argv(tmp: Path, **kw) -> list[str]:
    flags = {"params": REPO / "params.yaml", "config": REPO / "configs/eval_config.yaml",
             "model_dir": tmp / "run", "dataset_dir": tmp / "sft", "split": "test",
             "out": tmp / "results" / "eval_results.csv", "batch_size": 4, "max_new_tokens": 12,
             "min_parse_rate": 0, **kw}  # fmt: skip
    return [f"--{k.replace('_', '-')}={v}" for k, v in flags.items() if v is not None]


def run_stage(tmp: Path, **kw) -> int:
    """`charlie evaluate` on the fixture: 12 new tokens at most, the parse-rate gate off."""
    from charlie.stages.evaluate import add_arguments, run

    parser = argparse.ArgumentParser()
    parser.add_argument("--params")
    add_arguments(parser)
    return run(parser.parse_args(stage_argv(tmp, **kw)))


def test_evaluate_writes_every_output_and_counts_what_it_could_not_parse(trained, monkeypatch):
    monkeypatch.chdir(REPO)  # params.yaml's price files
    assert run_stage(trained) == 0
    out = trained / "results"
    frame = pd.read_csv(out / "eval_results.csv")
    assert list(frame.columns) == COLUMNS
    assert frame["truncated"].dtype == bool
    assert (frame.loc[frame["truncated"], "pred_action"] == UNPARSEABLE).all()
    assert len(frame) == 12 and frame["fwd_ret_30"].notna().all()
    assert set(frame["pred_action"]) <= {
        "STRONG_BUY",
        "BUY",
        "HOLD",
        "SELL",
        "STRONG_SELL",
        UNPARSEABLE,
    }
    info = json.loads((out / "eval_metrics.json").read_text())
    c = info["classification"]
    assert c["n"] == 12 and c["unparseable"] == (frame["pred_action"] == UNPARSEABLE).sum()
    assert c["truncated"] == frame["truncated"].sum() <= c["unparseable"]
    g = info["generation"]
    assert (g["max_new_tokens"], g["source"], g["context_length"]) == (12, "config", 512)
    assert STOP_TOKEN in g["stop_tokens"] and g["prompts_trimmed"] == 0
    assert c["accuracy"] == pytest.approx(frame["correct"].mean())
    assert set(info["financial"]) == {"1d", "5d", "10d", "30d"}
    assert info["baselines"]["teacher (thesis labels)"]["accuracy"] == 1.0
    assert len(info["baselines"]) == 6 and all(
        len(b["accuracy_ci95"]) == 2 for b in info["baselines"].values()
    )
    summary = (out / "eval_summary.md").read_text()
    assert "not annualised" in summary and "| always BUY |" in summary
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gens = [json.loads(line) for line in (out / "eval_generations.jsonl").read_text().splitlines()]
    assert [g["uid"] for g in gens] == list(frame["uid"])
    assert [g["truncated"] for g in gens] == list(frame["truncated"])
    assert all(g["new_tokens"] <= 12 for g in gens)
    assert all(g["new_tokens"] == 12 for g in gens if g["truncated"])
    assert "at most **12** new tokens per row (set in the eval config)" in summary


def test_bad_inputs_are_one_sentence(trained, tmp_path, monkeypatch):
    from charlie.errors import CharlieError

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    with pytest.raises(CharlieError, match=r"holds no model weights"):
        run_stage(trained, model_dir=str(tmp_path))
    with pytest.raises(CharlieError, match=r"has no 'validation' split \(it has train, test\)"):
        run_stage(trained, split="validation")
    with pytest.raises(CharlieError, match=r"is not a DatasetDict; run `charlie dataset` first"):
        run_stage(trained, dataset_dir=str(tmp_path))
    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "run", adapter, ignore=shutil.ignore_patterns("merged", "check*"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CharlieError, match=r"^cannot load the adapter's base model '.*gone'"):
        run_stage(trained, model_dir=str(adapter))


def test_a_merged_model_gives_the_same_predictions_as_its_adapter(trained, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert run_stage(trained, out=str(trained / "a" / "eval_results.csv"), limit=6) == 0
    assert run_stage(trained, model_dir=str(trained / "run" / "merged"),
                     out=str(trained / "m" / "eval_results.csv"), limit=6) == 0  # fmt: skip
    adapter = [
        json.loads(x)["generated"]
        for x in (trained / "a" / "eval_generations.jsonl").read_text().splitlines()
    ]
    merged = [
        json.loads(x)["generated"]
        for x in (trained / "m" / "eval_generations.jsonl").read_text().splitlines()
    ]
    assert adapter == merged and len(adapter) == 6


def test_auto_takes_the_budget_from_the_report_in_model_dir_or_beside_merged(trained, monkeypatch):
    monkeypatch.chdir(REPO)
    for model_dir in (trained / "run", trained / "run" / "merged"):
        out = trained / "auto" / model_dir.name / "eval_results.csv"
        assert run_stage(trained, model_dir=model_dir, max_new_tokens="auto", out=out, limit=4) == 0
        g = json.loads(out.with_name("eval_metrics.json").read_text())["generation"]
        assert (g["max_new_tokens"], g["source"], g["wanted"]) == (16, "auto", 16)  # ceil(8 x 2)
        assert g["report"] == str(trained / "run" / budget.REPORT)
        assert (g["completion_p99"], g["completion_max"], g["margin"]) == (8, 10, 1.0)
        gens = out.with_name("eval_generations.jsonl").read_text().splitlines()
        assert all(json.loads(line)["new_tokens"] <= 16 for line in gens)
    out = trained / "auto" / "margin" / "eval_results.csv"
    assert (
        run_stage(trained, max_new_tokens="auto", max_new_tokens_margin=0.25, out=out, limit=4) == 0
    )
    assert (
        json.loads(out.with_name("eval_metrics.json").read_text())["generation"]["max_new_tokens"]
        == 10  # ceil(8 x 1.25)
    )


def test_auto_without_a_report_is_one_sentence_before_the_model_loads(
    trained, tmp_path, monkeypatch
):
    monkeypatch.chdir(REPO)
    adapter = tmp_path / "adapter"
    shutil.copytree(
        trained / "run", adapter, ignore=shutil.ignore_patterns("merged", "check*", budget.REPORT)
    )
    with pytest.raises(CharlieError) as info:
        run_stage(trained, model_dir=adapter, max_new_tokens="auto")
    assert str(info.value) == budget.missing_report_message(adapter)
    assert f"no tokenize_report.json in {adapter} (" in str(info.value)
    with pytest.raises(CharlieError) as info:
        run_stage(trained, model_dir=tmp_path / "merged", max_new_tokens="auto")
    assert f"in {tmp_path / 'merged'} or {tmp_path} (" in str(info.value)


# A stand-in model: each row "generates" a scripted thesis, with generate()'s stopping rules.


class ScriptedModel:
    """Row i (over every batch) generates ``scripts[i % len(scripts)]`` then ``filler`` forever.

    Follows ``transformers`` generate(): a row ends at the first id in ``eos_token_id`` (an int
    or a list), finished rows are padded with ``pad_token_id``, and generation ends when every
    row has finished or after ``max_new_tokens``.
    """

    device = "cpu"

    def __init__(self, scripts: list[list[int]], filler: int, context: int = 4096):
        from types import SimpleNamespace

        self.scripts, self.filler, self.rows, self.calls = scripts, filler, 0, []
        self.config = SimpleNamespace(max_position_embeddings=context)
        self.generation_config = SimpleNamespace(eos_token_id=None)

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, *, max_new_tokens, do_sample, pad_token_id,
                 eos_token_id):  # fmt: skip
        import torch

        stops = eos_token_id if isinstance(eos_token_id, list) else [eos_token_id]
        self.calls.append({"eos_token_id": eos_token_id, "input_ids": input_ids.tolist(),
                           "max_new_tokens": max_new_tokens})  # fmt: skip
        rows = []
        for _ in range(len(input_ids)):
            script = self.scripts[self.rows % len(self.scripts)]
            self.rows += 1
            ids = []
            for token in [*script, *[self.filler] * max_new_tokens][:max_new_tokens]:
                ids.append(token)
                if token in stops:
                    break
            rows.append(ids)
        width = max(len(r) for r in rows)
        new = [r + [pad_token_id] * (width - len(r)) for r in rows]
        return torch.cat([input_ids, torch.tensor(new, dtype=input_ids.dtype)], dim=1)


@pytest.fixture(scope="module")
def tokenizer(trained):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(trained / "run")


THESIS = "<reasoning>Trend up.</reasoning><support>- RSI 60</support><action><BUY></action>"
RAMBLING = "<reasoning>buy the dip, buy the breakout, buy"  # never reaches its action
SILENT = "no view"  # stops by itself without an action: unparseable, not truncated


def count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def scripted(tokenizer, *texts, context=4096):
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    ids[-1] = ids[-1] + [tokenizer.eos_token_id]
    filler = tokenizer(" buy", add_special_tokens=False)["input_ids"][-1]
    # Scripts carry on past </action>: only the stop token can end the thesis there.
    ids[0] = ids[0] + tokenizer("<|end|> more text", add_special_tokens=False)["input_ids"]
    return ScriptedModel(ids, filler, context)


def test_generation_stops_at_the_end_of_the_action_and_flags_rows_that_ran_out(tokenizer):
    model = scripted(tokenizer, THESIS, RAMBLING, SILENT)
    stops = [tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids([STOP_TOKEN, END_OF_TURN])]
    assert stop_token_ids(tokenizer, model) == stops
    thesis_tokens = count(tokenizer, THESIS)
    # Prompts longest first, so the length order is the scripts' order.
    out = generate(model, tokenizer, ["a much longer prompt 1", "a longer prompt 2", "p3", "p4"],
                   batch_size=3, max_new_tokens=thesis_tokens + 5)  # fmt: skip
    assert [call["eos_token_id"] for call in model.calls] == [stops] * 2
    assert [(g.finished, g.new_tokens) for g in out] == [
        (True, thesis_tokens), (False, thesis_tokens + 5), (True, count(tokenizer, SILENT) + 1), (True, thesis_tokens),
    ]  # fmt: skip
    assert out[0].text == THESIS and out[3].text == THESIS  # nothing after </action>, no padding
    assert out[2].text == "no view" + tokenizer.eos_token
    assert [extract_prediction(g.text, finished=g.finished) for g in out] == [
        ("BUY", False), (UNPARSEABLE, True), (UNPARSEABLE, False), ("BUY", False),
    ]  # fmt: skip
    first = model.calls[0]["input_ids"]
    assert first[2][0] == first[1][0] == tokenizer.pad_token_id != first[0][0]  # left padding


class LengthEcho:
    """Each row generates one token, the id equal to its prompt's length, then eos."""

    device = "cpu"

    def __init__(self, tokenizer):
        from types import SimpleNamespace

        self.eos, self.batches = tokenizer.eos_token_id, []
        self.generation_config = SimpleNamespace(eos_token_id=None)

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, **_):
        import torch

        lengths = attention_mask.sum(dim=1).tolist()
        self.batches.append(lengths)
        new = torch.tensor([[n, self.eos] for n in lengths], dtype=input_ids.dtype)
        return torch.cat([input_ids, new], dim=1)


def test_batches_run_longest_prompt_first_and_rows_come_back_in_their_order(tokenizer):
    model = LengthEcho(tokenizer)
    prompts = ["p", "a much longer prompt than the rest", "a mid prompt", "p", "a mid prompt!"]
    lengths = [count(tokenizer, chat_prompt(tokenizer, p)) for p in prompts]
    out = generate(model, tokenizer, prompts, batch_size=2, max_new_tokens=4)
    assert [g.text for g in out] == [tokenizer.decode([n]) + tokenizer.eos_token for n in lengths]
    assert model.batches == [sorted(lengths, reverse=True)[i : i + 2] for i in (0, 2, 4)]
    assert [g.finished for g in out] == [True] * 5


def test_an_adapter_loads_as_its_merged_copy_only_while_that_is_this_adapter(trained, monkeypatch):
    from charlie import models

    run = trained / "run"
    assert models.current_merge(run) == run / models.MERGED
    merges = []
    real = models.merge_adapter
    monkeypatch.setattr(models, "merge_adapter", lambda *a, **k: merges.append(a) or real(*a, **k))
    fast, _ = models.load_for_inference(run)
    assert merges == []  # no PEFT, no merge: the saved copy
    record = run / models.MERGED / models.MERGED_FROM
    saved = record.read_text()
    try:
        record.write_text(json.dumps({"adapter_sha256": "0" * 64}))  # another adapter's merge
        assert models.current_merge(run) is None
        slow, _ = models.load_for_inference(run)
        record.unlink()  # a merged/ from before the record: not trusted either
        assert models.current_merge(run) is None
    finally:
        record.write_text(saved)
    assert len(merges) == 1
    a, b = fast.state_dict(), slow.state_dict()
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)  # bit for bit


def test_a_real_model_stops_at_the_end_of_the_action(trained, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(trained / "run" / "merged")
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tokenizer.convert_tokens_to_ids(STOP_TOKEN)] = 1.0  # greedy: always </action>
    model.lm_head = head
    out = generate(model, tokenizer, ["a prompt", "another, longer prompt"], max_new_tokens=12)
    assert [(g.text, g.new_tokens, g.finished) for g in out] == [(STOP_TOKEN, 1, True)] * 2
    with torch.no_grad():
        head.bias.zero_()
        head.bias[tokenizer.convert_tokens_to_ids("<reasoning>")] = 1.0
    out = generate(model, tokenizer, ["a prompt"], max_new_tokens=7)
    assert (out[0].new_tokens, out[0].finished) == (7, False)


def run_cli(tmp: Path, **kw) -> int:
    import charlie.cli

    return charlie.cli.main(["evaluate", *stage_argv(tmp, **kw)])


def test_truncated_rows_are_counted_and_a_low_parse_rate_exits_1_after_writing(
    trained, tokenizer, monkeypatch, capsys
):
    import charlie.stages.evaluate as stage

    monkeypatch.chdir(REPO)
    model = scripted(tokenizer, THESIS, RAMBLING, SILENT)
    monkeypatch.setattr(stage, "load_for_inference", lambda _: (model, tokenizer))
    out = trained / "gate" / "eval_results.csv"
    auto = {"max_new_tokens": "auto", "max_new_tokens_margin": 1}  # ceil(8 x 2): room for THESIS
    assert run_cli(trained, out=out, min_parse_rate=0.5, **auto) == 1
    generations = out.with_name("eval_generations.jsonl")
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "charlie evaluate: error: parse rate 0.333 is below min_parse_rate 0.5: 8 of 12 rows "
        f"have no action (4 truncated at max_new_tokens 16); see {generations}"
    )
    for name in ("eval_results.csv", "eval_generations.jsonl", "eval_metrics.json",
                 "eval_summary.md", "confusion_matrix.png"):  # fmt: skip
        assert out.with_name(name).is_file(), name
    frame = pd.read_csv(out)
    assert list(frame.columns) == COLUMNS
    # The scripts go to rows in the order they are generated (longest prompt first), so the
    # row each lands on varies; each row's outcome must match its own script.
    outcomes = list(zip(frame["truncated"], frame["pred_action"], strict=True))
    assert sorted(outcomes) == sorted([(False, "BUY"), (True, UNPARSEABLE),
                                       (False, UNPARSEABLE)] * 4)  # fmt: skip
    c = json.loads(out.with_name("eval_metrics.json").read_text())["classification"]
    assert (c["unparseable"], c["truncated"], c["parse_rate"]) == (8, 4, pytest.approx(1 / 3))
    assert "8 unparseable, of which 4 truncated" in out.with_name("eval_summary.md").read_text()
    gens = [json.loads(line) for line in generations.read_text().splitlines()]
    assert [g["uid"] for g in gens] == frame["uid"].tolist()
    expected = {(False, "BUY"): (count(tokenizer, THESIS), THESIS), (True, UNPARSEABLE): (16, None),
                (False, UNPARSEABLE): (count(tokenizer, SILENT) + 1, "no view<|eos|>")}  # fmt: skip
    for outcome, g in zip(outcomes, gens, strict=True):
        tokens, text = expected[outcome]
        assert g["new_tokens"] == tokens and g["truncated"] == outcome[0]
        assert text is None or g["generated"] == text

    model.rows = 0  # the same generations pass a gate they reach
    assert run_cli(trained, out=out, min_parse_rate=0.3, **auto) == 0
    with pytest.raises(QualityGateError) as info:
        model.rows = 0
        run_stage(trained, out=out, min_parse_rate=1)
    assert info.value.exit_code == 1


def test_prompts_longer_than_the_context_allows_are_trimmed_and_counted(
    trained, tokenizer, monkeypatch
):
    import charlie.stages.evaluate as stage
    from charlie.inference import prompt_tokens

    monkeypatch.chdir(REPO)
    longest = max(prompt_tokens(tokenizer, p) for p in load_test_prompts(trained))
    model = scripted(tokenizer, THESIS, context=longest + 12 - 1)  # the longest misses by one
    monkeypatch.setattr(stage, "load_for_inference", lambda _: (model, tokenizer))
    out = trained / "trim" / "eval_results.csv"
    assert run_stage(trained, out=out, max_new_tokens=12) == 0
    g = json.loads(out.with_name("eval_metrics.json").read_text())["generation"]
    assert g["context_length"] == longest + 11 and 1 <= g["prompts_trimmed"] <= 12
    seen = [tokenizer.decode(row, skip_special_tokens=True) for call in model.calls
            for row in call["input_ids"]]  # fmt: skip
    assert sum("52-week range:" not in text for text in seen) == g["prompts_trimmed"]
    assert all("Market snapshot for" in text for text in seen)  # the header stays


def load_test_prompts(trained: Path) -> list[str]:
    from datasets import load_from_disk

    return list(load_from_disk(str(trained / "sft"))["test"]["prompt"])
