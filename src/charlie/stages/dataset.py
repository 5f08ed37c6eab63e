"""Build the SFT dataset: point-in-time market snapshots as prompts, theses as completions.

Reads --records (charlie parse's output), fetches each ticker's prices through the configured
providers (params.yaml `prices`), builds one prompt per record from the market as of the close
of its date (bars on or before it only), and the completion
<reasoning>...</reasoning><support>...</support><action><BUY></action>. Splits are strictly
chronological (params.yaml `dataset`, or the seed's TRAIN_START_DATE, TRAIN_END_DATE,
TEST_START_DATE, TEST_END_DATE): train, then validation (the last validation_days of the
training period), then test; embargo_days drops records just before each later split.

A leakage audit stops the stage if any date or uid is in two splits, splits overlap, or a
snapshot used a later bar. Writes a DatasetDict (save_to_disk) and a dataset card (JSON, a
DVC metric, and Markdown). Nothing is written unless everything succeeded.
"""

from __future__ import annotations

import argparse
import logging

HELP = "build the train/validation/test DatasetDict from records and prices"
log = logging.getLogger("charlie.dataset")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags override params.yaml's `dataset` section."""
    parser.add_argument("--records", help="records JSONL (default: dataset.records)")
    parser.add_argument("--out", help="DatasetDict directory (default: dataset.out)")
    parser.add_argument("--card", help="dataset card JSON; .md beside it (default: dataset.card)")
    parser.add_argument("--embargo-days", type=int, help="trading days dropped before each split")

    from charlie import kfp_executor

    kfp_executor.add_argument(parser)


def read_records(path):
    """Records from a JSONL file, with one sentence if it is missing or empty."""
    from pathlib import Path

    import orjson

    from charlie.errors import CharlieError

    path = Path(path)
    if not path.is_file():
        raise CharlieError(f"records file {path} does not exist; run `charlie parse` first.")
    records = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    if not records:
        raise CharlieError(f"records file {path} holds no record.")
    return records


def wanted_ranges(records, prices_params):
    """Each ticker's date range: its records widened by the history and forward margins."""
    import datetime as dt

    spans: dict[str, list[str]] = {}
    for record in records:
        span = spans.setdefault(record["ticker"], [record["as_of_date"], record["as_of_date"]])
        span[0] = min(span[0], record["as_of_date"])
        span[1] = max(span[1], record["as_of_date"])
    before = dt.timedelta(days=prices_params.history_days)
    after = dt.timedelta(days=prices_params.forward_days)
    return {
        ticker: (dt.date.fromisoformat(a) - before, dt.date.fromisoformat(b) + after)
        for ticker, (a, b) in sorted(spans.items())
    }


def run(args: argparse.Namespace) -> int:
    """Build, audit and write the dataset; returns the exit code."""
    import json

    from charlie import dataset as core
    from charlie.config import load_params
    from charlie.errors import CharlieError
    from charlie.io import atomic_directory, atomic_outputs
    from charlie.logs import setup_logging
    from charlie.stages.prices import load_all_prices

    params = load_params(
        args.params,
        overrides={
            "dataset.records": args.records,
            "dataset.out": args.out,
            "dataset.card": args.card,
            "dataset.embargo_days": args.embargo_days,
        },
    )
    cfg = params.dataset
    log_file = setup_logging("dataset")
    log.debug("dataset: %s prices: %s", cfg.model_dump_json(), params.prices.model_dump_json())
    spec = core.SplitSpec(
        cfg.train_start, cfg.train_end, cfg.validation_days, cfg.test_start, cfg.test_end,
        cfg.embargo_days,
    )  # fmt: skip

    records = read_records(cfg.records)
    prices = load_all_prices(wanted_ranges(records, params.prices), params.prices)
    rows, bar_dates, dropped = core.build_rows(
        records, prices.frames, spec, drop_outside=cfg.outside_splits == "drop"
    )
    core.check_splits(rows, spec)
    findings = core.audit(rows, bar_dates, spec, max(cfg.forward_windows))
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
    digest = core.input_hash(cfg.records.read_bytes(), sorted(prices.frames.items()))
    info = core.card(rows, spec, dropped, findings, digest, sources)

    import sys

    import datasets  # heavy: imported only once everything else succeeded
    from datasets import Dataset, DatasetDict

    if not sys.stderr.isatty():
        datasets.disable_progress_bars()

    dataset = DatasetDict({split: Dataset.from_list(rows[split]) for split in core.SPLITS})
    card_md = cfg.card.with_suffix(".md")
    with atomic_directory(cfg.out) as tmp, atomic_outputs(cfg.card, card_md) as (tj, tm):
        dataset.save_to_disk(str(tmp))
        tj.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        tm.write_text(core.card_markdown(info, max(cfg.forward_windows)), encoding="utf-8")

    counts = info["records"]
    log.info(
        "dataset: train %d, validation %d, test %d (dropped: %d embargo, %d outside); "
        "%d validation records reach the test period within %d days",
        counts["train"], counts["validation"], counts["test"], info["dropped"]["embargo"],
        info["dropped"]["outside_splits"], findings.validation_reaching_test,
        max(cfg.forward_windows),
    )  # fmt: skip
    log.info("wrote %s, %s and %s (log: %s)", cfg.out, cfg.card, card_md, log_file)
    from charlie.kfp_executor import publish

    publish(args.kfp_executor_input, markdown=card_md,
            metrics={k: info[k] for k in ("records", "dropped", "validation_reaching_test")})  # fmt: skip
    return 0
