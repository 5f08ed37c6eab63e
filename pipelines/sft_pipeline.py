"""The SFT pipeline: parse → dataset → init-model → tokenize → train → evaluate → backtest.

Compile (the YAML beside this file is committed; a test fails when it is stale):

    python -m pipelines.sft_pipeline            # or: make pipeline

Data stages cache; dataset (which fetches prices) retries with backoff; train never caches,
requests `nvidia.com/gpu` on the nodes gpu_node_selector picks (one DeepSpeed process per GPU),
tolerates the nvidia.com/gpu taint, mounts a PVC for the model cache and its checkpoints (one
folder per run, so a retried attempt resumes: train retries twice) and a memory-backed /dev/shm,
and reads its secrets from Kubernetes Secrets (no value lives in any file).
parse, dataset, train, evaluate and backtest also fill Metrics, ClassificationMetrics, Markdown
and HTML outputs through KFP's executor output, which the KFP UI shows.
"""

from pathlib import Path

from components.backtest.component import backtest
from components.dataset.component import dataset
from components.evaluate.component import evaluate
from components.init_model.component import init_model
from components.parse.component import parse
from components.tokenize.component import tokenize
from components.train.component import train
from kfp import dsl, kubernetes

# Kubernetes names the cluster provides (manifests/): Secrets and the PVC.
HF_SECRET = "charlie-hf"  # key token → HF_TOKEN
EODHD_SECRET = "charlie-eodhd"  # key api_key → EODHD_API_KEY
S3_SECRET = "charlie-s3"  # keys access_key_id, secret_access_key → AWS_*
CACHE_MOUNT = "/mnt/charlie-cache"  # HF_HOME (base models download once) and checkpoints/
TRAIN_TIMEOUT_S = 24 * 3600
GPU_TAINT = "nvidia.com/gpu"
# Open-source KFP's driver uses the accelerator type as the Kubernetes resource name, so the
# request is the device plugin's resource and the GPU model comes from the node selector (e.g.
# {"nvidia.com/gpu.product": "NVIDIA-H200"}); on Vertex AI pass its type (NVIDIA_L4, ...).
GPU_RESOURCE = "nvidia.com/gpu"
SHM_MOUNT = "/dev/shm"  # NCCL's shared memory: the container runtime's default is 64 MiB


def _cpu(task: dsl.PipelineTask, cpu: str, memory: str) -> dsl.PipelineTask:
    return (
        task.set_cpu_request(cpu)
        .set_cpu_limit(cpu)
        .set_memory_request(memory)
        .set_memory_limit(memory)
    )


@dsl.pipeline(
    name="charlie-sft",
    description="Fine-tune a causal LLM to write trading theses; evaluate and backtest it.",
)
def sft_pipeline(
    input_dir: str = "data/samples/xml",
    config: str = "configs/sft_tiny_lora_cpu.yaml",
    eval_config: str = "configs/eval_config.yaml",
    backtest_config: str = "configs/backtest_config.yaml",
    train_start: str = "2023-10-24",
    train_end: str = "2024-12-31",
    test_start: str = "2025-01-01",
    test_end: str = "2025-04-24",
    smoke_test: bool = False,
    eval_split: str = "test",
    eval_limit: int = 0,
    force_backtest: bool = False,
    gpu_resource: str = GPU_RESOURCE,
    gpu_count: int = 1,
    gpu_node_selector: dict = {"cloud.google.com/gke-nodepool": "gpu-pool"},  # noqa: B006
    cache_pvc: str = "charlie-cache",
):
    """Parameters: where the data is, the training config, dates, the GPU and its node pool."""
    parsed = _cpu(parse(input_dir=input_dir), "1", "2Gi").set_caching_options(True)

    data = dataset(
        records=parsed.outputs["records"],
        train_start=train_start,
        train_end=train_end,
        test_start=test_start,
        test_end=test_end,
    )
    _cpu(data, "2", "4Gi").set_caching_options(True)
    data.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0,
                   backoff_max_duration="600s")  # fmt: skip
    kubernetes.use_secret_as_env(data, EODHD_SECRET, {"api_key": "EODHD_API_KEY"}, optional=True)

    base = init_model(sft_dataset=data.outputs["sft_dataset"])
    _cpu(base, "2", "4Gi").set_caching_options(True)

    tokens = tokenize(
        config=config, sft_dataset=data.outputs["sft_dataset"], base_model=base.outputs["model"]
    )
    _cpu(tokens, "4", "8Gi").set_caching_options(True)

    trained = train(
        config=config,
        base_model=base.outputs["model"],
        tokenized=tokens.outputs["tokenized"],
        smoke_test=smoke_test,
        num_gpus=gpu_count,
        checkpoint_root=f"{CACHE_MOUNT}/checkpoints",
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    )
    trained.set_caching_options(False)
    trained.set_cpu_request("8").set_cpu_limit("16").set_memory_request("32Gi")
    trained.set_memory_limit("64Gi")
    trained.set_accelerator_type(gpu_resource).set_accelerator_limit(gpu_count)
    # A preempted GPU node is the common failure: a retry resumes from the PVC's checkpoints.
    trained.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0,
                      backoff_max_duration="600s")  # fmt: skip
    kubernetes.empty_dir_mount(trained, volume_name="dshm", mount_path=SHM_MOUNT, medium="Memory")
    trained.set_env_variable("HF_HOME", f"{CACHE_MOUNT}/huggingface")
    kubernetes.add_node_selector_json(trained, gpu_node_selector)
    kubernetes.add_toleration(trained, key=GPU_TAINT, operator="Exists", effect="NoSchedule")
    kubernetes.mount_pvc(trained, pvc_name=cache_pvc, mount_path=CACHE_MOUNT)
    kubernetes.use_secret_as_env(trained, HF_SECRET, {"token": "HF_TOKEN"}, optional=True)
    kubernetes.use_secret_as_env(
        trained,
        S3_SECRET,
        {"access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY"},
        optional=True,
    )
    kubernetes.set_timeout(trained, TRAIN_TIMEOUT_S)

    scored = evaluate(
        model=trained.outputs["model"],
        sft_dataset=data.outputs["sft_dataset"],
        eval_config=eval_config,
        split=eval_split,
        limit=eval_limit,
    )
    _cpu(scored, "4", "16Gi").set_caching_options(True)

    book = backtest(
        results=scored.outputs["results"], backtest_config=backtest_config, force=force_backtest
    )
    _cpu(book, "1", "4Gi").set_caching_options(True)
    kubernetes.use_secret_as_env(book, EODHD_SECRET, {"api_key": "EODHD_API_KEY"}, optional=True)


if __name__ == "__main__":
    from charlie.kubeflow.package import compile_pipeline  # the one compile: `charlie submit`'s

    print(f"compiled {compile_pipeline(Path(__file__).resolve().parents[1])}")
