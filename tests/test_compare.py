"""`charlie compare`: two models on the same rows, paired intervals and tests, and its files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from charlie import comparison
from charlie.cli import main
from charlie.errors import CharlieError

ROOT = Path(__file__).resolve().parents[1]
WINDOWS = [1, 5]
UNITS = {"STRONG_BUY": 2.0, "BUY": 1.0, "HOLD": 0.0, "SELL": 0.0, "STRONG_SELL": 0.0,
         "UNPARSEABLE": 0.0}  # fmt: skip


def frame(pred: list[str], truth: list[str], ret: list[float], days: int | None = None):
    """An eval_results.csv frame: one ticker per row block, a date per row (or per ``days``)."""
    n = len(pred)
    dates = pd.bdate_range("2025-01-02", periods=days or n).strftime("%Y-%m-%d")
    return pd.DataFrame({
        "uid": [f"T{i:03d}" for i in range(n)],
        "ticker": ["ACME" if i % 2 else "BOLT" for i in range(n)],
        "as_of_date": [dates[i % len(dates)] for i in range(n)],
        "true_action": truth, "pred_action": pred, "truncated": [False] * n,
        **{f"fwd_ret_{h}": ret for h in WINDOWS},
        **{f"exec_ret_{h}": ret for h in WINDOWS},
    })  # fmt: skip


def test_rows_are_matched_by_uid_and_must_be_the_same():
    a = frame(["BUY", "HOLD", "SELL"], ["BUY", "SELL", "SELL"], [0.01, -0.02, 0.03])
    b = a.iloc[::-1].reset_index(drop=True)  # same rows, another order
    out = comparison.aligned_rows({"sft": a, "grpo": b}, WINDOWS)
    assert list(out["grpo"]["uid"]) == list(out["sft"]["uid"]) == ["T000", "T001", "T002"]

    with pytest.raises(CharlieError, match=r"different rows \(1 only in sft's, 0 only in grpo's"):
        comparison.aligned_rows({"sft": a, "grpo": a.iloc[:2]}, WINDOWS)
    other = a.copy()
    other.loc[1, "exec_ret_5"] = 0.5
    with pytest.raises(CharlieError, match="different exec_ret_5 on the same rows"):
        comparison.aligned_rows({"sft": a, "grpo": other}, WINDOWS)
    relabelled = a.copy()
    relabelled.loc[0, "true_action"] = "HOLD"
    with pytest.raises(CharlieError, match="disagree on the true_action"):
        comparison.aligned_rows({"sft": a, "grpo": relabelled}, WINDOWS)
    with pytest.raises(CharlieError, match=r"lacks the column\(s\) exec_ret_5"):
        comparison.aligned_rows({"sft": a, "grpo": b.drop(columns="exec_ret_5")}, WINDOWS)


def _compare(base: pd.DataFrame, cand: pd.DataFrame, samples: int = 400) -> dict:
    frames = comparison.aligned_rows({"sft": base, "grpo": cand}, WINDOWS)
    return comparison.compare_evaluations(frames, WINDOWS, UNITS, block_length=2,
                                          samples=samples, permutations=50, seed=0)  # fmt: skip


def test_the_evaluation_comparison_is_paired_and_hand_checkable():
    rng = np.random.default_rng(3)
    n = 120
    ret = list(rng.normal(0, 0.01, n))
    truth = ["BUY" if r > 0 else "SELL" for r in ret]
    base_pred = ["BUY"] * n  # long every row: right about half the time
    cand_pred = list(truth)  # right every row, and long only where the move is up
    out = _compare(frame(base_pred, truth, ret), frame(cand_pred, truth, ret))

    acc = out["paired"]["accuracy"]
    ups = sum(t == "BUY" for t in truth)
    assert out["models"]["sft"]["classification"]["accuracy"] == pytest.approx(ups / n)
    assert acc["difference"] == pytest.approx(1 - ups / n)
    assert (acc["model_only_correct"], acc["baseline_only_correct"]) == (n - ups, 0)
    assert acc["mcnemar_p"] < 1e-6 and acc["distinguishable"]
    assert acc["sentence"].startswith("grpo's edge in accuracy over sft")

    row = out["paired"]["mean_row_return_1d"]
    expected = np.mean([r if p == "BUY" else 0.0 for p, r in zip(cand_pred, ret, strict=True)])
    assert out["models"]["grpo"]["trading"]["1d"]["mean_row_return"] == pytest.approx(expected)
    assert row["difference"] == pytest.approx(expected - np.mean(ret))
    lo, hi = row["difference_ci95"]
    assert 0 < lo <= row["difference"] <= hi  # avoiding every down day: a real, paired edge
    assert out["agreement"] == pytest.approx(ups / n)


def test_identical_models_differ_by_exactly_nothing():
    ret = [0.01, -0.02, 0.005, 0.03, -0.01, 0.02]
    pred = ["BUY", "HOLD", "STRONG_BUY", "BUY", "SELL", "BUY"]
    truth = ["BUY", "SELL", "BUY", "BUY", "SELL", "HOLD"]
    out = _compare(frame(pred, truth, ret), frame(pred, truth, ret), samples=100)
    for test in out["paired"].values():
        assert test["difference"] == 0 and not test["distinguishable"]
        assert test["difference_ci95"] in ([], [0.0, 0.0])
    assert out["agreement"] == 1.0


def test_sharpe_samples_and_the_bootstrap_p_value():
    r = np.array([0.01, -0.005, 0.002, 0.007, -0.001])
    expected = r.mean() / r.std(ddof=1) * np.sqrt(252)
    assert comparison.sharpe_samples(np.ones((1, 5)), r)[0] == pytest.approx(expected)
    twice_first = np.array([[2, 1, 1, 1, 0]])  # the fifth day left out, the first drawn twice
    x = np.repeat(r, twice_first[0])
    assert comparison.sharpe_samples(twice_first, r)[0] == pytest.approx(
        x.mean() / x.std(ddof=1) * np.sqrt(252)
    )
    assert np.isnan(comparison.sharpe_samples(np.ones((1, 3)), np.zeros(3))[0])
    assert comparison.bootstrap_p(np.array([1.0, 2.0, 3.0, -1.0])) == pytest.approx(0.5)
    assert comparison.bootstrap_p(np.array([1.0, 2.0])) == 0.0
    assert comparison.bootstrap_p(np.array([np.nan])) is None


def daily(returns: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"date": pd.bdate_range("2025-01-02", periods=len(returns))
                         .strftime("%Y-%m-%d"), "returns": returns})  # fmt: skip


def metrics_json(returns: list[float], trades: int, costs: float) -> dict:
    total = float(np.prod(1 + np.array(returns)) - 1)
    return {"strategy": {"total_return": total, "sharpe": 1.0, "max_drawdown": -0.01,
                         "turnover": 3.0, "n_trades": trades, "exposure": 0.5},
            "costs": {"strategy": {"total": costs}},
            "benchmark": {"total_return": 0.02, "sharpe": 0.8, "max_drawdown": -0.05}}  # fmt: skip


def test_portfolios_are_compared_on_the_same_days():
    rng = np.random.default_rng(1)
    base = list(rng.normal(0.0, 0.01, 200))
    better = [r + 0.004 for r in base]  # the same days, 40 bp a day more
    out = comparison.compare_portfolios(
        {"sft": daily(base), "grpo": daily(better)},
        {"sft": metrics_json(base, 10, 100.0), "grpo": metrics_json(better, 12, 120.0)},
        block_length=5, samples=300, seed=0,
    )  # fmt: skip
    assert out["days"] == 200
    mean = out["paired"]["mean_daily_return"]
    assert mean["difference"] == pytest.approx(0.004)
    assert mean["difference_ci95"] == pytest.approx([0.004, 0.004])  # paired: no noise left
    assert mean["bootstrap_p"] == 0.0 and mean["distinguishable"]
    sharpe = out["paired"]["sharpe"]
    assert sharpe["difference"] > 0 and sharpe["distinguishable"]
    assert out["models"]["grpo"]["costs_paid"] == 120.0
    assert out["models"]["sft"]["n_trades"] == 10
    with pytest.raises(CharlieError, match="share no trading day"):
        late = daily(base).assign(date=lambda d: pd.to_datetime(d["date"]) + pd.Timedelta("900D"))
        late["date"] = late["date"].dt.strftime("%Y-%m-%d")
        comparison.compare_portfolios({"sft": daily(base), "grpo": late},
                                      {"sft": metrics_json(base, 1, 1), "grpo": metrics_json(base, 1, 1)},
                                      block_length=5, samples=10, seed=0)  # fmt: skip


def _write_model(tmp: Path, name: str, ev: pd.DataFrame, returns: list[float]) -> dict:
    (tmp / name).mkdir()
    ev.to_csv(tmp / name / "eval_results.csv", index=False)
    daily(returns).to_csv(tmp / name / "baseline.csv", index=False)
    (tmp / name / "baseline_metrics.json").write_text(json.dumps(metrics_json(returns, 5, 50.0)))
    return {"eval": tmp / name / "eval_results.csv", "backtest": tmp / name / "baseline.csv"}


def test_the_stage_writes_the_report_the_json_the_headline_and_the_plot(tmp_path):
    rng = np.random.default_rng(5)
    n = 60
    ret = list(rng.normal(0, 0.01, n))
    truth = ["BUY" if r > 0 else "HOLD" for r in ret]
    config = tmp_path / "eval.yaml"
    settings = yaml.safe_load((ROOT / "configs/eval_config.yaml").read_text())
    settings.update(forward_windows=WINDOWS, bootstrap_samples=200, permutations=20,
                    strategy_config=str(ROOT / "configs/backtest_config.yaml"))  # fmt: skip
    config.write_text(yaml.safe_dump(settings))
    sft = _write_model(tmp_path, "sft", frame(["BUY"] * n, truth, ret), list(ret))
    grpo = _write_model(tmp_path, "grpo", frame(truth, truth, ret), [abs(r) for r in ret])
    out = tmp_path / "compare" / "comparison.md"
    argv = ["compare", "--config", str(config), "--baseline-eval", str(sft["eval"]),
            "--candidate-eval", str(grpo["eval"]), "--baseline-backtest", str(sft["backtest"]),
            "--candidate-backtest", str(grpo["backtest"]), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0

    info = json.loads(out.with_name("comparison.json").read_text())
    assert info["evaluation"]["baseline"] == "sft" and info["evaluation"]["candidate"] == "grpo"
    assert info["portfolio"]["days"] == n
    sharpe = info["portfolio"]["paired"]["sharpe"]["difference"]
    assert info["verdict"] == (f"grpo is ahead of sft in Sharpe after costs (difference "
                               f"{sharpe:+.2f}), beyond resampling noise.")  # fmt: skip
    headline = json.loads(out.with_name("compare_headline.json").read_text())
    assert headline["grpo_accuracy"] == 1.0 and len(headline) <= 8
    assert headline["sharpe_difference"] == info["portfolio"]["paired"]["sharpe"]["difference"]
    text = out.read_text()
    assert text.startswith(f"# grpo against sft, on the same {n} test rows")
    assert "| accuracy |" in text and "| Sharpe (annualised) |" in text and "McNemar" in text
    hit = info["evaluation"]["models"]
    diff = hit["grpo"]["trading"]["1d"]["hit_rate"] - hit["sft"]["trading"]["1d"]["hit_rate"]
    assert diff > 0 and f"| {diff:+.1%} |" in text  # differences carry their sign
    assert out.with_name("comparison.png").read_bytes()[:4] == b"\x89PNG"

    # the evaluations alone: no portfolio section, the verdict on accuracy
    bare = tmp_path / "bare" / "comparison.md"
    assert main([*argv[:-6], "--out", str(bare), "--baseline-backtest", "",
                 "--candidate-backtest", ""]) == 0  # fmt: skip
    info = json.loads(bare.with_name("comparison.json").read_text())
    assert info["portfolio"] is None and "in accuracy" in info["verdict"]


def test_the_stage_refuses_rows_that_differ_with_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "WINDOWS", [1, 5, 10, 30])  # the eval config's
    ret = [0.01, -0.01, 0.02]
    sft = _write_model(tmp_path, "sft", frame(["BUY"] * 3, ["BUY"] * 3, ret), ret)
    grpo = _write_model(tmp_path, "grpo", frame(["BUY"] * 2, ["BUY"] * 2, ret[:2]), ret)
    code = main(["compare", "--baseline-eval", str(sft["eval"]), "--candidate-eval",
                 str(grpo["eval"]), "--baseline-backtest", str(sft["backtest"]),
                 "--candidate-backtest", str(grpo["backtest"]),
                 "--out", str(tmp_path / "c" / "comparison.md")])  # fmt: skip
    assert code == 2
    assert "were evaluated on different rows" in capsys.readouterr().err
    assert not (tmp_path / "c" / "comparison.md").exists()
    missing = main(["compare", "--candidate-eval", str(tmp_path / "none.csv"),
                    "--baseline-eval", str(sft["eval"]), "--out", str(tmp_path / "d.md")])  # fmt: skip
    assert missing == 2
    assert "grpo's evaluation" in capsys.readouterr().err
