"""`charlie train` as a KFP container component (interface only; runs on the CUDA image)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import CUDA_IMAGE


@dsl.container_component
def train(
    config: str,
    base_model: Input[Model],
    tokenized: Input[Dataset],
    smoke_test: bool,
    num_gpus: int,
    checkpoint_root: str,
    run_id: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Fine-tune the base model with TRL SFTTrainer and LoRA/QLoRA; always writes merged/.

    The config decides the method and hyperparameters; the artifacts override its base_model,
    dataset_dir and output_dir. The memory plan refuses a GPU run that cannot fit. The DeepSpeed
    launcher starts one process per GPU (the config's `deepspeed` file, if any, shards them).
    Checkpoints go to `<checkpoint_root>/<run_id>` on a volume, not into the output artifact, so
    a retried attempt of the same run resumes from the last one instead of starting over.

    Args:
        config: Training config path inside the image (configs/sft_*.yaml).
        base_model: Base model directory (init-model's output, or a downloaded hub model).
        tokenized: Tokenized DatasetDict from tokenize (with tokenizer/).
        smoke_test: Run 10 steps only.
        num_gpus: Processes the DeepSpeed launcher starts, one per GPU the task requests.
        checkpoint_root: Directory on a mounted volume that outlives the pod.
        run_id: The pipeline run's ID (dsl.PIPELINE_JOB_ID_PLACEHOLDER): one folder per run.
        model: Adapter, tokenizer, manifest.json, loss.csv, runs/ (TensorBoard) and merged/.
        metrics: Final train and eval loss, steps, runtime and throughput.
    """
    return dsl.ContainerSpec(
        image=CUDA_IMAGE,
        command=[
            "deepspeed", f"--num_gpus={num_gpus}", "--no_local_rank",
            "--module", "charlie.cli", "train",
        ],
        args=[
            "--config", config,
            "--base-model", base_model.path,
            "--dataset-dir", tokenized.path,
            "--output-dir", model.path,
            "--checkpoint-dir", f"{checkpoint_root}/{run_id}",
            f"--smoke-test={smoke_test}",
            "--merge",
            "--kfp-executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER,
        ],
    )  # fmt: skip
