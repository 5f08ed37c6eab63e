"""The compiled Kubeflow pipeline: fresh, specified executor by executor, and runnable on the host."""

import argparse
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")
pytest.importorskip("kfp.kubernetes")

from components.images import CPU_IMAGE, CUDA_IMAGE
from pipelines.sft_pipeline import PIPELINE_YAML, compile_pipeline

from tests.kfp_harness import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["parse", "dataset", "init-model", "tokenize", "train", "evaluate", "backtest"]


def _docs(path: Path) -> tuple[dict, dict]:
    pipeline, platform = yaml.safe_load_all(path.read_text(encoding="utf-8"))
    return pipeline, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    return _docs(compile_pipeline(tmp_path_factory.mktemp("kfp") / "sft_pipeline.yaml"))


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
        assert command[command.index("charlie") + 1] == stage
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
        "resourceType": "{{$.inputs.parameters['pipelinechannel--gpu_type']}}",
    }
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
    for stage in STAGES:
        if stage != "train":
            container = pipeline["deploymentSpec"]["executors"][f"exec-{stage}"]["container"]
            assert "accelerator" not in container["resources"]
            assert "nodeSelector" not in platform.get(f"exec-{stage}", {})


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
    assert all("retryPolicy" not in tasks[s] for s in STAGES if s != "dataset")


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
    args = build_parser().parse_args(
        ["train", "--config", "configs/sft_tiny_lora_cpu.yaml", "--base-model", "/m",
         "--dataset-dir", "/d", "--output-dir", "/o", "--smoke-test=false"]
    )  # fmt: skip
    assert args._run(args) == 0
    assert (seen["cfg"].base_model, seen["cfg"].dataset_dir, seen["cfg"].output_dir) == (
        "/m", Path("/d"), Path("/o"),
    )  # fmt: skip
    assert seen["smoke_test"] is False

    args = build_parser().parse_args(["train", "--config", "configs/sft_tiny_lora_cpu.yaml",
                                      "--smoke-test"])  # fmt: skip
    assert args._run(args) == 0
    assert seen["smoke_test"] is True
    assert seen["cfg"].output_dir == Path("checkpoints/sft-tiny-lora-cpu")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--smoke-test=maybe"])
    assert isinstance(args, argparse.Namespace)


@pytest.mark.slow
def test_the_compiled_pipeline_runs_on_the_host(tmp_path):
    """Every executor's command, placeholders resolved, in DAG order on the bundled sample."""
    runs = run_pipeline(
        PIPELINE_YAML,
        tmp_path,
        {"config": "configs/sft_tiny_lora_cpu.yaml", "smoke_test": True, "eval_limit": 16},
        cwd=ROOT,
        env={"CHARLIE_LOG_DIR": str(tmp_path / "logs")},
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
