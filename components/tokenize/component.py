"""`charlie tokenize` as a KFP container component (interface only)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import CPU_IMAGE


@dsl.container_component
def tokenize(
    config: str, sft_dataset: Input[Dataset], base_model: Input[Model], tokenized: Output[Dataset]
):
    """Tokenize the SFT dataset with the chat template and the thesis special tokens.

    Args:
        config: Training config path inside the image (configs/sft_*.yaml).
        base_model: The base model whose tokenizer is extended (init-model's model, or
            fetch-model's reference folder); its config.json gives the context length.
        sft_dataset: The SFT DatasetDict from dataset.
        tokenized: input_ids + completion_mask shards, tokenizer/ and tokenize_report.json.
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["charlie", "tokenize"],
        args=[
            "--config", config,
            "--dataset", sft_dataset.path,
            "--out", tokenized.path,
            "--base-model", base_model.path,  # its config.json: the context length
            "--tokenizer", base_model.path,
        ],
    )  # fmt: skip
