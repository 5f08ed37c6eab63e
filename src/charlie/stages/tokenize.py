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
import json
import logging
import sys

from charlie.config import CONFIG, DatasetParams, TrainParams, add_flags, load_params
from charlie.dataset import percentiles
from charlie.errors import CharlieError
from charlie.io import atomic_directory, load_dataset_dir, require_dataset_dict
from charlie.logs import setup_logging
from charlie.training.config import TrainConfig, load_train_config
from charlie.training.tokenize import tokenize_batch
from charlie.training.tokens import add_thesis_tokens

log = logging.getLogger("charlie.tokenize")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags override params.yaml's `train` and `dataset` sections and the training config."""
    add_flags(parser, TrainParams, "train", ["config"])
    add_flags(parser, DatasetParams, "dataset", {"dataset": "out"})
    add_flags(parser, TrainConfig, CONFIG, {"out": "dataset_dir", "tokenizer": "tokenizer"})
    add_flags(parser, TrainParams, "train", ["num_shards", "num_proc"])


def run(args: argparse.Namespace) -> int:
    """Tokenize every split and write the shards, tokenizer and report atomically."""
    params = load_params(args)
    config = load_train_config(params.train.config, overrides=args)
    setup_logging("tokenize")
    source = params.dataset.out
    out = config.dataset_dir
    require_dataset_dict(source)

    import datasets
    from transformers import AutoTokenizer

    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
    name = config.tokenizer or config.base_model
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
