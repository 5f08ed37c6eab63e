"""The SFT pipeline: parse → dataset → base model → tokenize → plan → train → evaluate → backtest.

Compile (the YAML beside this file is committed; a test fails when it is stale):

    python -m pipelines.sft_pipeline            # or: make pipeline

With no parameters a run does the demo on any cluster: the sample baked into the CPU image,
init-model's tiny Llama, one trainer pod. A user's own job sets:
  theses (+ theses_dvc_repo, theses_dvc_rev)  a folder in the image, an s3:// prefix, or the
                        DVC-tracked path of a git repository at a revision; parse's report
                        names the source and its version
  price_providers, price_dir   file | eodhd | yfinance, and the file provider's folder (or
                        s3:// prefix); network answers are cached on the volume
  base_model            tiny (init-model runs), else a hub id or an s3:// save_pretrained
                        folder: fetch-model brings it onto the volume once, init-model is skipped
  config                the training config (configs/sft_*.yaml in the image)
  num_nodes, gpu_count  one node: `train` in its own pod under the DeepSpeed launcher; more:
                        `train-job` submits a Kubeflow Trainer v2 TrainJob (trainer_runtime)
  run_grpo, grpo_config  Phase 2: `grpo` aligns the trained model with trading rewards on the
                        same GPU pool (off by default)
`plan` runs on a CPU pod before any GPU is requested and ends the run, with the numbers, when
the config cannot fit num_nodes x gpu_count GPUs.

Data stages cache; dataset (which fetches prices) retries with backoff; train never caches,
requests `nvidia.com/gpu` on the nodes gpu_node_selector picks, tolerates the nvidia.com/gpu
taint, mounts the cache volume (HF_HOME, and one checkpoint folder per run, so a retried attempt
resumes: train retries twice) and a memory-backed /dev/shm, and reads its secrets from
Kubernetes Secrets (no value lives in any file). parse, dataset, plan, train, evaluate and
backtest also fill Metrics, ClassificationMetrics, Markdown and HTML outputs through KFP's
executor output, which the KFP UI shows.
"""

import os
from pathlib import Path

from components.backtest.component import backtest
from components.compare.component import compare
from components.dataset.component import dataset
from components.evaluate.component import evaluate
from components.fetch_model.component import fetch_model
from components.grpo.component import grpo
from components.images import CUDA_IMAGE
from components.init_model.component import init_model
from components.parse.component import parse
from components.plan.component import plan
from components.tokenize.component import tokenize
from components.train.component import train
from components.train_job.component import train_job
from kfp import dsl, kubernetes

# Kubernetes names the cluster provides (manifests/): Secrets and the PVC.
HF_SECRET = "charlie-hf"  # key token → HF_TOKEN
EODHD_SECRET = "charlie-eodhd"  # key api_key → EODHD_API_KEY
S3_SECRET = "charlie-s3"  # object storage for theses, prices, base models and DVC remotes
S3_KEYS = {
    "access_key_id": "AWS_ACCESS_KEY_ID",
    "secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "endpoint_url": "AWS_ENDPOINT_URL",  # MinIO or any S3-compatible store; unset for AWS
}
CACHE_MOUNT = "/mnt/charlie-cache"  # HF_HOME, base models, price cache, checkpoints, TrainJobs
HF_HOME = f"{CACHE_MOUNT}/huggingface"
TRAIN_TIMEOUT_S = 24 * 3600
GPU_TAINT = "nvidia.com/gpu"
# Open-source KFP's driver uses the accelerator type as the Kubernetes resource name, so the
# request is the device plugin's resource and the GPU model comes from the node selector (e.g.
# {"nvidia.com/gpu.product": "NVIDIA-H200"}). For Vertex AI, compile with its accelerator type:
# CHARLIE_GPU_RESOURCE=NVIDIA_L4 python -m pipelines.sft_pipeline. A compile-time constant, not
# a parameter: kfp 2.17.3 does not pass a parameter that only set_accelerator_type reads into
# the dsl.If group around the trainer, so the driver could not resolve it.
GPU_RESOURCE = os.environ.get("CHARLIE_GPU_RESOURCE", "nvidia.com/gpu")
SHM_MOUNT = "/dev/shm"  # NCCL's shared memory: the container runtime's default is 64 MiB


IMAGE_UID = 10001  # the images' `charlie` user (images/*/Dockerfile: USER 10001:10001)


def _non_root(task: dsl.PipelineTask) -> dsl.PipelineTask:
    # The compiler adds the rest of the restricted profile to every container itself
    # (allowPrivilegeEscalation false, capabilities dropped, seccomp RuntimeDefault).
    return kubernetes.set_security_context(task, run_as_user=IMAGE_UID, run_as_group=IMAGE_UID,
                                           run_as_non_root=True)  # fmt: skip


def _cpu(task: dsl.PipelineTask, cpu: str, memory: str) -> dsl.PipelineTask:
    return (
        _non_root(task)
        .set_cpu_request(cpu)
        .set_cpu_limit(cpu)
        .set_memory_request(memory)
        .set_memory_limit(memory)
    )


def _s3(task: dsl.PipelineTask) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, S3_SECRET, S3_KEYS, optional=True)
    return task


def _cache(task: dsl.PipelineTask, cache_pvc: str) -> dsl.PipelineTask:
    kubernetes.mount_pvc(task, pvc_name=cache_pvc, mount_path=CACHE_MOUNT)
    return task


def _priced(task: dsl.PipelineTask, cache_pvc: str) -> dsl.PipelineTask:
    """A step that reads prices: an s3:// folder, or the EODHD API with its parquet cache on the
    volume (dataset, evaluate, backtest; grpo's GPU pod mounts the volume already)."""
    _cache(_s3(task), cache_pvc)
    kubernetes.use_secret_as_env(task, EODHD_SECRET, {"api_key": "EODHD_API_KEY"}, optional=True)
    return task


def _gpu(task: dsl.PipelineTask, gpu_count, node_selector, cache_pvc: str) -> dsl.PipelineTask:
    """A trainer pod (train, grpo): GPUs on the selected pool, never cached, retried from its
    checkpoints on the volume, /dev/shm in memory, the hub token from its Secret."""
    _non_root(task).set_caching_options(False)
    task.set_cpu_request("8").set_cpu_limit("16").set_memory_request("32Gi")
    task.set_memory_limit("64Gi")
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpu_count)
    # A preempted GPU node is the common failure: a retry resumes from the PVC's checkpoints.
    task.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0,
                   backoff_max_duration="600s")  # fmt: skip
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path=SHM_MOUNT, medium="Memory")
    task.set_env_variable("HF_HOME", HF_HOME)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration(task, key=GPU_TAINT, operator="Exists", effect="NoSchedule")
    _s3(_cache(task, cache_pvc))
    kubernetes.use_secret_as_env(task, HF_SECRET, {"token": "HF_TOKEN"}, optional=True)
    kubernetes.set_timeout(task, TRAIN_TIMEOUT_S)
    return task


@dsl.pipeline(
    name="charlie-sft",
    description="Fine-tune a causal LLM to write trading theses; evaluate and backtest it.",
)
def sft_pipeline(
    theses: str = "data/samples/xml",
    theses_dvc_repo: str = "",
    theses_dvc_rev: str = "",
    price_providers: str = "file",
    price_dir: str = "data/samples/prices",
    base_model: str = "tiny",
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
    run_grpo: bool = False,
    grpo_config: str = "configs/grpo_tiny_cpu.yaml",
    num_nodes: int = 1,
    gpu_count: int = 1,
    gpu_node_selector: dict = {"cloud.google.com/gke-nodepool": "gpu-pool"},  # noqa: B006
    trainer_runtime: str = "torch-distributed",
    cache_pvc: str = "charlie-cache",
):
    """Parameters: the data and its version, the base model, the training config, dates, GPUs."""
    parsed = parse(input_dir=theses, dvc_repo=theses_dvc_repo, dvc_rev=theses_dvc_rev)
    _s3(_cpu(parsed, "1", "2Gi")).set_caching_options(True)

    prices = {"price_providers": price_providers, "price_dir": price_dir,
              "price_cache_dir": f"{CACHE_MOUNT}/prices"}  # fmt: skip
    data = dataset(
        records=parsed.outputs["records"],
        train_start=train_start,
        train_end=train_end,
        test_start=test_start,
        test_end=test_end,
        **prices,
    )
    _priced(_cpu(data, "2", "4Gi"), cache_pvc).set_caching_options(True)
    data.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0,
                   backoff_max_duration="600s")  # fmt: skip

    with dsl.If(base_model == "tiny", name="demo-model"):
        tiny = init_model(sft_dataset=data.outputs["sft_dataset"])
        _cpu(tiny, "2", "4Gi").set_caching_options(True)
    with dsl.Else(name="own-model"):
        fetched = fetch_model(base_model=base_model, cache_dir=CACHE_MOUNT)
        # Never cached: a cached reference could point at weights a wiped volume lost; a model
        # already on the volume is not downloaded again.
        _cache(_s3(_cpu(fetched, "2", "8Gi")), cache_pvc).set_caching_options(False)
        fetched.set_env_variable("HF_HOME", HF_HOME)
        kubernetes.use_secret_as_env(fetched, HF_SECRET, {"token": "HF_TOKEN"}, optional=True)
    model = dsl.OneOf(tiny.outputs["model"], fetched.outputs["model"])

    tokens = tokenize(config=config, sft_dataset=data.outputs["sft_dataset"], base_model=model)
    _cpu(tokens, "4", "8Gi").set_caching_options(True)

    planned = plan(config=config, base_model=model, tokenized=tokens.outputs["tokenized"],
                   gpus_per_node=gpu_count, num_nodes=num_nodes)  # fmt: skip
    _cpu(planned, "1", "2Gi").set_caching_options(True)

    checkpoints = f"{CACHE_MOUNT}/checkpoints"
    with dsl.If(num_nodes == 1, name="one-node"):
        trained = train(
            config=config,
            base_model=model,
            tokenized=tokens.outputs["tokenized"],
            smoke_test=smoke_test,
            num_gpus=gpu_count,
            checkpoint_root=checkpoints,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        ).after(planned)
        _gpu(trained, gpu_count, gpu_node_selector, cache_pvc)
    with dsl.Else(name="multi-node"):
        # A CPU pod that submits a Kubeflow Trainer TrainJob and follows it: the nodes run the
        # CUDA image, mount the same (ReadWriteMany) volume and read the same Secrets.
        job = train_job(
            config=config,
            base_model=model,
            tokenized=tokens.outputs["tokenized"],
            smoke_test=smoke_test,
            num_nodes=num_nodes,
            gpus_per_node=gpu_count,
            gpu_resource=GPU_RESOURCE,
            node_selector=gpu_node_selector,
            runtime=trainer_runtime,
            image=CUDA_IMAGE,
            cache_pvc=cache_pvc,
            cache_mount=CACHE_MOUNT,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            timeout_s=TRAIN_TIMEOUT_S,
        ).after(planned)
        _cache(_cpu(job, "1", "2Gi"), cache_pvc).set_caching_options(False)
        # A retried launcher attaches to its own TrainJob (named after the run), never a second.
        job.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0,
                      backoff_max_duration="600s")  # fmt: skip
        kubernetes.set_timeout(job, TRAIN_TIMEOUT_S + 3600)
    trained_model = dsl.OneOf(trained.outputs["model"], job.outputs["model"])

    scored = evaluate(
        model=trained_model,
        sft_dataset=data.outputs["sft_dataset"],
        eval_config=eval_config,
        split=eval_split,
        limit=eval_limit,
        **prices,
    )
    _priced(_cpu(scored, "4", "16Gi"), cache_pvc).set_caching_options(True)

    book = backtest(
        results=scored.outputs["results"],
        backtest_config=backtest_config,
        force=force_backtest,
        **prices,
    )
    _priced(_cpu(book, "1", "4Gi"), cache_pvc).set_caching_options(True)

    with dsl.If(run_grpo == True, name="grpo"):  # noqa: E712  (a KFP condition, not a bool)
        aligned = grpo(
            config=grpo_config,
            sft_model=trained_model,
            sft_dataset=data.outputs["sft_dataset"],
            backtest_config=backtest_config,
            checkpoint_root=checkpoints,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            **prices,
        )
        # One GPU: GRPO runs one process (the GPU config colocates vLLM's generation with it).
        _gpu(aligned, 1, gpu_node_selector, cache_pvc)
        kubernetes.use_secret_as_env(aligned, EODHD_SECRET, {"api_key": "EODHD_API_KEY"},
                                     optional=True)  # fmt: skip

        # The GRPO model on the same rows as the SFT model, then both side by side.
        scored_grpo = evaluate(
            model=aligned.outputs["model"],
            sft_dataset=data.outputs["sft_dataset"],
            eval_config=eval_config,
            split=eval_split,
            limit=eval_limit,
            **prices,
        ).set_display_name("evaluate-grpo")
        _priced(_cpu(scored_grpo, "4", "16Gi"), cache_pvc).set_caching_options(True)
        book_grpo = backtest(
            results=scored_grpo.outputs["results"],
            backtest_config=backtest_config,
            force=force_backtest,
            **prices,
        ).set_display_name("backtest-grpo")
        _priced(_cpu(book_grpo, "1", "4Gi"), cache_pvc).set_caching_options(True)
        compared = compare(
            baseline_results=scored.outputs["results"],
            candidate_results=scored_grpo.outputs["results"],
            baseline_portfolio=book.outputs["portfolio"],
            candidate_portfolio=book_grpo.outputs["portfolio"],
            eval_config=eval_config,
        )
        _cpu(compared, "1", "2Gi").set_caching_options(True)


if __name__ == "__main__":
    from charlie.kubeflow.package import compile_pipeline  # the one compile: `charlie submit`'s

    print(f"compiled {compile_pipeline(Path(__file__).resolve().parents[1])}")
