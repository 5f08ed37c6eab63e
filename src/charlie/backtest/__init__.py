"""The portfolio backtest: predictions in, a cost-aware daily simulation and its report out.

* ``config``: :class:`~charlie.backtest.config.BacktestConfig`, the typed
  ``configs/backtest_config.yaml``.
* ``panel``: the inputs: the eval CSV's predictions checked (``prepare_predictions``), the
  bars to fetch (``price_window``), both aligned as date x ticker arrays (``build_panel``).
* ``engine``: pure numpy kernels on those arrays (``simulate``); no dates, no tickers.
* ``metrics``: empyrical-convention metrics, ``f(returns, periods=252) -> float``, and the
  ``METRICS`` registry the outputs report (one entry per metric).
* ``core``: the backtest itself (``run_backtest`` -> ``BacktestResult``): strategy and
  benchmark, daily tables, trades, metrics, cost sensitivity, the conventions in words.
* ``report``: the outputs (``write_outputs``): CSVs, metrics JSON, PNGs and the HTML page
  rendered from ``templates/report.html.j2``.

The stage is ``charlie backtest`` (``charlie.stages.backtest``). Import from the modules;
this package re-exports nothing.
"""
