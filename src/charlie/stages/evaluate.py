"""Evaluate a fine-tuned model: generated actions as a classifier and as trades.

Greedy-decodes a thesis for every row of --split (left padding, batched, torch.inference_mode)
from an adapter directory or a merged model, extracts the action (the action special token
first, then a tolerant text fallback; none found = UNPARSEABLE, counted, never dropped), and
writes beside --out:
  eval_results.csv       uid, ticker, as_of_date, true_action, pred_action, correct, fwd_ret_<h>
  eval_generations.jsonl the generated text per row
  eval_metrics.json      accuracy, macro-F1, per-class report, confusion matrix, parse rate;
                         per forward window: hit rate, mean/std and ratio of signed returns;
                         baselines on the same rows with bootstrap 95% intervals (a DVC metric)
  eval_summary.md        the same for people, with every convention stated
  confusion_matrix.png
Forward returns are adj_close(t+h)/adj_close(t) - 1 over the ticker's trading days, NaN past the
data (counted). Prices come from params.yaml's `prices` section.
"""

from __future__ import annotations

import argparse
import logging

from charlie.config import CONFIG, EvaluateParams, add_flags, load_config, load_params
from charlie.errors import CharlieError
from charlie.evaluation import core
from charlie.evaluation.config import EvalConfig
from charlie.evaluation.report import write_outputs
from charlie.inference import extract_action, greedy_complete
from charlie.io import load_dataset_dir, require_dataset_dict
from charlie.kubeflow import executor as kfp_executor
from charlie.logs import setup_logging
from charlie.models import load_for_inference
from charlie.prices.service import load_all_prices
from charlie.progress import progress_bar

log = logging.getLogger("charlie.evaluate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The eval config file (params.yaml's `evaluate.config`) and overrides of its keys."""
    add_flags(parser, EvaluateParams, "evaluate")
    add_flags(parser, EvalConfig, CONFIG)
    parser.add_argument("--limit", type=int, help="evaluate the first N rows only (a quick look)")
    kfp_executor.add_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Generate, score, write; returns the exit code."""
    params = load_params(args)
    cfg = load_config(params.evaluate.config, EvalConfig, overrides=args)
    setup_logging("evaluate")

    # ---------------------------------------------------------------- data
    data = load_dataset_dir(require_dataset_dict(cfg.dataset_dir))
    if cfg.split not in data:
        raise CharlieError(
            f"{cfg.dataset_dir} has no {cfg.split!r} split (it has {', '.join(data)})."
        )
    rows = data[cfg.split]
    if args.limit:
        rows = rows.select(range(min(args.limit, len(rows))))
    train_labels = list(data["train"]["action"]) if "train" in data else []

    # ---------------------------------------------------------------- model
    model, tokenizer = load_for_inference(cfg.model_dir)

    # ---------------------------------------------------------------- generate
    with progress_bar(total=len(rows), desc="generate", unit="row") as bar:
        texts = greedy_complete(model, tokenizer, rows["prompt"], batch_size=cfg.batch_size,
                                max_new_tokens=cfg.max_new_tokens, progress=bar)  # fmt: skip
    frame = core.prediction_frame(rows, [extract_action(t) for t in texts])

    # ---------------------------------------------------------------- prices
    prices = load_all_prices(core.price_window(frame, cfg.forward_windows), params.prices).frames

    # ---------------------------------------------------------------- compute
    frame, momentum = core.attach_forward_returns(frame, prices, cfg.forward_windows)
    info = core.compute_metrics(cfg, frame, momentum, train_labels)

    # ---------------------------------------------------------------- write
    write_outputs(cfg.out, frame, texts, info, cfg.forward_windows)
    c = info["classification"]
    log.info("evaluated %d rows of %s: accuracy %.3f, parse rate %.3f; wrote %s and beside it",
             c["n"], cfg.split, c["accuracy"], c["parse_rate"], cfg.out)  # fmt: skip

    # ---------------------------------------------------------------- publish
    matrix = c["confusion_matrix"]
    kfp_executor.publish(args.kfp_executor_input, metrics=core.headline(info),
            confusion=(matrix["labels"], matrix["matrix"]),
            markdown=cfg.out.with_name("eval_summary.md"))  # fmt: skip
    return 0
