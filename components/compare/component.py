"""`charlie compare` as a KFP container component (interface only)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from components.images import CPU_IMAGE


@dsl.container_component
def compare(
    baseline_results: Input[Dataset],
    candidate_results: Input[Dataset],
    baseline_portfolio: Input[Dataset],
    candidate_portfolio: Input[Dataset],
    eval_config: str,
    comparison: Output[Dataset],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """Compare the GRPO model against the SFT model on the same rows, with paired tests.

    Args:
        baseline_results: The SFT model's evaluate output (eval_results.csv).
        candidate_results: The GRPO model's evaluate output, on the same split.
        baseline_portfolio: The SFT model's backtest output (baseline.csv, baseline_metrics.json).
        candidate_portfolio: The GRPO model's backtest output.
        eval_config: The eval config whose bootstrap settings, windows and strategy are used.
        comparison: Directory with comparison.md, comparison.json, compare_headline.json and
            comparison.png.
        metrics: Both accuracies, and the accuracy, per-row return and Sharpe differences.
        summary: comparison.md, rendered in the KFP UI.
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["charlie", "compare"],
        args=[
            "--config", eval_config,
            "--baseline", "sft",
            "--candidate", "grpo",
            "--baseline-eval", f"{baseline_results.path}/eval_results.csv",
            "--candidate-eval", f"{candidate_results.path}/eval_results.csv",
            "--baseline-backtest", f"{baseline_portfolio.path}/baseline.csv",
            "--candidate-backtest", f"{candidate_portfolio.path}/baseline.csv",
            "--out", f"{comparison.path}/comparison.md",
            "--kfp-executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER,
        ],
    )  # fmt: skip
