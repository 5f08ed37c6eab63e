"""Tokenize the SFT dataset with the chat template and the thesis special tokens.

Loads the base model's tokenizer (the training config's `tokenizer` or `base_model`), adds the
seed's special tokens (<reasoning> ... <STRONG_SELL>), applies the chat template (the prompt as
the user turn, the completion as the assistant turn) and tokenizes with a batched,
multi-process datasets.map. Writes the training config's `dataset_dir`: a DatasetDict with
input_ids and completion_mask (the loss covers the completion only), saved in --num-shards
shards, the extended tokenizer in tokenizer/, and tokenize_report.json: the max_length used
(`max_length`; `max_length_setting` as configured; `context_length`, the base model's), and per
split token-length percentiles (whole example, prompt, completion), how many examples exceeded
max_length and what was done, overall and per action.

The base model may be a `charlie fetch-model` reference folder (config.json, tokenizer files and
base_model.json, no weights): it loads as a tokenizer folder, and as --tokenizer it also gives
the base model's context length.

Every example is measured whole first. max_length: auto takes the smallest length that fits
every example, capped by the base model's context (its config's max_position_embeddings, or
the tokenizer's model_max_length). Over-length examples never lose their completion (so the
action and closing tags survive): with over_length: trim_prompt the prompt loses whole snapshot
sections, least important first, keeping the instruction and the ticker/date header; with drop
they are dropped. The stage fails, writing nothing, when max_length trims or drops more than
max_over_length_share of a split, or dropping moves an action's share of a split by more than
max_label_shift.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from charlie.basemodel import read_reference
from charlie.config import (
    CONFIG,
    DatasetParams,
    TrainParams,
    add_flags,
    load_params,
    train_settings,
)
from charlie.errors import CharlieError
from charlie.io import atomic_directory, load_dataset_dir, require_dataset_dict
from charlie.logs import setup_logging
from charlie.training.config import TrainConfig, context_length, load_train_config
from charlie.training.tokenize import (
    STATS,
    check_gates,
    choose_max_length,
    fit_batch,
    summarize_split,
    tokenize_batch,
)
from charlie.training.tokens import add_thesis_tokens

log = logging.getLogger("charlie.tokenize")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags override params.yaml's `train` and `dataset` sections and the training config."""
    add_flags(parser, TrainParams, "train", ["config"])
    add_flags(parser, DatasetParams, "dataset", {"dataset": "out"})
    add_flags(parser, TrainConfig, CONFIG,
              {"out": "dataset_dir", "tokenizer": "tokenizer", "base_model": "base_model"})  # fmt: skip
    lengths = ["max_length", "over_length", "max_over_length_share", "max_label_shift"]
    add_flags(parser, TrainConfig, CONFIG, lengths)
    add_flags(parser, TrainParams, "train", ["num_shards", "num_proc"])


def run(args: argparse.Namespace) -> int:
    """Tokenize every split and write the shards, tokenizer and report atomically."""
    params = load_params(args)
    config = load_train_config(params.train.config, args, train_settings(params))
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

    context = context_length(_model_config(config), tokenizer.model_max_length)

    dataset = load_dataset_dir(source)
    num_proc = params.train.num_proc if min(len(s) for s in dataset.values()) > 64 else None
    measured = dataset.map(  # every example whole: its length decides max_length: auto
        tokenize_batch,
        batched=True,
        num_proc=num_proc,
        fn_kwargs={"tokenizer": tokenizer, "max_length": None, "policy": config.over_length},
        desc="tokenize",
    )
    longest = max((max(part["full_length"]) for part in measured.values() if len(part)), default=0)
    max_length = choose_max_length(config.max_length, longest, context)
    fitted = measured
    if longest > max_length:
        fitted = measured.map(
            fit_batch,
            batched=True,
            num_proc=num_proc,
            fn_kwargs={
                "tokenizer": tokenizer,
                "max_length": max_length,
                "policy": config.over_length,
            },
            desc=f"fit to {max_length}",
        )
    splits = {
        split: summarize_split(
            list(part["outcome"]),
            list(part["action"]) if "action" in part.column_names else None,
            list(part["prompt_tokens"]),
            list(part["completion_tokens"]),
        )
        for split, part in fitted.items()
    }
    _log_lengths(config.max_length, max_length, longest, context, splits)
    check_gates(splits, setting=config.max_length, max_length=max_length, context=context,
                longest=longest, max_over_length_share=config.max_over_length_share,
                max_label_shift=config.max_label_shift)  # fmt: skip
    report = {"tokenizer": name, "added_special_tokens": added, "max_length": max_length,
              "max_length_setting": config.max_length, "context_length": context,
              "longest_example": longest, "over_length": config.over_length,
              "max_over_length_share": config.max_over_length_share,
              "max_label_shift": config.max_label_shift, "splits": splits}  # fmt: skip
    kept = fitted.filter(
        lambda o: [x != "dropped" for x in o], input_columns="outcome", batched=True
    )
    kept = kept.remove_columns(["prompt", "completion", *STATS])
    with atomic_directory(out) as tmp:
        kept.save_to_disk(str(tmp), num_shards={s: params.train.num_shards for s in kept})
        tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "tokenize_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s (%d special tokens added to %s)", out, added, name)
    return 0


def _model_config(config: TrainConfig) -> dict:
    """The base model's config as a dict, or {} when it cannot be read (no context cap then).

    A tokenizer that is a base model reference (`charlie fetch-model`'s folder, as the pipeline
    passes it) names the base model too: its config.json is read instead of base_model's.
    """
    from transformers import AutoConfig

    source = config.base_model
    if config.tokenizer and read_reference(config.tokenizer) is not None:
        source = config.tokenizer
    try:
        loaded = AutoConfig.from_pretrained(source, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        log.warning("cannot read %s's config (%s): its context length is unknown",
                    source, why)  # fmt: skip
        return {}
    return loaded.to_dict()


def _log_lengths(setting, max_length: int, longest: int, context: int | None, splits) -> None:
    """How max_length was chosen, then per split its lengths and what was trimmed or dropped."""
    where = (
        f"the base model's context is {context:,}"
        if context
        else "the base model's context is unknown"
    )
    if setting == "auto":
        how = (
            "auto: the longest example" if max_length == longest else "auto: capped at the context"
        )
    else:
        how = "as configured"
    log.info("max_length %d (%s); the longest example needs %d tokens, %s", max_length, how,
             longest, where)  # fmt: skip
    if context and max_length > context:
        log.warning("max_length %d is longer than the base model's context (%d)", max_length,
                    context)  # fmt: skip
    for split, info in splits.items():
        t, p, c = info["tokens"], info["prompt_tokens"], info["completion_tokens"]
        log.info(
            "%-10s %5d examples; tokens p50 %.0f p90 %.0f p99 %.0f max %.0f (prompt p50 %.0f "
            "p99 %.0f, completion p50 %.0f p99 %.0f); over %d: %d trimmed, %d dropped",
            split, info["examples"], t.get("p50", 0), t.get("p90", 0), t.get("p99", 0),
            t.get("max", 0), p.get("p50", 0), p.get("p99", 0), c.get("p50", 0), c.get("p99", 0),
            info["over_max_length"], info["trimmed"], info["dropped"],
        )  # fmt: skip
        by_action = info.get("by_action") or {}
        if by_action:
            log.info("%-10s by action: %s", split, ", ".join(
                f"{a} {n['examples']} ({n['trimmed']} trimmed, {n['dropped']} dropped)"
                for a, n in by_action.items()))  # fmt: skip
