"""The compiled Kubeflow pipeline: fresh, specified executor by executor, and runnable on the host."""

import argparse
import json
import shutil
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
STAGES = ["parse", "dataset", "init-model", "tokenize", "train", "grpo", "evaluate", "backtest",
          "compare"]  # fmt: skip
REPEATS = {"evaluate-2": "evaluate", "backtest-2": "backtest"}  # the GRPO model's, under run_grpo
STEPS = [*STAGES, *REPEATS, "fetch-model", "plan", "train-job"]  # every executor
GPU_STEPS = {"train", "grpo"}  # the trainers: GPU pool, volume, shm, never cached
NEVER_CACHED = {
    "train",
    "grpo",
    "train-job",
    "fetch-model",
}  # fetch-model: its volume copy may be gone  # the only pod that requests GPUs (train-job's nodes are its TrainJob's)


def _docs(path: Path) -> tuple[dict, dict]:
    pipeline, platform = yaml.safe_load_all(path.read_text(encoding="utf-8"))
    return pipeline, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(pipeline: dict) -> dict[str, dict]:
    """Every task of the pipeline, in the root DAG or a condition's, by name."""
    dags = [pipeline["root"]["dag"]]
    dags += [c["dag"] for c in pipeline["components"].values() if "dag" in c]
    tasks = [(name, task) for dag in dags for name, task in dag["tasks"].items()]
    assert len({n for n, _ in tasks}) == len(tasks), "task names repeat across DAGs"
    return dict(tasks)


def _holder(pipeline: dict, task: str) -> str:
    """The name of the task whose DAG holds ``task`` (a condition, or the branches around it)."""
    component = next(c for c, comp in pipeline["components"].items()
                     if "dag" in comp and task in comp["dag"]["tasks"])  # fmt: skip
    return next(n for n, t in _tasks(pipeline).items() if t["componentRef"]["name"] == component)


def _branch(pipeline: dict, task: str) -> str:
    """The trigger condition of the condition DAG that holds ``task``."""
    return _tasks(pipeline)[_holder(pipeline, task)]["triggerPolicy"]["condition"]


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
    assert sorted(executors) == sorted(f"exec-{s}" for s in STEPS)
    for stage in STEPS:
        container = executors[f"exec-{stage}"]["container"]
        command = container["command"]
        program = "charlie.cli" if stage == "train" else "charlie"  # train: under DeepSpeed
        assert command[command.index(program) + 1] == REPEATS.get(stage, stage)
        assert container["image"] == (CUDA_IMAGE if stage in GPU_STEPS else CPU_IMAGE)
        assert container["image"].rsplit(":", 1)[1] not in ("", "latest")
        assert container["resources"]["resourceCpuRequest"]
        assert container["resources"]["resourceMemoryLimit"]


def test_the_trainer_requests_gpus_on_the_gpu_pool(compiled):
    pipeline, platform = compiled
    train = pipeline["deploymentSpec"]["executors"]["exec-train"]["container"]
    resources = train["resources"]
    # Open-source KFP's driver turns the accelerator type into the resource name itself: the
    # device plugin's resource, never a Vertex AI type. A compile-time constant (kfp 2.17.3
    # passes no parameter that only set_accelerator_type reads into the dsl.If group).
    assert resources["accelerator"] == {
        "resourceCount": "{{$.inputs.parameters['pipelinechannel--gpu_count']}}",
        "resourceType": "nvidia.com/gpu",
        "type": "nvidia.com/gpu",  # the field older drivers read
    }
    tasks = _tasks(pipeline)
    for name, task in tasks.items():  # every parameter a task reads reaches its DAG
        for key, source in task.get("inputs", {}).get("parameters", {}).items():
            channel = source.get("componentInputParameter")
            if channel:
                holder = next((c for c in pipeline["components"].values()
                               if "dag" in c and name in c["dag"]["tasks"]), pipeline["root"])  # fmt: skip
                assert channel in holder["inputDefinitions"]["parameters"], (name, key)
    assert "--smoke-test={{$.inputs.parameters['smoke_test']}}" in train["args"]
    for step in GPU_STEPS:
        container = pipeline["deploymentSpec"]["executors"][f"exec-{step}"]["container"]
        accelerator = container["resources"]["accelerator"]
        assert (accelerator["resourceType"], accelerator["type"]) == ("nvidia.com/gpu",) * 2
        if step == "grpo":  # one process, one GPU (vLLM colocated on the GPU config)
            assert accelerator["resourceCount"] == "1", accelerator
        assert (container["resources"]["resourceCpuRequest"],
                container["resources"]["resourceMemoryLimit"]) == ("8", "64Gi")  # fmt: skip
        k8s = platform[f"exec-{step}"]
        assert k8s["nodeSelector"] == {
            "nodeSelectorJson": {"componentInputParameter": "pipelinechannel--gpu_node_selector"}
        }
        assert k8s["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        assert k8s["pvcMount"][0]["mountPath"] == "/mnt/charlie-cache"
        assert k8s["pvcMount"][0]["pvcNameParameter"] == {
            "componentInputParameter": "pipelinechannel--cache_pvc"
        }
        assert {"name": "HF_HOME", "value": "/mnt/charlie-cache/huggingface"} in container["env"]
        assert int(k8s["activeDeadlineSeconds"]) == 24 * 3600
        assert k8s["emptyDirMounts"] == [
            {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory"}
        ]  # NCCL's shared memory
    for stage in STEPS:
        if stage not in GPU_STEPS:
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
    task = _tasks(pipeline)["train"]["inputs"]["parameters"]
    assert task["num_gpus"] == {"componentInputParameter": "pipelinechannel--gpu_count"}
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
        "grpo": {"metrics": "system.Metrics"},
        "evaluate": {"metrics": "system.Metrics", "summary": "system.Markdown",
                     "confusion_matrix": "system.ClassificationMetrics"},
        "backtest": {"metrics": "system.Metrics", "report": "system.HTML"},
        "compare": {"metrics": "system.Metrics", "summary": "system.Markdown"},
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
        for stage in STEPS
    }
    s3 = {name: "charlie-s3" for name in
          ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")}  # fmt: skip
    hf = {"HF_TOKEN": "charlie-hf"}
    eodhd = {"EODHD_API_KEY": "charlie-eodhd"}
    assert envs == {
        "parse": s3,  # theses from object storage or a DVC remote
        "dataset": {**s3, **eodhd},  # prices: an s3:// folder, or the EODHD API
        "evaluate": {**s3, **eodhd},  # the forward returns' prices, as the backtest reads them
        "backtest": {**s3, **eodhd},
        "evaluate-2": {**s3, **eodhd}, "backtest-2": {**s3, **eodhd},
        "fetch-model": {**s3, **hf},  # a gated hub model, or an s3:// model folder
        "train": {**s3, **hf},
        "grpo": {**s3, **hf, **eodhd},  # the rewards' prices, as the backtest reads them
        "init-model": {}, "tokenize": {}, "plan": {}, "compare": {},
        "train-job": {},  # its TrainJob's nodes read the Secrets by name, not this pod
    }  # fmt: skip
    text = PIPELINE_YAML.read_text(encoding="utf-8")
    for name in ("HF_TOKEN", "EODHD_API_KEY", "AWS_SECRET_ACCESS_KEY"):
        assert f"name: {name}" not in text  # never a plain env value


def test_the_cache_volume_is_mounted_where_data_persists_across_runs(compiled):
    pipeline, platform = compiled
    mounts = {s: [m["mountPath"] for m in platform.get(f"exec-{s}", {}).get("pvcMount", [])]
              for s in STEPS}  # fmt: skip
    on_volume = {s for s, paths in mounts.items() if paths}
    # price answers, downloaded base models, checkpoints and TrainJob inputs outlive a pod
    assert on_volume == {"dataset", "evaluate", "backtest", "evaluate-2", "backtest-2",
                         "fetch-model", "train", "grpo", "train-job"}  # fmt: skip
    assert all(paths == ["/mnt/charlie-cache"] for s, paths in mounts.items() if paths)
    executors = pipeline["deploymentSpec"]["executors"]
    for stage in ("dataset", "evaluate", "backtest", "grpo", "evaluate-2", "backtest-2"):
        args = executors[f"exec-{stage}"]["container"]["args"]
        assert args[args.index("--price-cache-dir") + 1].startswith("{{$.inputs.parameters")
    tasks = _tasks(pipeline)
    assert tasks["dataset"]["inputs"]["parameters"]["price_cache_dir"] == {
        "runtimeValue": {"constant": "/mnt/charlie-cache/prices"}
    }


def test_conditions_pick_the_base_model_and_the_trainer(compiled):
    """init-model only for the demo's tiny model; train in its pod on one node, else a TrainJob."""
    pipeline, _ = compiled
    tiny = "inputs.parameter_values['pipelinechannel--base_model'] == 'tiny'"
    one = "int(inputs.parameter_values['pipelinechannel--num_nodes']) == 1"
    assert _branch(pipeline, "init-model") == tiny
    assert _branch(pipeline, "fetch-model") == f"!({tiny})"
    assert _branch(pipeline, "train") == one
    assert _branch(pipeline, "train-job") == f"!({one})"
    tasks = _tasks(pipeline)
    # tokenize, plan, train and train-job take whichever base model ran (dsl.OneOf) ...
    for name in ("tokenize", "plan", "train", "train-job"):
        source = tasks[name]["inputs"]["artifacts"]["base_model"]
        assert "oneof" in json.dumps(source), name
    # ... and evaluate whichever trainer ran
    assert "oneof" in json.dumps(tasks["evaluate"]["inputs"]["artifacts"]["model"])
    # the plan runs before any GPU is requested: the trainers' branches wait for it
    assert "plan" in tasks[_holder(pipeline, _holder(pipeline, "train"))]["dependentTasks"]
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    defaults = {k: v.get("defaultValue") for k, v in params.items()}
    assert (defaults["base_model"], defaults["num_nodes"]) == ("tiny", 1)  # the demo
    assert defaults["theses"] == "data/samples/xml"  # baked into the CPU image
    assert defaults["price_dir"] == "data/samples/prices"


def test_caching_and_retries(compiled):
    pipeline, _ = compiled
    tasks = _tasks(pipeline)
    for stage in STEPS:
        caching = tasks[stage].get("cachingOptions", {})
        assert caching.get("enableCache", False) is (stage not in NEVER_CACHED), stage
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
    assert tasks["train-job"]["retryPolicy"] == tasks["train"]["retryPolicy"]  # attaches
    assert tasks["grpo"]["retryPolicy"] == tasks["train"]["retryPolicy"]  # resumes the same way
    retried = {"dataset", "train", "grpo", "train-job"}
    assert all("retryPolicy" not in tasks[s] for s in STEPS if s not in retried)


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


SAMPLES = ROOT / "data" / "samples"


def _smoke(tmp_path: Path) -> dict:
    """A 10-step run's parameters. Its model writes few actions and never stops by itself, so
    the smoke evaluation lowers the parse-rate floor and caps generation (the gates and the
    budget have their own tests)."""
    eval_config = tmp_path / "eval_smoke.yaml"
    smoke = {**yaml.safe_load((ROOT / "configs/eval_config.yaml").read_text()),
             "min_parse_rate": 0.0, "max_new_tokens": 48, "bootstrap_samples": 100}  # fmt: skip
    eval_config.write_text(yaml.safe_dump(smoke))
    grpo_config = tmp_path / "grpo_smoke.yaml"
    grpo = {**yaml.safe_load((ROOT / "configs/grpo_tiny_cpu.yaml").read_text()),
            "max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 2,
            "per_device_eval_batch_size": 2, "max_completion_length": 16, "eval_rows": 2,
            "eval_strategy": "no", "save_steps": 1, "report_to": ["none"]}  # fmt: skip
    grpo_config.write_text(yaml.safe_dump(grpo))
    return {"config": "configs/sft_tiny_lora_cpu.yaml", "smoke_test": True, "eval_limit": 8,
            "eval_config": str(eval_config), "force_backtest": True,
            "grpo_config": str(grpo_config)}  # fmt: skip


def _theses(*tickers: str) -> list[Path]:
    """Some of the sample's theses files: a user's own, smaller corpus."""
    return [SAMPLES / "xml" / f"{ticker}.xml" for ticker in tickers]


def meta_steps(run) -> int:
    """The steps a grpo task reports in its KFP metrics (its headline)."""
    return int(run.metadata["metrics"]["steps"])


def _timings(runs) -> None:
    """Each task's wall time, for the log of a slow test (-s shows it)."""
    print(" ".join(f"{name} {run.seconds:.1f}s" for name, run in runs.items()))


@pytest.mark.slow
def test_the_compiled_pipeline_runs_on_the_host(tmp_path):
    """Every executor's command, placeholders resolved, in DAG order on the bundled sample."""
    job = "5f0c4a8e-0000-4000-8000-000000000001"
    runs = run_pipeline(
        PIPELINE_YAML,
        tmp_path,
        {**_smoke(tmp_path), "eval_limit": 16, "run_grpo": True},
        cwd=ROOT,  # the build context: each task runs in its image's /app, built from it
        env={"CHARLIE_LOG_DIR": str(tmp_path / "logs")},
        retry={"train"},  # its pod is lost after training: KFP runs it again
        job_id=job,
    )
    _timings(runs)

    assert list(runs) == ["parse", "dataset", "init-model", "tokenize", "plan", "train",
                          "evaluate", "backtest", "grpo", "evaluate-2", "backtest-2",
                          "compare"]  # fmt: skip
    assert set(runs.skipped) == {"fetch-model", "train-job"}  # the demo: tiny model, one node
    plan_md = (runs["plan"].outputs["report"] / "plan.md").read_text()
    assert "no GPU memory to check" in plan_md and runs["plan"].metadata["metrics"]["fits"] == 1
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
    assert runs["grpo"].inputs["sft_model"] == out["train"]["model"]
    assert runs["grpo"].inputs["sft_dataset"] == out["dataset"]["sft_dataset"]
    assert (out["grpo"]["model"] / "merged" / "merged_from.json").is_file()
    assert meta_steps(runs["grpo"]) == 1
    assert (out["evaluate"]["results"] / "eval_metrics.json").is_file()
    assert (out["backtest"]["portfolio"] / "baseline_report.html").is_file()
    # the GRPO model is evaluated and backtested on the same rows, then compared with SFT's
    assert runs["evaluate-2"].inputs["model"] == out["grpo"]["model"]
    assert runs["backtest-2"].inputs["results"] == out["evaluate-2"]["results"]
    assert {k: v for k, v in runs["compare"].inputs.items() if k != "eval_config"} == {
        "baseline_results": out["evaluate"]["results"],
        "candidate_results": out["evaluate-2"]["results"],
        "baseline_portfolio": out["backtest"]["portfolio"],
        "candidate_portfolio": out["backtest-2"]["portfolio"],
    }
    compared = json.loads((out["compare"]["comparison"] / "comparison.json").read_text())
    assert compared["evaluation"]["rows"] == 16
    assert set(compared["evaluation"]["models"]) == {"sft", "grpo"}
    assert (
        runs["compare"].metadata["metrics"]["sft_accuracy"]
        == (compared["evaluation"]["models"]["sft"]["classification"]["accuracy"])
    )
    assert out["compare"]["summary"].read_text().startswith("# grpo against sft")

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


# --- the user's real job, on the host: own data and model; several nodes ------------------------


def _tiny_model(folder: Path) -> Path:
    """A user's own save_pretrained base model: a small Llama with a tokenizer of its own."""
    from charlie.training.tokens import build_tiny_model, train_tokenizer

    texts = (p.read_text(encoding="utf-8") for p in sorted((SAMPLES / "xml").glob("*.xml")))
    tokenizer = train_tokenizer(texts, vocab_size=2048)
    model = build_tiny_model(tokenizer, hidden_size=64, num_layers=1, num_heads=2,
                             num_kv_heads=1, intermediate_size=128, max_positions=1024,
                             seed=3)  # fmt: skip
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_run_on_the_users_theses_prices_and_base_model(tmp_path, s3_endpoint, monkeypatch):
    """Theses and a base model from object storage, prices from the EODHD API: no sample."""
    from tests.eodhd_server import FakeEodhd, bars_from_csv
    from tests.s3_server import s3_client

    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket="desk")
    for path in _theses("ACME", "BOLT"):
        s3.put_object(Bucket="desk", Key=f"raw_xml/{path.name}", Body=path.read_bytes())
    model = _tiny_model(tmp_path / "own-model")
    for path in sorted(model.iterdir()):
        s3.put_object(Bucket="desk", Key=f"models/own-llama/{path.name}", Body=path.read_bytes())

    with FakeEodhd(bars_from_csv(SAMPLES / "prices"), api_key="test-key") as eodhd:
        env = {"CHARLIE_LOG_DIR": str(tmp_path / "logs"), "AWS_ENDPOINT_URL": s3_endpoint,
               "EODHD_API_KEY": "test-key", "CHARLIE_PRICES__EODHD__BASE_URL": eodhd.url}  # fmt: skip
        arguments = {**_smoke(tmp_path), "theses": "s3://desk/raw_xml/",
                     "price_providers": "eodhd", "base_model": "s3://desk/models/own-llama/"}  # fmt: skip
        runs = run_pipeline(PIPELINE_YAML, tmp_path, arguments, cwd=ROOT, env=env)
        fetched_first = len(eodhd.requests)
    _timings(runs)

    assert "init-model" not in runs and "init-model" in runs.skipped  # the demo model is not built
    assert list(runs) == ["parse", "dataset", "fetch-model", "tokenize", "plan", "train",
                          "evaluate", "backtest"]  # fmt: skip
    report = json.loads(runs["parse"].outputs["report"].read_text())
    assert report["source"]["kind"] == "s3" and report["source"]["uri"] == "s3://desk/raw_xml/"
    assert report["totals"]["records"] > 0
    card = json.loads((runs["dataset"].outputs["card"] / "dataset_card.json").read_text())
    assert {row["provider"] for row in card["price_sources"]} == {"eodhd"}
    assert fetched_first > 0  # every price came over HTTP ...
    cache = tmp_path / "pvc" / "charlie-cache" / "prices"
    assert any(cache.rglob("*.parquet"))  # ... and stays on the volume for the next run

    # The trained adapter's base is the user's model, fetched onto the volume once.
    reference = runs["fetch-model"].outputs["model"]
    assert not list(reference.glob("*.safetensors"))  # the weights never enter the artifact store
    trained = runs["train"].outputs["model"]
    base = json.loads((trained / "base_model.json").read_text())
    assert base["ref"] == "s3://desk/models/own-llama/" and base["source"] == "s3"
    assert Path(base["path"]).is_relative_to(tmp_path / "pvc" / "charlie-cache")
    assert (Path(base["path"]) / "model.safetensors").read_bytes() == (
        model / "model.safetensors"
    ).read_bytes()
    adapter = json.loads((trained / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == base["path"]
    assert json.loads((trained / "merged" / "config.json").read_text())["hidden_size"] == 64


@pytest.mark.slow
def test_a_two_node_run_trains_through_a_trainjob(tmp_path, monkeypatch):
    """num_nodes=2: the launcher submits a TrainJob the fake API runs as two torchrun nodes."""
    from tests.k8s_server import FakeKube
    from tests.kfp_harness import PROGRAMS, image_layout

    nodes = image_layout(ROOT / "images/charlie-cuda/Dockerfile", ROOT, tmp_path / "node-app")

    def on_this_host(command: list[str]) -> list[str]:
        return [str(Path(PROGRAMS["charlie"]).with_name(command[0])), *command[1:]]

    job = "5f0c4a8e-0000-4000-8000-000000000002"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the node processes inherit this environment
    monkeypatch.setenv("CHARLIE_LOG_DIR", str(tmp_path / "node-logs"))
    with FakeKube(cwd=nodes, rewrite=on_this_host) as kube:
        env = {"CHARLIE_LOG_DIR": str(tmp_path / "logs"),
               "KUBECONFIG": str(kube.kubeconfig(tmp_path))}  # fmt: skip
        theses = tmp_path / "theses"
        theses.mkdir()
        for path in _theses("CRUX", "DYNA"):
            shutil.copy(path, theses)
        arguments = {**_smoke(tmp_path), "num_nodes": 2, "theses": str(theses)}
        runs = run_pipeline(PIPELINE_YAML, tmp_path, arguments, cwd=ROOT, env=env, job_id=job)
        (created,) = [r.body for r in kube.calls("POST", kube.trainjobs_path)]
    _timings(runs)

    assert "train" not in runs and "train" in runs.skipped
    assert "train-job" in runs and "init-model" in runs
    assert created["spec"]["trainer"]["numNodes"] == 2
    assert created["spec"]["trainer"]["command"][:4] == ["torchrun", "-m", "charlie.cli", "train"]
    trained = runs["train-job"].outputs["model"]
    manifest = json.loads((trained / "manifest.json").read_text())
    assert manifest["hardware"]["world_size"] == 2
    assert (trained / "adapter_model.safetensors").is_file()
    assert (trained / "merged" / "config.json").is_file()
    assert runs["evaluate"].inputs["model"] == trained  # evaluation reads the TrainJob's model
    assert runs["train-job"].metadata["metrics"]["global_step"] == 10
    assert "rank 0" in runs["train-job"].log or "train" in runs["train-job"].log
