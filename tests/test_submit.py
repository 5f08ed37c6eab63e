"""`charlie submit` against a fake KFP v2beta1 server on 127.0.0.1."""

from __future__ import annotations

import argparse
import shutil
import socket
import time
from pathlib import Path

import pytest

from charlie import cli
from charlie.kubeflow.artifacts import RUN_METRICS
from charlie.stages import submit

from .kfp_server import FakeKfp
from .s3_server import s3_client

REPO = Path(__file__).resolve().parents[1]
COMPILED = REPO / "pipelines" / "sft_pipeline.yaml"
RUNS = "/apis/v2beta1/runs"


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # kfp.Client reads ~/.config/kfp/context.json; keep the user's out of the tests.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KFP_TOKEN", raising=False)


@pytest.fixture
def package(tmp_path: Path) -> Path:
    path = tmp_path / "sft_pipeline.yaml"
    shutil.copy(COMPILED, path)
    return path


def _main(*argv: str) -> int:
    return cli.main(["submit", *argv])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dry_run_prints_and_calls_no_server(package, capsys):
    with FakeKfp() as server:
        code = _main(
            "--host", server.url, "--package", str(package), "--experiment", "exp1",
            "--param", "smoke_test=true", "--param", "eval_limit=5", "--dry-run",
        )  # fmt: skip
        assert server.requests == []
    out = capsys.readouterr().out
    assert code == 0
    assert "charlie-sft" in out and "exp1" in out and server.url in out
    assert '"eval_limit": 5' in out and '"smoke_test": true' in out
    assert "version:" in out


def test_submit_uploads_the_compiled_yaml_and_starts_the_run(package, capsys, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "s3cret-token")
    with FakeKfp() as server:
        code = _main(
            "--host", server.url, "--package", str(package), "--experiment", "nightly",
            "--param", "smoke_test=true", "--param", "eval_limit=5",
            "--param", "train_start=2024-01-02", "--param", "input_dir=123",
        )  # fmt: skip
        assert code == 0
        uploads = server.calls("POST", "/apis/v2beta1/pipelines/upload")
        assert len(uploads) == 1
        assert uploads[0].query["name"] == "charlie-sft"
        assert uploads[0].files["uploadfile"] == package.read_bytes()
        assert server.calls("POST", "/apis/v2beta1/experiments")[0].body["display_name"] == (
            "nightly"
        )
        (created,) = server.calls("POST", RUNS)
        assert created.body["runtime_config"]["parameters"] == {
            "smoke_test": True,
            "eval_limit": 5,
            "train_start": "2024-01-02",
            "input_dir": "123",
        }
        pipeline_id = next(iter(server.pipelines))
        version = server.versions[pipeline_id][0]
        ref = created.body["pipeline_version_reference"]
        assert ref == {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": version["pipeline_version_id"],
        }
        assert created.body["experiment_id"] == next(iter(server.experiments))
        assert all(r.headers.get("authorization") == "Bearer s3cret-token" for r in server.requests)
        run_id = next(iter(server.runs))
    captured = capsys.readouterr()
    assert run_id in captured.out and f"{server.url}/#/runs/details/{run_id}" in captured.out
    assert "s3cret-token" not in captured.out + captured.err


def test_second_submit_uploads_a_new_version_and_reuses_the_experiment(package):
    with FakeKfp() as server:
        assert _main("--host", server.url, "--package", str(package)) == 0
        assert _main("--host", server.url, "--package", str(package)) == 0
        assert len(server.calls("POST", "/apis/v2beta1/pipelines/upload")) == 1
        (again,) = server.calls("POST", "/apis/v2beta1/pipelines/upload_version")
        pipeline_id = next(iter(server.pipelines))
        assert again.query["pipelineid"] == pipeline_id
        assert again.files["uploadfile"] == package.read_bytes()
        assert len(server.pipelines) == 1 and len(server.versions[pipeline_id]) == 2
        assert len(server.experiments) == 1
        runs = server.calls("POST", RUNS)
        new_version = server.versions[pipeline_id][1]["pipeline_version_id"]
        assert runs[1].body["pipeline_version_reference"]["pipeline_version_id"] == new_version
        # version name: <git short hash>[-dirty]-<UTC timestamp>
        assert again.query["name"].endswith("Z") and "-" in again.query["name"]


def test_wait_exits_zero_on_success(package, capsys):
    with FakeKfp(states=["PENDING", "RUNNING", "SUCCEEDED"]) as server:
        code = _main(
            "--host", server.url, "--package", str(package), "--wait", "--poll-interval", "0.01"
        )
        assert len(server.calls("GET", f"{RUNS}/{next(iter(server.runs))}")) == 3
    assert code == 0
    assert "succeeded" in capsys.readouterr().out


@pytest.mark.parametrize("final", ["FAILED", "CANCELED"])
def test_wait_exits_one_on_failure_with_a_sentence(package, capsys, final):
    with FakeKfp(states=["RUNNING", final]) as server:
        code = _main(
            "--host", server.url, "--package", str(package), "--wait", "--poll-interval", "0.01"
        )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert final in err and err.endswith(".") and "Traceback" not in err


def test_wait_times_out(package, capsys):
    with FakeKfp(states=["RUNNING"]) as server:
        started = time.monotonic()
        code = _main(
            "--host", server.url, "--package", str(package), "--wait",
            "--timeout", "0.2", "--poll-interval", "0.05",
        )  # fmt: skip
        assert time.monotonic() - started < 10
    assert code == 1
    assert "did not finish within 0.2 seconds." in capsys.readouterr().err


def test_unknown_param_is_one_sentence_listing_the_parameters(package, capsys):
    with FakeKfp() as server:
        code = _main("--host", server.url, "--package", str(package), "--param", "epochs=3")
        assert server.requests == []
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.endswith(".")
    assert "epochs" in err and "smoke_test" in err and "eval_limit" in err


def test_badly_typed_param_is_refused(package, capsys):
    assert _main("--host", "http://127.0.0.1:9", "--package", str(package),
                 "--param", "eval_limit=many", "--dry-run") == 2  # fmt: skip
    assert "NUMBER_INTEGER" in capsys.readouterr().err


def test_unreachable_host_is_one_sentence_exit_two(package, capsys):
    host = f"http://127.0.0.1:{_free_port()}"
    code = _main("--host", host, "--package", str(package))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.endswith(".")
    assert "cannot reach the KFP server" in err and host in err


def test_run_can_be_called_directly(package, capsys):
    parser = argparse.ArgumentParser()
    submit.add_arguments(parser)
    with FakeKfp() as server:
        args = parser.parse_args(["--host", server.url, "--package", str(package), "--dry-run"])
        assert submit.run(args) == 0
        assert server.requests == []


RUN_ID = "2b6f8a3c-1111-4222-8333-444455556666"


def _put_run_artifacts(client, bucket: str, run_prefix: str) -> dict[str, bytes]:
    """A finished run's artifacts as the KFP launcher lays them out: <run>/<task>/<output>."""
    body = {path: f'{{"from": "{path}"}}\n'.encode() for path in RUN_METRICS}
    for path, (task, output, file) in RUN_METRICS.items():
        key = f"{run_prefix}/{task}/{output}" + (f"/{file}" if file else "")
        client.put_object(Bucket=bucket, Key=key, Body=body[path])
    # Neighbours that must not be picked: another run, another output of the same task.
    client.put_object(Bucket=bucket, Key=f"{run_prefix}/evaluate/metrics", Body=b"{}")
    client.put_object(Bucket=bucket, Key="kfp/charlie-sft/other-run/evaluate/results/"
                      "eval_metrics.json", Body=b"{}")  # fmt: skip
    return body


def test_wait_fetch_metrics_downloads_the_runs_metrics_from_s3(
    package, s3_endpoint, tmp_path, monkeypatch, capsys
):
    """After a successful run its dvc.yaml metrics files come from the artifact store (moto)."""
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="artifacts")
    body = _put_run_artifacts(client, "artifacts", f"kfp/charlie-sft/{RUN_ID}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "params.yaml").write_text("parse:\n  report: reports/parse.json\n")
    monkeypatch.chdir(workspace)
    with FakeKfp(run_id=RUN_ID) as server:
        code = _main(
            "--host", server.url, "--package", str(package), "--pipeline-root",
            "s3://artifacts/kfp?region=us-east-1", "--wait", "--poll-interval", "0.01",
            "--fetch-metrics",
        )  # fmt: skip
        (created,) = server.calls("POST", RUNS)
    assert code == 0, capsys.readouterr().err
    assert created.body["runtime_config"]["pipeline_root"] == "s3://artifacts/kfp?region=us-east-1"
    written = {
        "reports/parse.json": body["${parse.report}"],  # where params.yaml puts it
        "data/hf_datasets/dataset_card.json": body["${dataset.card}"],  # the default
        "results/eval_metrics.json": body["results/eval_metrics.json"],
        "backtests/baseline_metrics.json": body["backtests/baseline_metrics.json"],
    }
    assert {path: (workspace / path).read_bytes() for path in written} == written
    assert "fetched 4 metrics files" in capsys.readouterr().out


def test_fetch_metrics_names_what_the_run_lacks(package, s3_endpoint, tmp_path, monkeypatch,
                                                capsys):  # fmt: skip
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="artifacts")
    client.put_object(Bucket="artifacts", Key=f"charlie-sft/{RUN_ID}/parse/report", Body=b"{}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.chdir(tmp_path)
    with FakeKfp(run_id=RUN_ID) as server:
        code = _main("--host", server.url, "--package", str(package), "--pipeline-root",
                     "minio://artifacts", "--wait", "--poll-interval", "0.01", "--fetch-metrics")  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert f"under minio://artifacts/charlie-sft/{RUN_ID}/ hold no dataset/card/dataset_" in err
    assert "evaluate/results/eval_metrics.json, backtest/portfolio/baseline_metrics.json." in err
    assert not (tmp_path / "data").exists()  # all or nothing


def test_fetch_metrics_refuses_what_it_cannot_read_before_submitting(package, capsys):
    with FakeKfp() as server:
        no_wait = _main("--host", server.url, "--package", str(package), "--fetch-metrics")
        gcs = _main("--host", server.url, "--package", str(package), "--wait",
                    "--fetch-metrics", "--pipeline-root", "gs://bucket/kfp")  # fmt: skip
        assert server.requests == []
    err = capsys.readouterr().err
    assert no_wait == gcs == 2
    assert "--fetch-metrics needs --wait" in err
    assert "'gs://bucket/kfp' is not an s3:// or minio:// URI" in err
