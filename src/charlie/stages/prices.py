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
import datetime as dt
import logging

from charlie.config import PricesParams, add_flags, load_params
from charlie.errors import CharlieError
from charlie.logs import setup_logging
from charlie.prices.service import load_all_prices
from charlie.records import read_records, wanted_ranges

log = logging.getLogger("charlie.prices")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """What to cover (these are not settings); the provider order overrides params.yaml's."""
    parser.add_argument("--records", help="records JSONL whose tickers and dates to cover")
    parser.add_argument("--tickers", help="comma-separated tickers (instead of --records)")
    parser.add_argument("--start", help="first date, YYYY-MM-DD (with --tickers)")
    parser.add_argument("--end", help="last date, YYYY-MM-DD (with --tickers)")
    add_flags(parser, PricesParams, "prices", ["providers"])


def run(args: argparse.Namespace) -> int:
    """Fetch, print the provenance table; returns the exit code."""
    params = load_params(args)
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
        records = read_records(params.dataset.records if args.records is None else args.records)
        wanted = wanted_ranges(records, params.prices.history_days, params.prices.forward_days)
    load_all_prices(wanted, params.prices)
    return 0
