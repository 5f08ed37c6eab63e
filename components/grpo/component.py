"""`charlie grpo` as a KFP container component (interface only; runs on the CUDA image)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import CUDA_IMAGE


@dsl.container_component
def grpo(
    config: str,
    sft_model: Input[Model],
    sft_dataset: Input[Dataset],
    backtest_config: str,
    price_providers: str,
    price_dir: str,
    price_cache_dir: str,
    checkpoint_root: str,
    run_id: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Align the SFT model with trading rewards: TRL GRPOTrainer and a new LoRA adapter.

    Each prompt of the train split is an episode whose reward is the executable return of the
    completion's own action over the config's horizon, after the backtest config's costs, over
    the volatility known at t; the stage refuses rewards that would read held-out prices.
    Checkpoints go to `<checkpoint_root>/<run_id>-grpo` on a volume, so a retried attempt resumes.

    Args:
        config: GRPO config path inside the image (configs/grpo_*.yaml).
        sft_model: train's output (adapter and merged/).
        sft_dataset: The SFT DatasetDict from dataset (the episodes' prompts).
        backtest_config: The costs and price basis the rewards use (configs/backtest_config.yaml).
        price_providers: Price providers, tried in order, comma-separated.
        price_dir: The file provider's folder, or an s3:// prefix.
        price_cache_dir: The parquet cache of network answers, on the cache volume.
        checkpoint_root: Directory on a mounted volume that outlives the pod.
        run_id: The pipeline run's ID (dsl.PIPELINE_JOB_ID_PLACEHOLDER).
        model: The GRPO adapter, merged/, manifest.json, rewards.csv and runs/ (TensorBoard).
        metrics: The validation reward before and after, train reward, steps.
    """
    return dsl.ContainerSpec(
        image=CUDA_IMAGE,
        command=["charlie", "grpo"],
        args=[
            "--config", config,
            "--sft-model", sft_model.path,
            "--dataset-dir", sft_dataset.path,
            "--output-dir", model.path,
            "--checkpoint-dir", f"{checkpoint_root}/{run_id}-grpo",
            "--backtest-config", backtest_config,
            "--price-providers", price_providers,
            "--price-dir", price_dir,
            "--price-cache-dir", price_cache_dir,
            "--kfp-executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER,
        ],
    )  # fmt: skip
