"""Build the SFT dataset: point-in-time market snapshots as prompts, theses as completions.

Reads --records (charlie parse's output), fetches each ticker's prices through the configured
providers (params.yaml `prices`), builds one prompt per record from the market as of the close
of its date (bars on or before it only), and the completion
<reasoning>...</reasoning><support>...</support><action><BUY></action>. Splits are strictly
chronological (params.yaml `dataset`, or the seed's TRAIN_START_DATE, TRAIN_END_DATE,
TEST_START_DATE, TEST_END_DATE): train, then validation (the last validation_days of the
training period; auto: the last 2 x (longest forward window + embargo_days) trading days),
then test; embargo_days drops records just before each later split, and the purge drops every
train (validation) record whose longest forward window (configs/eval_config.yaml
forward_windows) ends in that embargo or in the validation (test) period.

A leakage audit stops the stage if any date or uid is in two splits, splits overlap, a
snapshot used a later bar, or a kept record's longest forward window reaches the next split. Writes a DatasetDict (save_to_disk) and a dataset card (JSON, a
DVC metric, and Markdown). Nothing is written unless everything succeeded.

Price flags (they override params.yaml's `prices` section; absent, it decides):
  --price-providers A,B   providers tried in order: file, eodhd, yfinance (prices.providers)
  --price-dir DIR|s3://bucket/prefix/
                          the file provider's directory (prices.file_dir); an s3:// prefix is
                          downloaded once per version into <cache dir>/file/s3/<sha256>/
                          (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)
  --price-cache-dir DIR   the parquet cache of network answers (prices.cache_dir), read before
                          any request: a rerun on a persistent cache asks the network only for
                          ranges it lacks (and days from today on, which are not final yet)
The EODHD key comes only from EODHD_API_KEY (environment or .env); the API root from
CHARLIE_PRICES__EODHD__BASE_URL or params.yaml.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from typing import Any

from charlie import dataset as core
from charlie import headlines
from charlie.calendar import calendar_for
from charlie.cards import dataset_card
from charlie.config import (
    PRICE_FLAGS,
    DatasetParams,
    PricesParams,
    add_flags,
    load_config,
    load_params,
)
from charlie.errors import CharlieError
from charlie.evaluation.config import EvalConfig
from charlie.headlines import headline_path, write_headline
from charlie.io import atomic_directory, atomic_outputs, require_distinct
from charlie.kubeflow import executor as kfp_executor
from charlie.logs import setup_logging
from charlie.prices.service import load_all_prices
from charlie.records import scan_records, wanted_ranges

log = logging.getLogger("charlie.dataset")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags override params.yaml's `dataset` section, and the price flags its `prices`."""
    add_flags(parser, DatasetParams, "dataset")
    add_flags(parser, PricesParams, "prices", PRICE_FLAGS)
    kfp_executor.add_argument(parser)


def split_spec(params: Any) -> tuple[core.SplitSpec, int]:
    """The splits params.yaml asks for, and the longest forward window they are purged by.

    The purge and the audit use the longest forward window: the windows are the evaluation's,
    so they are read from its config, not declared twice.
    """
    cfg = params.dataset
    horizon = max(load_config(params.evaluate.config, EvalConfig).forward_windows)
    calendar = calendar_for(params.prices.eodhd.exchange, params.prices.calendar)
    validation_days = core.validation_days_for(
        cfg.validation_days, cfg.train_end, horizon, cfg.embargo_days, calendar
    )
    spec = core.SplitSpec(
        cfg.train_start, cfg.train_end, validation_days, cfg.test_start, cfg.test_end,
        cfg.embargo_days, purge_window=horizon, calendar=calendar,
    )  # fmt: skip
    return spec, horizon


def run(args: argparse.Namespace) -> int:
    """Build, audit and write the dataset; returns the exit code."""
    params = load_params(args)
    cfg = params.dataset
    spec, horizon = split_spec(params)
    log_file = setup_logging("dataset")
    log.debug("dataset: %s prices: %s", cfg.model_dump_json(), params.prices.model_dump_json())

    card_md = cfg.card.with_suffix(".md")
    require_distinct({"--out": cfg.out, "--card": cfg.card, "the card's Markdown": card_md},
                     {"--records": cfg.records})  # fmt: skip
    records = scan_records(cfg.records)  # columns: each record's text is read when it is used
    prices = load_all_prices(
        wanted_ranges(records, params.prices.history_days, params.prices.forward_days),
        params.prices,
    )
    rows, bar_dates, dropped = core.build_tables(
        records, prices.frames, spec, drop_outside=cfg.outside_splits == "drop"
    )
    core.check_history(bar_dates, cfg.max_no_history_share)
    core.check_splits(rows, spec, dropped)
    findings = core.audit(rows, bar_dates, spec, horizon)
    if findings.problems:
        raise CharlieError(
            f"leakage audit failed: {findings.problems[0]}"
            + (
                f" ({len(findings.problems) - 1} more problems)."
                if len(findings.problems) > 1
                else "."
            )
        )
    sources = {r["ticker"]: r["provider"] for r in prices.rows if r["status"] == "ok"}
    with cfg.records.open("rb") as handle:
        digest = core.input_hash(handle, sorted(prices.frames.items()))
    info = core.card(rows, spec, dropped, findings, digest, sources)

    import datasets  # heavy: imported only once everything else succeeded
    from datasets import Dataset, DatasetDict

    if not sys.stderr.isatty():
        datasets.disable_progress_bars()

    # The tables as they are: Arrow already, so nothing is copied. Each split's fingerprint is
    # derived from the card (the inputs' hash, the split settings, the counts), not left to
    # `datasets`, which would pickle the whole split to hash it: a second copy of the text at
    # the stage's peak (about 1 GB at 500 tickers).
    card_text = json.dumps(info, sort_keys=True, default=str)
    dataset = DatasetDict({
        split: Dataset(rows[split], fingerprint=hashlib.sha256(
            f"{split}\0{card_text}".encode()).hexdigest()[:16])
        for split in core.SPLITS
    })  # fmt: skip
    headline = headline_path(cfg.card, "dataset")
    with atomic_directory(cfg.out) as tmp, atomic_outputs(cfg.card, card_md, headline) as (
        tj, tm, th,
    ):  # fmt: skip
        dataset.save_to_disk(str(tmp))
        tj.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        markdown = core.card_markdown(info, horizon)
        tm.write_text(markdown, encoding="utf-8")
        (tmp / "README.md").write_text(dataset_card(info, markdown), encoding="utf-8")
        write_headline(th, headlines.dataset(info))

    counts = info["records"]
    log.info(
        "dataset: train %d, validation %d, test %d (dropped: %d embargo, %d outside; "
        "purged for the %d-day window: %d train, %d validation)",
        counts["train"], counts["validation"], counts["test"], info["dropped"]["embargo"],
        info["dropped"]["outside_splits"], horizon, info["purged"]["train"],
        info["purged"]["validation"],
    )  # fmt: skip
    log.info("wrote %s, %s and %s (log: %s)", cfg.out, cfg.card, card_md, log_file)
    kfp_executor.publish(args.kfp_executor_input, markdown=card_md,
            metrics={k: info[k] for k in ("records", "dropped", "purged")})  # fmt: skip
    return 0
