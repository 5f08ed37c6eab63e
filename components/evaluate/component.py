"""`charlie evaluate` as a KFP container component (interface only)."""

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.container_component
def evaluate(
    model: Input[Model],
    sft_dataset: Input[Dataset],
    eval_config: str,
    split: str,
    limit: int,
    price_providers: str,
    price_dir: str,
    price_cache_dir: str,
    results: Output[Dataset],
    metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    summary: Output[Markdown],
):
    """Greedy-decode a thesis per row of a split and score the actions as a classifier and as trades.

    Args:
        model: train's (or grpo's) output; its merged/ model is evaluated.
        sft_dataset: The SFT DatasetDict from dataset.
        eval_config: Eval config path inside the image (configs/eval_config.yaml).
        split: Split to evaluate (test).
        limit: Evaluate the first N rows only; 0 evaluates them all.
        price_providers: Price providers for the forward returns, tried in order (file, eodhd,
            yfinance), as dataset and backtest read them.
        price_dir: The file provider's folder, or an s3:// prefix of <TICKER>.csv files.
        price_cache_dir: The parquet cache of network answers, on the cache volume.
        results: Directory with eval_results.csv, eval_generations.jsonl, eval_metrics.json,
            eval_summary.md and confusion_matrix.png.
        metrics: Accuracy, macro-F1, parse rate, per-window hit rate and signed return, and each
            baseline's accuracy.
        confusion_matrix: True against predicted action (UNPARSEABLE included).
        summary: eval_summary.md, rendered in the KFP UI.
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["charlie", "evaluate"],
        args=[
            "--config", eval_config,
            "--model-dir", f"{model.path}/merged",
            "--dataset-dir", sft_dataset.path,
            "--split", split,
            "--limit", limit,
            "--out", f"{results.path}/eval_results.csv",
            "--price-providers", price_providers,
            "--price-dir", price_dir,
            "--price-cache-dir", price_cache_dir,
            "--kfp-executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER,
        ],
    )  # fmt: skip
