"""`charlie backtest` as a KFP container component (interface only)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.images import CPU_IMAGE


@dsl.container_component
def backtest(results: Input[Dataset], backtest_config: str, portfolio: Output[Dataset]):
    """Backtest the predictions as a daily, cost-aware portfolio against buy-and-hold.

    Args:
        results: evaluate's output directory (its eval_results.csv).
        backtest_config: Costs, sizing and action mapping (configs/backtest_config.yaml).
        portfolio: Directory with baseline.csv (daily), baseline_trades.csv, baseline_metrics.json,
            baseline_equity.png, baseline_drawdown.png and baseline_report.html.
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["charlie", "backtest"],
        args=[
            "--eval-csv", f"{results.path}/eval_results.csv",
            "--config", backtest_config,
            "--out", f"{portfolio.path}/baseline.csv",
        ],
    )  # fmt: skip
