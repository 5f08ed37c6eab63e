"""`charlie dataset` as a KFP container component (interface only; the runtime is the library)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Output

from components.images import CPU_IMAGE


@dsl.container_component
def dataset(
    records: Input[Dataset],
    train_start: str,
    train_end: str,
    test_start: str,
    test_end: str,
    sft_dataset: Output[Dataset],
    card: Output[Artifact],
    card_summary: Output[Markdown],
    metrics: Output[Metrics],
):
    """Build the SFT DatasetDict: point-in-time market snapshots as prompts, theses as completions.

    Fetches prices through params.yaml's `prices` providers (EODHD_API_KEY from the environment
    when eodhd is one of them). The dates reach the stage as the seed's environment variables.

    Args:
        records: records.jsonl from parse.
        train_start: First training date (YYYY-MM-DD), TRAIN_START_DATE.
        train_end: Last training date, TRAIN_END_DATE.
        test_start: First test date, TEST_START_DATE.
        test_end: Last test date, TEST_END_DATE.
        sft_dataset: The train/validation/test DatasetDict (datasets.load_from_disk).
        card: Directory holding dataset_card.json and dataset_card.md.
        card_summary: dataset_card.md, rendered in the KFP UI.
        metrics: Records per split and records dropped (embargo, outside the splits).
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=[
            "env",
            f"TRAIN_START_DATE={train_start}",
            f"TRAIN_END_DATE={train_end}",
            f"TEST_START_DATE={test_start}",
            f"TEST_END_DATE={test_end}",
            "charlie", "dataset",
        ],
        args=[
            "--records", records.path,
            "--out", sft_dataset.path,
            "--card", f"{card.path}/dataset_card.json",
            "--kfp-executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER,
        ],
    )  # fmt: skip
