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

HELP = "generate theses for a split and score them against baselines"
log = logging.getLogger("charlie.evaluate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags override the eval config file."""
    parser.add_argument(
        "--config", default="configs/eval_config.yaml", help="eval config (default: %(default)s)"
    )
    parser.add_argument("--model-dir", help="adapter directory or merged model")
    parser.add_argument("--dataset-dir", help="the SFT DatasetDict (prompt, completion, ...)")
    parser.add_argument("--split", help="split to evaluate (default: test)")
    parser.add_argument("--out", help="per-sample CSV; the other outputs go beside it")
    parser.add_argument("--batch-size", type=int, help="generation batch size")
    parser.add_argument("--max-new-tokens", type=int, help="tokens generated per row")
    parser.add_argument("--limit", type=int, help="evaluate the first N rows only (a quick look)")

    from charlie import kfp_executor

    kfp_executor.add_argument(parser)


def load_for_inference(model_dir):
    """A model ready to generate, from an adapter directory or a full model directory."""
    import json

    from charlie.errors import CharlieError

    if (model_dir / "adapter_config.json").is_file():
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        base_name = json.loads((model_dir / "adapter_config.json").read_text())[
            "base_model_name_or_path"
        ]
        try:
            base = AutoModelForCausalLM.from_pretrained(base_name, dtype=torch.float32)
        except OSError as exc:
            raise CharlieError(
                f"cannot load the adapter's base model {base_name!r}: {str(exc).splitlines()[0]}"
            ) from None
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        return PeftModel.from_pretrained(base, str(model_dir)).merge_and_unload(), tokenizer
    weights = list(model_dir.glob("*.safetensors")) + list(model_dir.glob("pytorch_model*.bin"))
    if not weights:
        raise CharlieError(
            f"{model_dir} holds no model weights (an adapter_config.json with its adapter, or a "
            "model's *.safetensors); point --model-dir at a `charlie train` output."
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(model_dir)), AutoTokenizer.from_pretrained(
        str(model_dir)
    )


def run(args: argparse.Namespace) -> int:
    """Generate, score, write; returns the exit code."""
    import datetime as dt
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from charlie.config import load_config, load_params
    from charlie.errors import CharlieError
    from charlie.evaluation.config import EvalConfig
    from charlie.evaluation.report import write_outputs
    from charlie.logs import setup_logging

    params = load_params(args.params)
    base = load_config(args.config, EvalConfig) if Path(args.config).is_file() else EvalConfig()
    overrides = {k: v for k, v in {
        "model_dir": args.model_dir and Path(args.model_dir), "dataset_dir": args.dataset_dir and Path(args.dataset_dir),
        "split": args.split, "out": args.out and Path(args.out), "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens}.items() if v is not None}  # fmt: skip
    cfg = base.model_copy(update=overrides)
    setup_logging("evaluate")

    # ---------------------------------------------------------------- data
    if not (cfg.dataset_dir / "dataset_dict.json").is_file():
        raise CharlieError(f"{cfg.dataset_dir} is not a DatasetDict; run `charlie dataset` first.")
    from charlie.io import load_dataset_dir

    data = load_dataset_dir(cfg.dataset_dir)
    if cfg.split not in data:
        raise CharlieError(
            f"{cfg.dataset_dir} has no {cfg.split!r} split (it has {', '.join(data)})."
        )
    rows = data[cfg.split]
    if args.limit:
        rows = rows.select(range(min(args.limit, len(rows))))
    model, tokenizer = load_for_inference(cfg.model_dir)

    # ---------------------------------------------------------------- generate
    from charlie.inference import extract_action, greedy_complete
    from charlie.progress import progress_bar

    with progress_bar(total=len(rows), desc="generate", unit="row") as bar:
        texts = greedy_complete(model, tokenizer, rows["prompt"], batch_size=cfg.batch_size,
                                max_new_tokens=cfg.max_new_tokens, progress=bar)  # fmt: skip
    pred = [extract_action(t) for t in texts]

    # ---------------------------------------------------------------- forward returns
    from charlie.evaluation.returns import forward_returns, momentum_sign
    from charlie.stages.prices import load_all_prices

    frame = pd.DataFrame({"uid": rows["uid"], "ticker": rows["ticker"], "as_of_date": rows["as_of_date"],
                          "true_action": rows["action"], "pred_action": pred})  # fmt: skip
    frame["correct"] = frame["true_action"] == frame["pred_action"]
    margin = dt.timedelta(days=max(cfg.forward_windows) * 2 + 10)
    history = dt.timedelta(days=40)
    wanted = {
        t: (
            dt.date.fromisoformat(g["as_of_date"].min()) - history,
            dt.date.fromisoformat(g["as_of_date"].max()) + margin,
        )
        for t, g in frame.groupby("ticker")
    }
    prices = load_all_prices(wanted, params.prices).frames
    momentum = np.zeros(len(frame))
    for h in cfg.forward_windows:
        frame[f"fwd_ret_{h}"] = np.nan
    for ticker, group in frame.groupby("ticker"):
        fwd = forward_returns(prices[ticker], list(group["as_of_date"]), cfg.forward_windows)
        for h, values in fwd.items():
            frame.loc[group.index, f"fwd_ret_{h}"] = values
        momentum[group.index.to_numpy()] = momentum_sign(prices[ticker], list(group["as_of_date"]))

    info = write_outputs(
        cfg, frame, texts, momentum, list(data["train"]["action"]) if "train" in data else []
    )
    acc = frame["correct"].mean()
    log.info("evaluated %d rows of %s: accuracy %.3f, parse rate %.3f; wrote %s and beside it",
             len(frame), cfg.split, acc, 1 - (frame["pred_action"] == "UNPARSEABLE").mean(), cfg.out)  # fmt: skip
    from charlie.evaluation.report import headline
    from charlie.kfp_executor import publish

    matrix = info["classification"]["confusion_matrix"]
    publish(args.kfp_executor_input, metrics=headline(info),
            confusion=(matrix["labels"], matrix["matrix"]),
            markdown=cfg.out.with_name("eval_summary.md"))  # fmt: skip
    return 0
