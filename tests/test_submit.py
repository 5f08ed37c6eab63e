"""`charlie submit` against a fake KFP v2beta1 server on 127.0.0.1."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import time
from pathlib import Path

import pytest

from charlie import cli
from charlie.io import MARKER
from charlie.kubeflow.artifacts import OPTIONAL_METRICS, RUN_METRICS
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
            "--param", "train_start=2024-01-02", "--param", "theses=123",
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
            "theses": "123",
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


def _put_run_artifacts(client, bucket: str, run_prefix: str, grpo: bool = True) -> dict[str, bytes]:
    """A finished run's artifacts as the KFP launcher lays them out: <run>/<task>/<output>
    (with ``grpo``, also the GRPO model's evaluation and backtest and the comparison)."""
    committed = {"${parse.report}": "data/jsonl/parse_report.json",
                 "${dataset.card}": "data/hf_datasets/dataset_card.json"}  # fmt: skip
    wanted = [p for p in RUN_METRICS if grpo or p not in OPTIONAL_METRICS]
    body = {path: (REPO / committed.get(path, path)).read_bytes() for path in wanted}
    for path in wanted:
        task, output, file = RUN_METRICS[path]
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
        "results/grpo/eval_metrics.json": body["results/grpo/eval_metrics.json"],
        "backtests/grpo/baseline_metrics.json": body["backtests/grpo/baseline_metrics.json"],
        "results/compare/comparison.json": body["results/compare/comparison.json"],
    }
    assert {path: (workspace / path).read_bytes() for path in written} == written
    # each report's headline, the file dvc.yaml declares as the metric, derived beside it
    for path, name in (("reports/parse_headline.json", "data/jsonl/parse_headline.json"),
                       ("data/hf_datasets/dataset_headline.json",) * 2,
                       ("results/eval_headline.json",) * 2,
                       ("backtests/baseline_headline.json",) * 2,
                       ("results/grpo/eval_headline.json",) * 2,
                       ("backtests/grpo/baseline_headline.json",) * 2,
                       ("results/compare/compare_headline.json",) * 2):  # fmt: skip
        assert json.loads((workspace / path).read_text()) == json.loads((REPO / name).read_text())
    assert "fetched 14 metrics files" in capsys.readouterr().out


def test_a_run_without_grpo_fetches_the_sft_metrics_alone(package, s3_endpoint, tmp_path,
                                                          monkeypatch, capsys):  # fmt: skip
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="artifacts")
    _put_run_artifacts(client, "artifacts", f"kfp/charlie-sft/{RUN_ID}", grpo=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.chdir(tmp_path)
    with FakeKfp(run_id=RUN_ID) as server:
        code = _main("--host", server.url, "--package", str(package), "--pipeline-root",
                     "s3://artifacts/kfp", "--wait", "--poll-interval", "0.01", "--fetch-metrics")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "fetched 8 metrics files" in capsys.readouterr().out
    assert (tmp_path / "results/eval_headline.json").is_file()
    assert not (tmp_path / "results/grpo").exists() and not (tmp_path / "results/compare").exists()


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


# ------------------------------------------------------------------------------ --schedule

RECURRING = "/apis/v2beta1/recurringruns"


def test_schedule_creates_a_recurring_run_instead_of_a_run(package, capsys):
    with FakeKfp() as server:
        code = _main(
            "--host", server.url, "--package", str(package), "--experiment", "nightly",
            "--param", "smoke_test=true", "--pipeline-root", "s3://artifacts/kfp",
            "--schedule", "0 0 3 * * *", "--run-name", "retrain",
        )  # fmt: skip
        assert code == 0, capsys.readouterr().err
        assert server.calls("POST", RUNS) == []
        (created,) = server.calls("POST", RECURRING)
        body = created.body
        assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
        assert body["mode"] == "ENABLE" and body["no_catchup"] is True
        assert int(body["max_concurrency"]) == 1
        assert body["display_name"] == "retrain"
        assert body["experiment_id"] == next(iter(server.experiments))
        pipeline_id = next(iter(server.pipelines))
        assert body["pipeline_version_reference"] == {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": server.versions[pipeline_id][0]["pipeline_version_id"],
        }
        assert body["runtime_config"] == {
            "parameters": {"smoke_test": True},
            "pipeline_root": "s3://artifacts/kfp",
        }
        (job_id,) = server.recurring_runs
        assert server.recurring_runs[job_id]["status"] == "ENABLED"
    out = capsys.readouterr().out
    assert f"recurring run id:  {job_id}" in out
    assert f"{server.url}/#/recurringrun/details/{job_id}" in out
    assert "run id:  " not in out.replace("recurring run id:  ", "")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # kfp.Client's note on server versions
def test_the_fake_server_lists_and_gets_recurring_runs_as_kfp_client_reads_them(package):
    import kfp

    with FakeKfp() as server:
        assert _main("--host", server.url, "--package", str(package),
                     "--schedule", "@every 24h") == 0  # fmt: skip
        (job_id,) = server.recurring_runs
        client = kfp.Client(host=server.url)
        got = client.get_recurring_run(job_id)
        assert got.trigger.cron_schedule.cron == "@every 24h" and got.status == "ENABLED"
        listed = client.list_recurring_runs()
        assert [r.recurring_run_id for r in listed.recurring_runs] == [job_id]


@pytest.mark.parametrize(
    ("cron", "sentence"),
    [
        ("0 3 * * *", "--schedule '0 3 * * *' has 5 fields; KFP's cron has 6 (second minute hour "
         "day-of-month month day-of-week), e.g. '0 0 3 * * *'."),
        ("0 0 0 3 * * *", "--schedule '0 0 0 3 * * *' has 7 fields; KFP's cron has 6"),
        ("0 0 3 * * fri;", "--schedule '0 0 3 * * fri;': 'fri;' is not a cron field."),
    ],
)  # fmt: skip
def test_a_cron_of_the_wrong_shape_is_one_sentence_before_any_call(package, capsys, cron,
                                                                   sentence):  # fmt: skip
    with FakeKfp() as server:
        code = _main("--host", server.url, "--package", str(package), "--schedule", cron)
        assert server.requests == []
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.endswith(".")
    assert sentence in err


def test_schedule_excludes_wait(package, capsys):
    with FakeKfp() as server:
        code = _main("--host", server.url, "--package", str(package), "--schedule",
                     "0 0 3 * * *", "--wait")  # fmt: skip
        assert server.requests == []
    assert code == 2
    assert "--schedule creates a recurring run, which has no single end to wait for" in (
        capsys.readouterr().err
    )


def test_dry_run_shows_the_schedule(package, capsys):
    assert _main("--host", "http://127.0.0.1:9", "--package", str(package), "--dry-run",
                 "--schedule", "0 30 2 * * 1-5") == 0  # fmt: skip
    assert "schedule:   0 30 2 * * 1-5 (a recurring run" in capsys.readouterr().out


# ---------------------------------------------------------------------------- --fetch-model

SOURCE = {"kind": "s3", "uri": "s3://raw/theses/", "version": "3f2a9c"}


def _git_dvc_workspace(root: Path, s3_endpoint: str, bucket: str) -> Path:
    from .test_dvc import run

    root.mkdir()
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "remote", "add", "-d", "s3", f"s3://{bucket}/charlie"], root)
    run(["dvc", "remote", "modify", "s3", "endpointurl", s3_endpoint], root)
    return root


def _put_model(client, run_prefix: str, task: str = "train", execution: str = "") -> dict:
    where = f"{run_prefix}/{task}/" + (f"{execution}/" if execution else "") + "model"
    files = {
        "adapter_model.safetensors": b"\x00adapter-weights",
        "adapter_config.json": b'{"base_model_name_or_path": "/mnt/x"}',
        "base_model.json": b'{"ref": "Org/Name", "revision": "abc", "source": "hub"}',
        "merged/config.json": b'{"model_type": "llama"}',
        "merged/model.safetensors": b"\x00merged-weights",
    }
    for name, body in files.items():
        client.put_object(Bucket="artifacts", Key=f"{where}/{name}", Body=body)
    return files


@pytest.mark.slow
def test_wait_fetch_model_downloads_the_model_and_tracks_it_with_dvc(
    package, s3_endpoint, tmp_path, monkeypatch, capsys
):
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="artifacts")
    client.create_bucket(Bucket="dvc-store")
    run_prefix = f"kfp/charlie-sft/{RUN_ID}"
    files = _put_model(client, run_prefix)
    client.put_object(Bucket="artifacts", Key=f"{run_prefix}/parse/report",
                      Body=json.dumps({"totals": {}, "source": SOURCE}).encode())  # fmt: skip
    client.put_object(Bucket="artifacts", Key="kfp/charlie-sft/other-run/train/model/x.bin",
                      Body=b"not this run")  # fmt: skip
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    workspace = _git_dvc_workspace(tmp_path / "ws", s3_endpoint, "dvc-store")
    monkeypatch.chdir(workspace)
    with FakeKfp(run_id=RUN_ID) as server:
        code = _main(
            "--host", server.url, "--package", str(package), "--pipeline-root",
            "s3://artifacts/kfp", "--param", "smoke_test=true", "--wait",
            "--poll-interval", "0.01", "--fetch-model", "models/run1", "--push",
        )  # fmt: skip
        pipeline_id = next(iter(server.pipelines))
        version = server.versions[pipeline_id][0]
    out = capsys.readouterr()
    assert code == 0, out.err
    model = workspace / "models" / "run1"
    assert {str(p.relative_to(model)): p.read_bytes() for p in model.rglob("*")
            if p.is_file() and p.name not in ("kfp_run.json", MARKER)} == files  # fmt: skip
    record = json.loads((model / "kfp_run.json").read_text())
    assert record == {
        "run_id": RUN_ID, "run_url": f"{server.url}/#/runs/details/{RUN_ID}",
        "host": server.url, "experiment": "charlie", "pipeline": "charlie-sft",
        "pipeline_id": pipeline_id, "pipeline_version": record["pipeline_version"],
        "pipeline_version_id": version["pipeline_version_id"],
        "code_version": record["code_version"], "parameters": {"smoke_test": True}, "task": "train",
        "model_artifact": f"s3://artifacts/{run_prefix}/train/model/", "data": SOURCE,
    }  # fmt: skip
    assert record["pipeline_version"] == version["display_name"]
    assert record["code_version"].endswith("Z")  # <git short hash>[-dirty]-<UTC timestamp>
    # DVC: DIR.dvc for git, DIR ignored by git, the files in the remote.
    dvc_file = workspace / "models" / "run1.dvc"
    assert "path: run1" in dvc_file.read_text()
    assert "/run1" in (workspace / "models" / ".gitignore").read_text().splitlines()
    pushed = client.list_objects_v2(Bucket="dvc-store").get("KeyCount", 0)
    assert pushed >= len(files) + 1  # every file, kfp_run.json, and the .dir manifest
    assert "data version: 3f2a9c" in out.out
    assert "next: git add models/run1.dvc models/.gitignore && git commit" in out.out


def test_fetch_model_without_a_data_source_records_null(package, s3_endpoint, tmp_path,
                                                         monkeypatch, capsys):  # fmt: skip
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="artifacts")
    run_prefix = f"kfp/charlie-sft/{RUN_ID}"
    _put_model(client, run_prefix, task="train-job", execution="exec-42")
    client.put_object(Bucket="artifacts", Key=f"{run_prefix}/parse/report", Body=b'{"totals": {}}')
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    workspace = tmp_path / "ws"
    (workspace / ".dvc").mkdir(parents=True)
    monkeypatch.chdir(workspace)
    tracked = []
    monkeypatch.setattr(submit, "dvc_track", lambda dest, push: tracked.append((dest, push))
                        or dest.parent / f"{dest.name}.dvc")  # fmt: skip
    with FakeKfp(run_id=RUN_ID) as server:
        code = _main("--host", server.url, "--package", str(package), "--pipeline-root",
                     "s3://artifacts/kfp", "--wait", "--poll-interval", "0.01",
                     "--fetch-model", "model")  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    record = json.loads((workspace / "model" / "kfp_run.json").read_text())
    assert record["data"] is None and record["task"] == "train-job"
    assert record["model_artifact"].endswith(f"{run_prefix}/train-job/exec-42/model/")
    assert (workspace / "model" / "merged" / "model.safetensors").is_file()
    assert tracked == [(Path("model"), False)]
    assert "data version: unknown" in out.out


def test_fetch_model_refuses_before_submitting_without_dvc_or_wait(package, tmp_path,
                                                                    monkeypatch, capsys):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    with FakeKfp() as server:
        no_dvc = _main("--host", server.url, "--package", str(package), "--pipeline-root",
                       "s3://artifacts/kfp", "--wait", "--fetch-model", "model")  # fmt: skip
        no_wait = _main("--host", server.url, "--package", str(package), "--fetch-model", "m")
        push_alone = _main("--host", server.url, "--package", str(package), "--push")
        assert server.requests == []
    err = capsys.readouterr().err
    assert no_dvc == no_wait == push_alone == 2
    assert f"DVC is not initialised in {tmp_path.resolve()} or above it; run `dvc init`" in err
    assert "--fetch-model needs --wait" in err
    assert "--push pushes the model --fetch-model fetches" in err


def test_fetch_model_says_when_the_run_has_no_model(package, s3_endpoint, tmp_path, monkeypatch,
                                                    capsys):  # fmt: skip
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="artifacts")
    client.put_object(Bucket="artifacts", Key=f"kfp/charlie-sft/{RUN_ID}/parse/report", Body=b"{}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    with FakeKfp(run_id=RUN_ID) as server:
        code = _main("--host", server.url, "--package", str(package), "--pipeline-root",
                     "s3://artifacts/kfp", "--wait", "--poll-interval", "0.01",
                     "--fetch-model", "model")  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.endswith(
        f"the run's artifacts under s3://artifacts/kfp/charlie-sft/{RUN_ID}/ hold no trained "
        "model (the model output of train or train-job)."
    )
    assert not (tmp_path / "model").exists()
