"""charlie.kubeflow.artifacts: where a run's metrics files and model are among its artifacts;
and the cron shape charlie.kubeflow.client accepts for a recurring run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from charlie.config import Params
from charlie.errors import CharlieError
from charlie.headlines import headline_path
from charlie.kubeflow.artifacts import (
    RUN_HEADLINES,
    RUN_METRICS,
    bucket_and_prefix,
    model_prefix,
    run_metric_keys,
    workspace_path,
)
from charlie.kubeflow.client import check_cron

REPO = Path(__file__).resolve().parents[1]


def test_metrics_fetched_are_the_metrics_dvc_yaml_declares():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = set()
    for stage in stages.values():
        # a foreach stage (evaluate@sft, evaluate@grpo): its metric once per item
        items = list((stage.get("foreach") or {}).values()) or [None]
        for item in items:
            for m in stage.get("do", stage).get("metrics", []):
                path = next(iter(m)) if isinstance(m, dict) else m
                for key, value in (item or {}).items():
                    path = path.replace(f"${{item.{key}}}", str(value))
                declared.add(path)
    assert set(RUN_HEADLINES) == set(RUN_METRICS)
    # each declared metric is the headline of a fetched report, beside it
    params = Params()  # dvc.yaml's ${...} paths filled as params.yaml's defaults fill them
    assert declared == {
        str(headline_path(workspace_path(path, params), RUN_HEADLINES[path][0]))
        for path in RUN_METRICS
    }


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


def _objects(*keys_and_times) -> list[dict]:
    import datetime as dt

    epoch = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    return [{"Key": k, "LastModified": epoch + dt.timedelta(minutes=m)} for k, m in keys_and_times]


def test_the_model_is_the_train_or_train_job_tasks_model_output():
    run = "kfp/charlie-sft/run-1"
    plain = _objects((f"{run}/train/model/adapter_config.json", 1),
                     (f"{run}/train/model/model/inner.bin", 1),  # a folder named model inside
                     (f"{run}/train/metrics", 2), (f"{run}/evaluate/model/x", 3),
                     ("kfp/charlie-sft/run-2/train-job/model/x", 9))  # fmt: skip
    assert model_prefix(plain, run) == ("train", f"{run}/train/model/")
    multi = _objects((f"{run}/train-job/exec-1/model/a.safetensors", 1),
                     (f"{run}/train-job/exec-2/model/a.safetensors", 5),  # the retried attempt
                     (f"{run}/train-job/exec-2/metrics", 6))  # fmt: skip
    assert model_prefix(multi, run) == ("train-job", f"{run}/train-job/exec-2/model/")
    assert model_prefix(_objects((f"{run}/train/metrics", 1)), run) is None


def test_fetch_model_flag_names_itself_for_a_root_it_cannot_read():
    with pytest.raises(CharlieError, match=r"^--fetch-model reads S3-compatible storage"):
        bucket_and_prefix("gs://bucket/kfp", "--fetch-model")


@pytest.mark.parametrize(
    ("cron", "normal"),
    [("0 0 3 * * *", "0 0 3 * * *"), (" 0  */15 * * * 1-5 ", "0 */15 * * * 1-5"),
     ("0 0 9 ? * MON-FRI", "0 0 9 ? * MON-FRI"), ("@every 24h", "@every 24h"),
     ("@daily", "@daily")],
)  # fmt: skip
def test_kfp_cron_has_six_fields_seconds_first(cron, normal):
    assert check_cron(cron) == normal


def test_a_unix_cron_is_refused_with_its_six_field_form():
    with pytest.raises(CharlieError, match=r"has 5 fields; KFP's cron has 6 \(second minute hour "
                       r"day-of-month month day-of-week\), e.g. '0 30 2 \* \* 1'\.$"):  # fmt: skip
        check_cron("30 2 * * 1")
