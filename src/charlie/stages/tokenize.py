"""Tokenize the SFT dataset with the chat template and the thesis special tokens.

Loads the base model's tokenizer (the training config's `tokenizer` or `base_model`), adds the
seed's special tokens (<reasoning> ... <STRONG_SELL>), applies the chat template (the prompt as
the user turn, the completion as the assistant turn) and tokenizes with a batched,
multi-process datasets.map. Writes the training config's `dataset_dir`: a DatasetDict with
input_ids and completion_mask (the loss covers the completion only), saved in --num-shards
shards, the extended tokenizer in tokenizer/, and tokenize_report.json (token-length
percentiles per split, and how many examples exceeded max_length and what was done).

Over-length examples never lose their completion (so the action and closing tags survive):
with over_length: trim_prompt the prompt loses its oldest tokens; with drop they are dropped.
"""

from __future__ import annotations

import argparse
import logging

HELP = "apply the chat template and special tokens; save tokenized shards"
log = logging.getLogger("charlie.tokenize")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags override params.yaml's `train` and `dataset` sections."""
    parser.add_argument("--config", help="training config (default: train.config)")
    parser.add_argument("--dataset", help="the SFT DatasetDict (default: dataset.out)")
    parser.add_argument("--out", help="output directory (default: the config's dataset_dir)")
    parser.add_argument(
        "--tokenizer",
        help="base tokenizer: a path or hub id (default: the config's tokenizer or base_model)",
    )
    parser.add_argument(
        "--num-shards", type=int, help="shards per split (default: train.num_shards)"
    )
    parser.add_argument(
        "--num-proc", type=int, help="tokenizer processes (default: train.num_proc)"
    )


def run(args: argparse.Namespace) -> int:
    """Tokenize every split and write the shards, tokenizer and report atomically."""
    import json
    import sys
    from pathlib import Path

    from charlie.config import load_params
    from charlie.errors import CharlieError
    from charlie.io import atomic_directory
    from charlie.logs import setup_logging
    from charlie.training.config import load_train_config

    params = load_params(
        args.params,
        overrides={
            "train.config": args.config,
            "dataset.out": args.dataset,
            "train.num_shards": args.num_shards,
            "train.num_proc": args.num_proc,
        },
    )
    config = load_train_config(params.train.config)
    setup_logging("tokenize")
    source = params.dataset.out
    out = Path(args.out) if args.out else config.dataset_dir
    if not (source / "dataset_dict.json").is_file():
        raise CharlieError(f"{source} is not a DatasetDict; run `charlie dataset` first.")

    import datasets
    from transformers import AutoTokenizer

    from charlie.dataset import percentiles
    from charlie.io import load_dataset_dir
    from charlie.training.tokenize import tokenize_batch
    from charlie.training.tokens import add_thesis_tokens

    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
    name = args.tokenizer or config.tokenizer or config.base_model
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise CharlieError(
            f"cannot load the tokenizer {name!r}: {str(exc).splitlines()[0]}"
        ) from None
    if tokenizer.chat_template is None:
        raise CharlieError(
            f"the tokenizer {name!r} has no chat template; set one or use an instruct model."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    added = add_thesis_tokens(tokenizer)

    dataset = load_dataset_dir(source)
    tokenized = dataset.map(
        tokenize_batch,
        batched=True,
        num_proc=params.train.num_proc if min(len(s) for s in dataset.values()) > 64 else None,
        fn_kwargs={
            "tokenizer": tokenizer,
            "max_length": config.max_length,
            "policy": config.over_length,
        },
        remove_columns=["prompt", "completion"],
        desc="tokenize",
    )
    report = {"tokenizer": name, "added_special_tokens": added, "max_length": config.max_length,
              "over_length": config.over_length, "splits": {}}  # fmt: skip
    for split, part in tokenized.items():
        outcomes = part["outcome"]
        report["splits"][split] = {
            "examples": len(part),
            "tokens": percentiles(part["full_length"]),
            "over_max_length": sum(o != "ok" for o in outcomes),
            "trimmed": outcomes.count("trimmed"),
            "dropped": outcomes.count("dropped"),
        }
    kept = tokenized.filter(
        lambda o: [x != "dropped" for x in o], input_columns="outcome", batched=True
    )
    kept = kept.remove_columns(["outcome", "full_length"])
    with atomic_directory(out) as tmp:
        kept.save_to_disk(str(tmp), num_shards={s: params.train.num_shards for s in kept})
        tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "tokenize_report.json").write_text(json.dumps(report, indent=2) + "\n")
    for split, info in report["splits"].items():
        t = info["tokens"]
        log.info(
            "%-10s %5d examples; tokens p50 %.0f p90 %.0f p99 %.0f max %.0f; over %d: %d trimmed, %d dropped",
            split, info["examples"], t.get("p50", 0), t.get("p90", 0), t.get("p99", 0), t.get("max", 0),
            info["over_max_length"], info["trimmed"], info["dropped"],
        )  # fmt: skip
    log.info("wrote %s (%d special tokens added to %s)", out, added, name)
    return 0
