"""`charlie init-model` as a KFP container component (interface only)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import CPU_IMAGE


@dsl.container_component
def init_model(sft_dataset: Input[Dataset], model: Output[Model]):
    """Build the tiny local base model: a BPE tokenizer and a small Llama, from the train split.

    Args:
        sft_dataset: The SFT DatasetDict from dataset; its train split trains the tokenizer.
        model: The tokenizer and randomly initialised model (save_pretrained).
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["charlie", "init-model"],
        args=["--dataset", sft_dataset.path, "--out", model.path],
    )
