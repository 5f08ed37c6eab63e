"""`charlie backtest` as a KFP container component (interface only)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components.images import CPU_IMAGE


@dsl.container_component
def backtest(
    results: Input[Dataset],
    backtest_config: str,
    force: bool,
    price_providers: str,
    price_dir: str,
    price_cache_dir: str,
    portfolio: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Backtest the predictions as a daily, cost-aware portfolio against buy-and-hold.

    Args:
        results: evaluate's output directory (its eval_results.csv).
        backtest_config: Costs, sizing and action mapping (configs/backtest_config.yaml).
        force: Backtest predictions that fail the parse-rate gate anyway (a smoke run's model
            writes no action); the report and metrics say the run was forced.
        price_providers: Price providers, tried in order, comma-separated (file, eodhd,
            yfinance); EODHD_API_KEY comes from the charlie-eodhd Secret.
        price_dir: The file provider's folder: the image's sample (data/samples/prices), or an
            s3:// prefix of <TICKER>.csv files.
        price_cache_dir: The parquet cache of network answers, on the cache volume, so a retried
            or later run does not fetch again.
        portfolio: Directory with baseline.csv (daily), baseline_trades.csv, baseline_metrics.json,
            baseline_equity.png, baseline_drawdown.png and baseline_report.html.
        metrics: Strategy and benchmark return, CAGR, Sharpe, Sortino, max drawdown, turnover,
            trades, and the costs paid.
        report: baseline_report.html, the self-contained report, rendered in the KFP UI.
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["charlie", "backtest"],
        args=[
            "--eval-csv", f"{results.path}/eval_results.csv",
            "--config", backtest_config,
            "--out", f"{portfolio.path}/baseline.csv",
            f"--force={force}",
            "--price-providers", price_providers,
            "--price-dir", price_dir,
            "--price-cache-dir", price_cache_dir,
            "--kfp-executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER,
        ],
    )  # fmt: skip
