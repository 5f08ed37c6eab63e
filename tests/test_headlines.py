"""The headlines (the DVC metrics): a few numbers per stage, read from its detailed report."""

import json

import pytest

from charlie import headlines

from .conftest import REPO

REPORTS = {
    headlines.parse: "data/jsonl/parse_report.json",
    headlines.dataset: "data/hf_datasets/dataset_card.json",
    headlines.evaluate: "results/eval_metrics.json",
    headlines.backtest: "backtests/baseline_metrics.json",
}


@pytest.mark.parametrize("derive", list(REPORTS), ids=lambda f: f.__name__)
def test_a_headline_is_a_few_flat_numbers_with_plain_keys(derive):
    report = json.loads((REPO / REPORTS[derive]).read_text())
    headline = derive(report)
    assert 4 <= len(headline) <= 8
    assert all(k.isidentifier() and k == k.lower() for k in headline)  # no spaces, no dots
    assert all(v is None or isinstance(v, int | float) for v in headline.values())


def test_headlines_say_what_the_reports_say():
    parse = json.loads((REPO / REPORTS[headlines.parse]).read_text())
    assert headlines.parse(parse)["records"] == parse["totals"]["records"]
    evaluation = json.loads((REPO / REPORTS[headlines.evaluate]).read_text())
    head = headlines.evaluate(evaluation)
    assert head["accuracy"] == evaluation["classification"]["accuracy"]
    assert [head["accuracy_ci95_lo"], head["accuracy_ci95_hi"]] == evaluation["baselines"][
        "model"]["accuracy_ci95"]  # fmt: skip
    assert head["edge_over_best_baseline"] == evaluation["paired"]["accuracy"]["difference"]
    backtest = json.loads((REPO / REPORTS[headlines.backtest]).read_text())
    assert headlines.backtest(backtest)["sharpe"] == backtest["strategy"]["sharpe"]
    final = {"train_loss": 0.47, "eval_loss": 0.28, "global_step": 952, "train_runtime": 276.2,
             "epoch": 7.0, "merged_model": "checkpoints/sft/merged"}  # fmt: skip
    assert headlines.train(final) == {"train_loss": 0.47, "eval_loss": 0.28, "steps": 952,
                                      "train_seconds": 276.2}  # fmt: skip


def test_the_committed_headlines_are_what_the_reports_give():
    """`dvc repro` wrote each headline from its report: committing one without the other (or
    editing a headline function without rerunning) fails here."""
    for derive, report in REPORTS.items():
        name = {"parse": "parse", "dataset": "dataset", "evaluate": "eval",
                "backtest": "baseline"}[derive.__name__]  # fmt: skip
        path = headlines.headline_path(REPO / report, name)
        expected = json.loads(json.dumps(derive(json.loads((REPO / report).read_text()))))
        assert json.loads(path.read_text()) == expected, path


def test_nan_is_written_as_null(tmp_path):
    headlines.write_headline(tmp_path / "h.json", {"sharpe": float("nan"), "trades": 3})
    assert json.loads((tmp_path / "h.json").read_text()) == {"sharpe": None, "trades": 3}
