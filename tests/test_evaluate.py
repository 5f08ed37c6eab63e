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
from charlie.evaluation import core
from charlie.evaluation import metrics as m
from charlie.evaluation.returns import forward_returns, momentum_sign

BARS = pd.DataFrame({
    "date": pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08"]),
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
    assert list(out.columns) == ["ticker", "as_of_date", "fwd_ret_1", "fwd_ret_2"]
    assert out["fwd_ret_1"].tolist()[:2] == [pytest.approx(0.10), pytest.approx(0.5)]
    assert out["fwd_ret_2"][1] == pytest.approx(-0.25) and np.isnan(out["fwd_ret_1"][2])
    assert momentum.tolist() == [0.0, 0.0, 0.0]  # fewer than 20 bars behind every date


def test_classification_against_hand_counts():
    truth = ["BUY", "BUY", "SELL", "HOLD"]
    pred = ["BUY", "SELL", "SELL", UNPARSEABLE]
    c = m.classification(truth, pred)
    assert c["accuracy"] == 0.5 and c["parse_rate"] == 0.75 and c["unparseable"] == 1
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


def test_bootstrap_intervals_hold_the_estimate_and_are_reproducible():
    rng = np.random.default_rng(1)
    truth = list(rng.choice(["BUY", "SELL"], 300))
    pred = [t if rng.random() < 0.7 else "HOLD" for t in truth]
    ret = rng.normal(0.001, 0.01, 300)
    a = m.bootstrap(truth, pred, ret, samples=500, seed=3)
    assert a == m.bootstrap(truth, pred, ret, samples=500, seed=3)
    acc = np.mean([p == t for p, t in zip(pred, truth, strict=True)])
    assert a["accuracy"][0] < acc < a["accuracy"][1]
    assert a["mean_signed_return"][0] < m.mean_signed(pred, ret) < a["mean_signed_return"][1]


def test_baselines_act_on_the_same_rows():
    truth = ["BUY", "SELL", "HOLD", "BUY"]
    b = m.baselines(
        truth, ["SELL"] * 4, ["HOLD", "HOLD", "BUY"], np.array([1.0, -1.0, 0.0, 1.0]), seed=0
    )
    assert b["majority (HOLD)"] == ["HOLD"] * 4
    assert b["always BUY"] == ["BUY"] * 4 and b["teacher (thesis labels)"] == truth
    assert b["momentum 20d sign"] == ["BUY", "SELL", "HOLD", "BUY"]
    assert b["random at the model's frequencies"] == ["SELL"] * 4  # the model only says SELL
    assert all(len(v) == 4 for v in b.values())


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
    sft = DatasetDict({s: Dataset.from_list(rows[s][:12]) for s in ("train", "test")})
    sft.save_to_disk(str(tmp / "sft"))
    return tmp


def run_stage(tmp: Path, **kw) -> int:
    from charlie.stages.evaluate import add_arguments, run

    repo = Path(__file__).resolve().parents[1]
    flags = {"params": repo / "params.yaml", "config": repo / "configs/eval_config.yaml",
             "model_dir": tmp / "run", "dataset_dir": tmp / "sft", "split": "test",
             "out": tmp / "results" / "eval_results.csv", "batch_size": 4, "max_new_tokens": 12,
             **kw}  # fmt: skip
    parser = argparse.ArgumentParser()
    parser.add_argument("--params")
    add_arguments(parser)
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in flags.items() if v is not None]
    return run(parser.parse_args(argv))


def test_evaluate_writes_every_output_and_counts_what_it_could_not_parse(trained, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # params.yaml's price files
    assert run_stage(trained) == 0
    out = trained / "results"
    frame = pd.read_csv(out / "eval_results.csv")
    assert list(frame.columns) == ["uid", "ticker", "as_of_date", "true_action", "pred_action", "correct",
                                   "fwd_ret_1", "fwd_ret_5", "fwd_ret_10", "fwd_ret_30"]  # fmt: skip
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
