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
    price_providers: str,
    price_dir: str,
    price_cache_dir: str,
    sft_dataset: Output[Dataset],
    card: Output[Artifact],
    card_summary: Output[Markdown],
    metrics: Output[Metrics],
):
    """Build the SFT DatasetDict: point-in-time market snapshots as prompts, theses as completions.

    Fetches prices through the given providers (params.yaml's `prices` section for the rest).
    The dates reach the stage as the seed's environment variables.

    Args:
        records: records.jsonl from parse.
        train_start: First training date (YYYY-MM-DD), TRAIN_START_DATE.
        train_end: Last training date, TRAIN_END_DATE.
        test_start: First test date, TEST_START_DATE.
        test_end: Last test date, TEST_END_DATE.
        price_providers: Price providers, tried in order, comma-separated (file, eodhd,
            yfinance); EODHD_API_KEY comes from the charlie-eodhd Secret.
        price_dir: The file provider's folder: the image's sample (data/samples/prices), or an
            s3:// prefix of <TICKER>.csv files.
        price_cache_dir: The parquet cache of network answers, on the cache volume, so a retried
            or later run does not fetch again.
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
            "--price-providers", price_providers,
            "--price-dir", price_dir,
            "--price-cache-dir", price_cache_dir,
            "--kfp-executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER,
        ],
    )  # fmt: skip
