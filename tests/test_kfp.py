"""The compiled Kubeflow pipeline: fresh, specified executor by executor, and runnable on the host."""

import argparse
import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")
pytest.importorskip("kfp.kubernetes")

from components.images import CPU_IMAGE, CUDA_IMAGE

from charlie.kubeflow import package
from tests.kfp_harness import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_YAML = ROOT / package.PIPELINE_YAML
STAGES = ["parse", "dataset", "init-model", "tokenize", "train", "evaluate", "backtest"]


def _docs(path: Path) -> tuple[dict, dict]:
    pipeline, platform = yaml.safe_load_all(path.read_text(encoding="utf-8"))
    return pipeline, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    return _docs(
        package.compile_pipeline(ROOT, tmp_path_factory.mktemp("kfp") / "sft_pipeline.yaml")
    )


def test_committed_yaml_is_a_fresh_compile(compiled):
    assert _docs(PIPELINE_YAML) == compiled, (
        "pipelines/sft_pipeline.yaml is stale: run make pipeline"
    )


def test_every_stage_runs_its_charlie_command_on_the_pinned_image(compiled):
    pipeline, _ = compiled
    executors = pipeline["deploymentSpec"]["executors"]
    assert sorted(executors) == sorted(f"exec-{s}" for s in STAGES)
    for stage in STAGES:
        container = executors[f"exec-{stage}"]["container"]
        command = container["command"]
        program = "charlie.cli" if stage == "train" else "charlie"  # train: under DeepSpeed
        assert command[command.index(program) + 1] == stage
        assert container["image"] == (CUDA_IMAGE if stage == "train" else CPU_IMAGE)
        assert container["image"].rsplit(":", 1)[1] not in ("", "latest")
        assert container["resources"]["resourceCpuRequest"]
        assert container["resources"]["resourceMemoryLimit"]


def test_the_trainer_requests_gpus_on_the_gpu_pool(compiled):
    pipeline, platform = compiled
    train = pipeline["deploymentSpec"]["executors"]["exec-train"]["container"]
    resources = train["resources"]
    assert resources["accelerator"] == {
        "resourceCount": "{{$.inputs.parameters['pipelinechannel--gpu_count']}}",
        "resourceType": "{{$.inputs.parameters['pipelinechannel--gpu_resource']}}",
    }
    # Open-source KFP's driver turns the accelerator type into the resource name itself.
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert params["gpu_resource"]["defaultValue"] == "nvidia.com/gpu"
    assert (resources["resourceCpuRequest"], resources["resourceMemoryLimit"]) == ("8", "64Gi")
    assert "--smoke-test={{$.inputs.parameters['smoke_test']}}" in train["args"]
    k8s = platform["exec-train"]
    assert k8s["nodeSelector"] == {
        "nodeSelectorJson": {"componentInputParameter": "gpu_node_selector"}
    }
    assert k8s["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert k8s["pvcMount"][0]["mountPath"] == "/mnt/charlie-cache"
    assert k8s["pvcMount"][0]["pvcNameParameter"] == {"componentInputParameter": "cache_pvc"}
    assert {"name": "HF_HOME", "value": "/mnt/charlie-cache/huggingface"} in train["env"]
    assert int(k8s["activeDeadlineSeconds"]) == 24 * 3600
    assert k8s["emptyDirMounts"] == [
        {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory"}
    ]  # NCCL's shared memory
    for stage in STAGES:
        if stage != "train":
            container = pipeline["deploymentSpec"]["executors"][f"exec-{stage}"]["container"]
            assert "accelerator" not in container["resources"]
            assert "nodeSelector" not in platform.get(f"exec-{stage}", {})


def test_the_trainer_runs_one_deepspeed_process_per_gpu_and_checkpoints_on_the_pvc(compiled):
    pipeline, platform = compiled
    train = pipeline["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train["command"][:5] == [
        "deepspeed", "--num_gpus={{$.inputs.parameters['num_gpus']}}", "--no_local_rank",
        "--module", "charlie.cli",
    ]  # fmt: skip
    task = pipeline["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]
    assert task["num_gpus"] == {"componentInputParameter": "gpu_count"}  # = the GPUs requested
    checkpoints = train["args"][train["args"].index("--checkpoint-dir") + 1]
    root = task["checkpoint_root"]["runtimeValue"]["constant"]
    mount = platform["exec-train"]["pvcMount"][0]["mountPath"]
    assert root.startswith(mount + "/")  # on the PVC: it outlives the pod
    assert task["run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}
    assert checkpoints == (
        "{{$.inputs.parameters['checkpoint_root']}}/{{$.inputs.parameters['run_id']}}"
    )  # one folder per run: a retried attempt finds its own checkpoints, a new run starts fresh


def test_results_reach_the_kfp_ui_as_typed_artifacts(compiled):
    pipeline, _ = compiled
    executors = pipeline["deploymentSpec"]["executors"]
    ui = {
        stage: {
            name: spec["artifactType"]["schemaTitle"]
            for name, spec in pipeline["components"][f"comp-{stage}"]["outputDefinitions"][
                "artifacts"
            ].items()
            if spec["artifactType"]["schemaTitle"]
            in {"system.Metrics", "system.HTML", "system.Markdown", "system.ClassificationMetrics"}
        }
        for stage in STAGES
    }
    assert ui == {
        "parse": {"metrics": "system.Metrics"},
        "dataset": {"metrics": "system.Metrics", "card_summary": "system.Markdown"},
        "init-model": {},
        "tokenize": {},
        "train": {"metrics": "system.Metrics"},
        "evaluate": {"metrics": "system.Metrics", "summary": "system.Markdown",
                     "confusion_matrix": "system.ClassificationMetrics"},
        "backtest": {"metrics": "system.Metrics", "report": "system.HTML"},
    }  # fmt: skip
    for stage, outputs in ui.items():
        args = executors[f"exec-{stage}"]["container"]["args"]
        if outputs:  # the stage fills them from the executor input
            assert args[args.index("--kfp-executor-input") + 1] == "{{$}}", stage
        else:
            assert "{{$}}" not in args, stage


def test_secrets_come_from_kubernetes_secrets_only(compiled):
    _, platform = compiled
    envs = {
        stage: {
            m["envVar"]: s["secretName"]
            for s in platform.get(f"exec-{stage}", {}).get("secretAsEnv", [])
            for m in s["keyToEnv"]
        }
        for stage in STAGES
    }
    assert envs["train"] == {
        "HF_TOKEN": "charlie-hf",
        "AWS_ACCESS_KEY_ID": "charlie-s3",
        "AWS_SECRET_ACCESS_KEY": "charlie-s3",
    }
    assert envs["dataset"] == envs["backtest"] == {"EODHD_API_KEY": "charlie-eodhd"}
    text = PIPELINE_YAML.read_text(encoding="utf-8")
    for name in ("HF_TOKEN", "EODHD_API_KEY", "AWS_SECRET_ACCESS_KEY"):
        assert f"name: {name}" not in text  # never a plain env value


def test_caching_and_retries(compiled):
    pipeline, _ = compiled
    tasks = pipeline["root"]["dag"]["tasks"]
    for stage in STAGES:
        caching = tasks[stage].get("cachingOptions", {})
        assert caching.get("enableCache", False) is (stage != "train"), stage
    assert tasks["dataset"]["retryPolicy"] == {
        "maxRetryCount": 3,
        "backoffDuration": "30s",
        "backoffFactor": 2.0,
        "backoffMaxDuration": "600s",
    }
    assert tasks["train"]["retryPolicy"] == {
        "maxRetryCount": 2,
        "backoffDuration": "60s",
        "backoffFactor": 2.0,
        "backoffMaxDuration": "600s",
    }  # a preempted GPU node: the retry resumes from the PVC's checkpoints
    assert all("retryPolicy" not in tasks[s] for s in STAGES if s not in ("dataset", "train"))


def test_train_flags_override_the_config(monkeypatch, tmp_path):
    from charlie.cli import build_parser
    from charlie.training import sft

    seen = {}

    def fake_train(cfg, **kwargs):
        seen.update(cfg=cfg, **kwargs)
        return {"global_step": 0}

    monkeypatch.setattr(sft, "train", fake_train)
    monkeypatch.setenv("CHARLIE_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.chdir(ROOT)
    argv = ["train", "--config", "configs/sft_tiny_lora_cpu.yaml", "--base-model", "/m",
            "--dataset-dir", "/d", "--output-dir", "/o", "--smoke-test=false"]  # fmt: skip
    args = build_parser(argv).parse_args(argv)
    assert args._run(args) == 0
    assert (seen["cfg"].base_model, seen["cfg"].dataset_dir, seen["cfg"].output_dir) == (
        "/m", Path("/d"), Path("/o"),
    )  # fmt: skip
    assert seen["smoke_test"] is False

    argv = ["train", "--config", "configs/sft_tiny_lora_cpu.yaml", "--smoke-test"]
    args = build_parser(argv).parse_args(argv)
    assert args._run(args) == 0
    assert seen["smoke_test"] is True
    assert seen["cfg"].output_dir == Path("checkpoints/sft")  # params.yaml train.output_dir
    with pytest.raises(SystemExit):
        build_parser(["train"]).parse_args(["train", "--smoke-test=maybe"])
    assert isinstance(args, argparse.Namespace)


@pytest.mark.slow
def test_the_compiled_pipeline_runs_on_the_host(tmp_path):
    """Every executor's command, placeholders resolved, in DAG order on the bundled sample."""
    job = "5f0c4a8e-0000-4000-8000-000000000001"
    # A 10-step model writes few actions: its evaluation passes no parse-rate gate, so the
    # smoke run lowers the floor and forces the backtest (the gates have their own tests).
    eval_config = tmp_path / "eval_smoke.yaml"
    smoke = {
        **yaml.safe_load((ROOT / "configs/eval_config.yaml").read_text()),
        "min_parse_rate": 0.0,
    }
    eval_config.write_text(yaml.safe_dump(smoke))
    runs = run_pipeline(
        PIPELINE_YAML,
        tmp_path,
        {
            "config": "configs/sft_tiny_lora_cpu.yaml",
            "smoke_test": True,
            "eval_limit": 16,
            "eval_config": str(eval_config),
            "force_backtest": True,
        },
        cwd=ROOT,
        env={"CHARLIE_LOG_DIR": str(tmp_path / "logs")},
        retry={"train"},  # its pod is lost after training: KFP runs it again
        job_id=job,
    )

    assert list(runs) == STAGES
    for run in runs.values():
        for name, path in run.outputs.items():
            assert path.exists() and (path.is_file() or any(path.iterdir())), (run.name, name)
    out = {name: run.outputs for name, run in runs.items()}
    assert runs["dataset"].inputs["records"] == out["parse"]["records"]
    assert runs["train"].inputs["base_model"] == out["init-model"]["model"]
    assert runs["tokenize"].inputs["base_model"] == out["init-model"]["model"]
    assert runs["train"].inputs["tokenized"] == out["tokenize"]["tokenized"]
    assert runs["evaluate"].inputs["model"] == out["train"]["model"]
    assert runs["backtest"].inputs["results"] == out["evaluate"]["results"]
    assert (out["dataset"]["card"] / "dataset_card.json").is_file()
    assert (out["train"]["model"] / "merged" / "config.json").is_file()
    assert (out["train"]["model"] / "manifest.json").is_file()
    assert (out["evaluate"]["results"] / "eval_metrics.json").is_file()
    assert (out["backtest"]["portfolio"] / "baseline_report.html").is_file()

    # A retried train attempt resumes from the run's checkpoints on the PVC.
    checkpoints = tmp_path / "pvc" / "charlie-cache" / "checkpoints" / job
    assert runs["train"].attempts == 2
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-10"]
    assert f"resuming from {checkpoints / 'checkpoint-10'}" in runs["train"].log
    assert not list(out["train"]["model"].glob("checkpoint-*"))  # not in the output artifact

    # What the KFP UI shows: the launcher merges this metadata from the executor output.
    meta = {name: run.metadata for name, run in runs.items()}
    report = json.loads((out["parse"]["report"]).read_text())
    assert meta["parse"]["metrics"] == report["totals"]
    card = json.loads((out["dataset"]["card"] / "dataset_card.json").read_text())
    assert meta["dataset"]["metrics"]["records_test"] == card["records"]["test"]
    assert (
        out["dataset"]["card_summary"].read_text()
        == (out["dataset"]["card"] / "dataset_card.md").read_text()
    )
    assert meta["train"]["metrics"]["global_step"] == 10
    assert meta["train"]["metrics"]["eval_loss"] > 0

    results = json.loads((out["evaluate"]["results"] / "eval_metrics.json").read_text())
    assert meta["evaluate"]["metrics"]["accuracy"] == results["classification"]["accuracy"]
    assert meta["evaluate"]["metrics"]["n"] == 16
    assert "baseline_momentum_20d_sign_accuracy" in meta["evaluate"]["metrics"]
    from kfp.dsl import ClassificationMetrics
    from kfp.dsl.executor import create_artifact_instance

    matrix = results["classification"]["confusion_matrix"]
    expected = ClassificationMetrics()
    expected.log_confusion_matrix(matrix["labels"], matrix["matrix"])
    confusion = create_artifact_instance({
        "type": {"schemaTitle": "system.ClassificationMetrics"},
        "uri": str(out["evaluate"]["confusion_matrix"]),
        "metadata": meta["evaluate"]["confusion_matrix"],
    })  # fmt: skip
    assert isinstance(confusion, ClassificationMetrics)
    assert confusion.metadata == expected.metadata
    assert sum(map(sum, matrix["matrix"])) == 16
    assert out["evaluate"]["summary"].read_text().startswith("# Evaluation on the test split")

    backtest = json.loads((out["backtest"]["portfolio"] / "baseline_metrics.json").read_text())
    for side in ("strategy", "benchmark"):  # undefined ratios (null in the JSON) are left out
        for key in ("total_return", "sharpe", "max_drawdown", "n_trades"):
            assert meta["backtest"]["metrics"].get(f"{side}_{key}") == backtest[side][key]
    html = out["backtest"]["report"].read_text()
    assert html == (out["backtest"]["portfolio"] / "baseline_report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
