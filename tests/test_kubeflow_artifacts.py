"""charlie.kubeflow.artifacts: where a run's metrics files are among its artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from charlie.errors import CharlieError
from charlie.kubeflow.artifacts import RUN_METRICS, bucket_and_prefix, run_metric_keys

REPO = Path(__file__).resolve().parents[1]


def test_metrics_fetched_are_the_metrics_dvc_yaml_declares():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = {
        next(iter(m)) if isinstance(m, dict) else m
        for stage in stages.values()
        for m in stage.get("metrics", [])
    }
    assert declared == set(RUN_METRICS)


def test_pipeline_roots_are_a_bucket_and_a_prefix():
    assert bucket_and_prefix("s3://artifacts/kfp/?region=us-east-1") == ("artifacts", "kfp")
    assert bucket_and_prefix("minio://mlpipeline") == ("mlpipeline", "")
    for uri in ("gs://bucket/kfp", "s3://", "artifacts/kfp"):
        with pytest.raises(CharlieError, match="is not an s3:// or minio:// URI"):
            bucket_and_prefix(uri)


def test_metric_keys_allow_an_execution_folder_and_nothing_else():
    run = "kfp/charlie-sft/run-1"
    keys = [
        f"{run}/parse/report",
        f"{run}/dataset/exec-7/card/dataset_card.json",  # newer launchers
        f"{run}/evaluate/results/eval_metrics.json",
        f"{run}/evaluate/metrics",  # another output of the task
        f"{run}/backtest/a/b/portfolio/baseline_metrics.json",  # two folders: not an output
        "kfp/charlie-sft/run-2/backtest/portfolio/baseline_metrics.json",  # another run
    ]
    assert run_metric_keys(keys, run) == {
        "${parse.report}": f"{run}/parse/report",
        "${dataset.card}": f"{run}/dataset/exec-7/card/dataset_card.json",
        "results/eval_metrics.json": f"{run}/evaluate/results/eval_metrics.json",
    }
