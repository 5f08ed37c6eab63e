"""Fetch daily prices into the cache and show where each ticker's bars came from.

Providers are tried in the order params.yaml's `prices.providers` names them (the seed's order
is eodhd, then yfinance; the bundled demo uses the offline `file` provider). Network answers
are cached as parquet per ticker under `prices.cache_dir`, so a second run needs no network and
no key. EODHD_API_KEY is read from the environment (or .env) and never written anywhere.

Tickers and dates come from --tickers/--start/--end, or from a records file (each ticker's
record dates, widened by prices.history_days before and prices.forward_days after).

exit codes:
  0  every ticker has data (possibly from a fallback provider)
  2  a ticker has no data from any provider, a provider refused the key, or bad arguments
"""

from __future__ import annotations

import argparse
import logging

HELP = "fetch daily prices (file | eodhd | yfinance) into the parquet cache"
log = logging.getLogger("charlie.prices")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for the tickers and range; providers come from params.yaml's `prices` section."""
    parser.add_argument("--records", help="records JSONL whose tickers and dates to cover")
    parser.add_argument("--tickers", help="comma-separated tickers (instead of --records)")
    parser.add_argument("--start", help="first date, YYYY-MM-DD (with --tickers)")
    parser.add_argument("--end", help="last date, YYYY-MM-DD (with --tickers)")
    parser.add_argument(
        "--providers", help="comma-separated provider order, e.g. eodhd,yfinance (default: params)"
    )


def run(args: argparse.Namespace) -> int:
    """Fetch, print the provenance table; returns the exit code."""
    import datetime as dt

    from charlie.config import load_params
    from charlie.errors import CharlieError
    from charlie.logs import setup_logging

    overrides = {"prices.providers": args.providers.split(",") if args.providers else None}
    params = load_params(args.params, overrides=overrides)
    setup_logging("prices")
    if args.tickers:
        if not (args.start and args.end):
            raise CharlieError("--tickers needs --start and --end (YYYY-MM-DD).")
        try:
            start, end = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
        except ValueError:
            raise CharlieError("--start and --end must be dates like 2024-01-31.") from None
        wanted = {t.strip().upper(): (start, end) for t in args.tickers.split(",") if t.strip()}
    else:
        from charlie.stages.dataset import read_records, wanted_ranges

        records = read_records(params.dataset.records if args.records is None else args.records)
        wanted = wanted_ranges(records, params.prices)
    load_all_prices(wanted, params.prices)
    return 0


def load_all_prices(wanted, prices_params):
    """Fetch every ticker through the configured chain, log the table, fail on missing ones."""
    from charlie.prices.service import build_providers, fetch_prices, require_all
    from charlie.progress import progress_bar

    providers = build_providers(prices_params)
    log.info("prices for %d tickers from %s", len(wanted), " -> ".join(p.name for p in providers))
    with progress_bar(total=len(wanted), desc="prices", unit="ticker") as bar:
        result = fetch_prices(wanted, providers, bar)
    for line in result.table().splitlines():
        log.info(line)
    require_all(result, providers)
    return result
