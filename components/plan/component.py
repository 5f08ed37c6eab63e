"""`charlie plan` as a KFP container component (interface only; runs on the CPU image)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.container_component
def plan(
    config: str,
    base_model: Input[Model],
    tokenized: Input[Dataset],
    gpus_per_node: int,
    num_nodes: int,
    report: Output[Artifact],
    summary: Output[Markdown],
    metrics: Output[Metrics],
):
    """Estimate per-GPU memory before any GPU is requested; stop the run when it cannot fit.

    Exits 1 with the verdict sentence (the numbers, and what to change) when the config does
    not fit num_nodes x gpus_per_node GPUs of the config's gpu_type; the run then ends here.

    Args:
        config: Training config path inside the image (configs/sft_*.yaml).
        base_model: The base model folder (init-model's model, or fetch-model's reference):
            its config.json sizes the model.
        tokenized: Tokenized DatasetDict: its tokenize_report.json gives max_length: auto.
        gpus_per_node: GPUs each node requests.
        num_nodes: Nodes the run trains on.
        report: plan.md, the table and the verdict.
        summary: The same Markdown, for the KFP UI.
        metrics: Memory per GPU, capacity, parameters, fits (1 or 0).
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["charlie", "plan"],
        args=[
            "--config", config,
            "--base-model", base_model.path,
            "--dataset-dir", tokenized.path,
            "--gpus", gpus_per_node,
            "--nodes", num_nodes,
            "--out", f"{report.path}/plan.md",
            "--kfp-executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER,
        ],
    )  # fmt: skip
