"""`charlie train` as a KFP container component (interface only; runs on the CUDA image)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import CUDA_IMAGE


@dsl.container_component
def train(
    config: str,
    base_model: Input[Model],
    tokenized: Input[Dataset],
    smoke_test: bool,
    model: Output[Model],
):
    """Fine-tune the base model with TRL SFTTrainer and LoRA/QLoRA; always writes merged/.

    The config decides the method and hyperparameters; the artifacts override its base_model,
    dataset_dir and output_dir. The memory plan refuses a GPU run that cannot fit.

    Args:
        config: Training config path inside the image (configs/sft_*.yaml).
        base_model: Base model directory (init-model's output, or a downloaded hub model).
        tokenized: Tokenized DatasetDict from tokenize (with tokenizer/).
        smoke_test: Run 10 steps only.
        model: Adapter, tokenizer, manifest.json, runs/ (TensorBoard) and merged/.
    """
    return dsl.ContainerSpec(
        image=CUDA_IMAGE,
        command=["charlie", "train"],
        args=[
            "--config", config,
            "--base-model", base_model.path,
            "--dataset-dir", tokenized.path,
            "--output-dir", model.path,
            f"--smoke-test={smoke_test}",
            "--merge",
        ],
    )  # fmt: skip
