"""Evaluate a fine-tuned model: generated actions as a classifier and as trades.

Greedy-decodes a thesis for every row of --split (left padding, batched longest prompt first,
torch.inference_mode) from an adapter directory (as its merged/ copy when merged_from.json
vouches for it, else merged on load) or a merged model, stopping each row at </action> or the
end of turn <|end|>, extracts the action (the action special token first, then a tolerant text
fallback; none found = UNPARSEABLE, counted, never dropped), and writes beside --out:
  eval_results.csv       uid, ticker, as_of_date, true_action, pred_action, correct, truncated,
                         fwd_ret_<h>, exec_ret_<h>
  eval_generations.jsonl the generated text per row (with new_tokens and truncated)
  eval_metrics.json      accuracy, macro-F1, per-class report, confusion matrix, parse rate;
                         per forward window the backtest's own strategy: trades, hit rate,
                         mean return per trade and per row (HOLD as 0); the ±1 sign view
                         apart; baselines on the same rows and mapping; 95% intervals by a
                         block bootstrap over dates; permutation p-values (shuffled and
                         rotated within ticker); paired tests against the strongest baseline
                         (a DVC metric)
  eval_summary.md        the same for people, with every convention stated
  confusion_matrix.png
The strategy is the backtest's (the eval config's strategy_config, configs/backtest_config.yaml
by default): each action's units from its action_units (shorts only with allow_shorts; HOLD and
UNPARSEABLE 0 units per row). The headline return is executable: decided at the close of t,
bought at the next open, adj_close(t+h)/adj_open(t+1) - 1 (exec_ret_<h>); close-to-close
adj_close(t+h)/adj_close(t) - 1 (fwd_ret_<h>) is reported beside it. Both run over the ticker's
trading days, NaN past the data (counted). Prices come from params.yaml's `prices` section, or
the --price-providers, --price-dir and --price-cache-dir flags (as `charlie backtest --help`).

max_new_tokens: auto (the default) takes the completion lengths of tokenize_report.json in
--model-dir (or its parent for <output_dir>/merged): max(ceil(p99 x (1 + margin)), max), capped
so prompt + generation fits the context; prompts that do not fit lose whole snapshot sections,
least important first (as in training). A row that reaches max_new_tokens before any action
token is `truncated` (and UNPARSEABLE).

exit codes:
  0  completed, parse rate >= min_parse_rate
  1  completed and every output written, but the parse rate is below min_parse_rate
  2  bad input or config (a missing model, split or report, ...)
"""

from __future__ import annotations

import argparse
import functools
import logging

from charlie.config import (
    CONFIG,
    PRICE_FLAGS,
    EvaluateParams,
    PricesParams,
    add_flags,
    load_config,
    load_params,
    positive,
)
from charlie.errors import CharlieError, QualityGateError
from charlie.evaluation import budget, core
from charlie.evaluation.config import EvalConfig
from charlie.evaluation.report import write_outputs
from charlie.inference import extract_prediction, generate, prompt_tokens, stop_token_ids
from charlie.io import load_dataset_dir, require_dataset_dict
from charlie.kubeflow import executor as kfp_executor
from charlie.logs import setup_logging
from charlie.models import load_for_inference
from charlie.prices.service import load_all_prices
from charlie.progress import progress_bar
from charlie.strategy import load_strategy

log = logging.getLogger("charlie.evaluate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The eval config file (params.yaml's `evaluate.config`), overrides of its keys, prices."""
    add_flags(parser, EvaluateParams, "evaluate")
    add_flags(parser, EvalConfig, CONFIG)
    add_flags(parser, PricesParams, "prices", PRICE_FLAGS)
    parser.add_argument(
        "--limit", type=positive, help="evaluate the first N rows only (a quick look)"
    )
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

    report = budget.find_report(cfg.model_dir)
    if cfg.max_new_tokens == "auto" and report is None:
        raise CharlieError(budget.missing_report_message(cfg.model_dir))  # before the model loads

    # ---------------------------------------------------------------- model
    model, tokenizer = load_for_inference(cfg.model_dir)

    # ---------------------------------------------------------------- budget
    length = functools.cache(functools.partial(prompt_tokens, tokenizer))
    prompts = list(rows["prompt"])
    plan = budget.plan_budget(cfg.max_new_tokens, cfg.max_new_tokens_margin, report,
                              _model_context(model), max(map(length, prompts), default=0),
                              model_dir=cfg.model_dir)  # fmt: skip
    prompts, trimmed = budget.fit_prompts(prompts, length, plan, list(rows["uid"]))
    stops = tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer, model))
    log.info("%s; stop at %s; %d of %d prompts trimmed to fit", plan.describe(),
             ", ".join(stops), sum(trimmed), len(prompts))  # fmt: skip

    # ---------------------------------------------------------------- generate
    with progress_bar(total=len(rows), desc="generate", unit="row") as bar:
        generations = generate(model, tokenizer, prompts, batch_size=cfg.batch_size,
                               max_new_tokens=plan.max_new_tokens, progress=bar)  # fmt: skip
    texts = [g.text for g in generations]
    predicted = [extract_prediction(g.text, finished=g.finished) for g in generations]
    frame = core.prediction_frame(rows, [a for a, _ in predicted], [t for _, t in predicted])

    # ---------------------------------------------------------------- prices
    prices = load_all_prices(core.price_window(frame, cfg.forward_windows), params.prices).frames

    # ---------------------------------------------------------------- compute
    basis = load_strategy(cfg.strategy_config).price_basis  # the backtest's, as it will trade
    frame, momentum = core.attach_forward_returns(frame, prices, cfg.forward_windows, basis)
    generation = {**plan.as_dict(), "stop_tokens": stops, "prompts_trimmed": sum(trimmed)}
    info = core.compute_metrics(cfg, frame, momentum, train_labels, generation)

    # ---------------------------------------------------------------- write
    write_outputs(cfg.out, frame, texts, info, cfg.forward_windows,
                  [g.new_tokens for g in generations])  # fmt: skip
    c = info["classification"]
    log.info("evaluated %d rows of %s: accuracy %.3f, parse rate %.3f (%d unparseable, %d "
             "truncated at max_new_tokens %d); wrote %s and beside it", c["n"], cfg.split,
             c["accuracy"], c["parse_rate"], c["unparseable"], c["truncated"],
             plan.max_new_tokens, cfg.out)  # fmt: skip

    # ---------------------------------------------------------------- publish
    matrix = c["confusion_matrix"]
    kfp_executor.publish(args.kfp_executor_input, metrics=core.headline(info),
            confusion=(matrix["labels"], matrix["matrix"]),
            markdown=cfg.out.with_name("eval_summary.md"))  # fmt: skip

    # ---------------------------------------------------------------- gate
    problem = core.parse_gate(info, cfg.min_parse_rate, cfg.out.with_name("eval_generations.jsonl"))
    if problem:
        raise QualityGateError(problem)  # exit 1, the outputs above kept
    return 0


def _model_context(model: object) -> int | None:
    """The model config's context length (max_position_embeddings), when it states one."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
