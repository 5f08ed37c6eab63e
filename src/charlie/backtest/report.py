"""The backtest's outputs: a :class:`~charlie.backtest.core.BacktestResult` written as files.

:func:`write_outputs` writes every file atomically next to ``--out`` (:func:`output_paths`):
the daily and trades CSVs, the metrics JSON (NaN is null), the equity and drawdown PNGs
(:func:`render_figures`) and one self-contained HTML page (:func:`render_html`, the Jinja2
template ``templates/report.html.j2``, autoescaped, with the PNGs embedded as data URIs).
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from charlie import headlines
from charlie.backtest import metrics, tearsheet
from charlie.backtest.core import BacktestResult
from charlie.headlines import headline_path, write_headline
from charlie.io import atomic_outputs

TEMPLATE = "report.html.j2"
"""The report's template, in this package's ``templates/``."""


def output_paths(out: Path | str) -> dict[str, Path]:
    """Every file the backtest writes, named after ``--out``'s stem, beside it."""
    out = Path(out)
    stem, parent = out.stem, out.parent
    return {
        "daily": out,
        "trades": parent / f"{stem}_trades.csv",
        "metrics": parent / f"{stem}_metrics.json",
        "headline": headline_path(out, stem),
        "equity_png": parent / f"{stem}_equity.png",
        "drawdown_png": parent / f"{stem}_drawdown.png",
        "report": parent / f"{stem}_report.html",
    }


def write_outputs(
    result: BacktestResult, out: Path | str, evaluation: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write the daily CSV, trades, metrics JSON and headline, two PNGs and the HTML report
    (with ``evaluation``'s model-versus-baselines table when given), atomically."""
    paths = output_paths(out)
    figures = render_figures(result)
    with atomic_outputs(*paths.values()) as temps:
        tmp = dict(zip(paths, temps, strict=True))
        result.daily.to_csv(tmp["daily"], index=False, float_format="%.12g")
        result.trades.to_csv(tmp["trades"], index=False, float_format="%.12g")
        tmp["metrics"].write_text(
            json.dumps(_jsonable(result.metrics), indent=2, allow_nan=False) + "\n",
            encoding="utf-8",
        )
        write_headline(tmp["headline"], headlines.backtest(_jsonable(result.metrics)))
        tmp["equity_png"].write_bytes(figures["equity"])
        tmp["drawdown_png"].write_bytes(figures["drawdown"])
        tmp["report"].write_text(render_html(result, figures, paths, evaluation), encoding="utf-8")
    return paths


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _curves(result: BacktestResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dates and both equity curves, starting at initial_cash on the first decision's day."""
    dates = np.concatenate(
        [[result.start_date.to_datetime64()], pd.to_datetime(result.daily["date"]).to_numpy()]
    ).astype("datetime64[ns]")
    start = [result.initial_cash]
    strategy = np.concatenate([start, result.daily["equity"].to_numpy()])
    bench = np.concatenate([start, result.benchmark_daily["equity"].to_numpy()])
    return dates, strategy, bench


def render_figures(result: BacktestResult) -> dict[str, bytes]:
    """PNG bytes: equity against the benchmark, and both drawdowns (Agg, no pyplot state)."""
    from matplotlib.figure import Figure

    dates, strategy, bench = _curves(result)
    out: dict[str, bytes] = {}

    fig = Figure(figsize=(9, 4.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(dates, strategy, label="strategy (predictions)", color="#1f5fa8", linewidth=1.6)
    ax.plot(dates, bench, label="benchmark (equal-weight buy & hold)", color="#888888")
    ax.axhline(result.initial_cash, color="#cccccc", linewidth=0.8, zorder=0)
    currency = result.metrics["config"].get("currency", "USD")
    ax.set_title("Equity, after costs")
    ax.set_ylabel(f"equity ({currency})")
    ax.yaxis.set_major_formatter(lambda y, _: f"{y:,.0f} {currency}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", frameon=False)
    fig.autofmt_xdate()
    out["equity"] = _png(fig)

    fig = Figure(figsize=(9, 3.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for curve, label, color in ((strategy, "strategy", "#b03a2e"), (bench, "benchmark", "#888888")):
        peak = np.maximum.accumulate(curve)
        ax.fill_between(dates, curve / peak - 1.0, 0.0, alpha=0.2, color=color, linewidth=0)
        ax.plot(dates, curve / peak - 1.0, label=label, color=color, linewidth=1.0)
    ax.set_title("Drawdown from the running peak (initial equity included)")
    ax.yaxis.set_major_formatter(lambda y, _: f"{y:.1%}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", frameon=False)
    fig.autofmt_xdate()
    out["drawdown"] = _png(fig)
    out.update(_tearsheet_figures(result))
    return out


def tearsheet_tables(result: BacktestResult) -> dict[str, Any]:
    """The report's tables beyond the metrics: the worst drawdowns and trade statistics."""
    trips, still_open = tearsheet.round_trips(result.trades, result.daily["date"])
    return {
        "drawdowns": tearsheet.drawdown_periods(result.daily),
        "trades": tearsheet.trade_statistics(trips, still_open, result.daily),
        "rolling_window": tearsheet.rolling_window(len(result.daily)),
        "weekly": len(result.daily) < tearsheet.SHORT_TEST_DAYS,
    }


def _heatmap(table: pd.DataFrame, title: str, columns: list[str]) -> bytes:
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    values = table.to_numpy(float)
    finite = values[np.isfinite(values)]
    bound = max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-4)
    fig = Figure(figsize=(9, 0.55 * len(table) + 1.6), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", aspect="auto",
                      norm=TwoSlopeNorm(vmin=-bound, vcenter=0.0, vmax=bound))  # fmt: skip
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(j, i, f"{value:+.2%}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(table)), [str(i) for i in table.index])
    ax.set_title(title)
    fig.colorbar(image, ax=ax, format=lambda v, _: f"{v:+.1%}", label="return")
    return _png(fig)


def _tearsheet_figures(result: BacktestResult) -> dict[str, bytes]:
    """Monthly (and for a short test weekly) returns, rolling Sharpe and volatility, exposure."""
    from matplotlib.figure import Figure

    daily, out = result.daily, {}
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    out["monthly"] = _heatmap(tearsheet.monthly_returns(daily), "Monthly returns", months)
    if len(daily) < tearsheet.SHORT_TEST_DAYS:
        weeks = [f"week {i}" for i in range(1, 7)]
        out["weekly"] = _heatmap(tearsheet.weekly_returns(daily), "Weekly returns", weeks)

    dates = pd.to_datetime(daily["date"])
    window = tearsheet.rolling_window(len(daily))
    risk = tearsheet.rolling_risk(daily, window)
    fig = Figure(figsize=(9, 4.6), dpi=110, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(dates, risk["sharpe"], color="#1f5fa8", linewidth=1.3)
    top.axhline(0, color="#999999", linewidth=0.8)
    top.set_ylabel("Sharpe (annualised)")
    top.set_title(f"Rolling {window}-day Sharpe ratio and volatility")
    bottom.plot(dates, risk["volatility"], color="#b03a2e", linewidth=1.3)
    bottom.set_ylabel("volatility (annualised)")
    bottom.yaxis.set_major_formatter(lambda y, _: f"{y:.1%}")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    out["rolling"] = _png(fig)

    fig = Figure(figsize=(9, 3.0), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.fill_between(dates, daily["gross_exposure"], 0, color="#1f5fa8", alpha=0.25,
                    linewidth=0, label="gross (|long| + |short|)")  # fmt: skip
    ax.plot(
        dates, daily["net_exposure"], color="#1f5fa8", linewidth=1.2, label="net (long − short)"
    )
    ax.set_title("Exposure at each close, share of equity")
    ax.yaxis.set_major_formatter(lambda y, _: f"{y:.0%}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", frameon=False)
    fig.autofmt_xdate()
    out["exposure"] = _png(fig)
    return out


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _finite(value: Any) -> bool:
    """A number the report can show: not None, NaN or infinite (those are "n/a")."""
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("charlie.backtest", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_ENVIRONMENT.filters["fmt"] = format  # {{ value | fmt(",.2f") }}
_ENVIRONMENT.tests["finite"] = _finite  # {% if value is finite %}


def render_html(
    result: BacktestResult,
    figures: dict[str, bytes],
    paths: dict[str, Path],
    evaluation: dict[str, Any] | None = None,
) -> str:
    """One self-contained page: the PNGs are embedded, nothing is fetched; text is escaped.

    ``evaluation``: the evaluation's metrics (``eval_metrics.json`` beside the predictions),
    whose model-versus-baselines table the page shows beside the portfolio's.
    """
    return _ENVIRONMENT.get_template(TEMPLATE).render(
        m=result.metrics,
        metrics=metrics.METRICS,
        images={
            name: "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            for name, png in figures.items()
        },
        files=[path.name for path in paths.values()],
        sheet=tearsheet_tables(result),
        evaluation=evaluation,
    )
