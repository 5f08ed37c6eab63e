"""Build the tiny local base model: a byte-level BPE tokenizer and a small Llama.

Trains the tokenizer on the training split's prompts and completions (with a chat template),
builds a randomly initialised Llama-family causal LM sized from params.yaml's `init_model`
section, and saves both with save_pretrained to --out. This is the demo's default base model:
no download, and it trains on 2 CPU cores in minutes. Real runs name a hub model or a local
path as `base_model` in their configs/sft_*.yaml instead.
"""

from __future__ import annotations

import argparse
import logging

from charlie.config import InitModelParams, add_flags, load_params
from charlie.io import atomic_directory, load_dataset_dir, require_dataset_dict
from charlie.logs import setup_logging
from charlie.training.tokens import build_tiny_model, train_tokenizer

log = logging.getLogger("charlie.init_model")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags override params.yaml's `init_model` section."""
    add_flags(parser, InitModelParams, "init_model")


def run(args: argparse.Namespace) -> int:
    """Train the tokenizer, build the model, save both atomically."""
    cfg = load_params(args).init_model
    setup_logging("init-model")
    require_dataset_dict(cfg.dataset)

    train = load_dataset_dir(cfg.dataset)["train"]
    texts = (f"{p}\n{c}" for p, c in zip(train["prompt"], train["completion"], strict=True))
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    model = build_tiny_model(
        tokenizer,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_positions=cfg.max_positions,
        seed=cfg.seed,
    )
    with atomic_directory(cfg.out) as tmp:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "tiny model: %d tokens in the vocabulary, %.2fM parameters, %d layers x %d hidden; saved to %s",
        len(tokenizer), n_params / 1e6, cfg.num_layers, cfg.hidden_size, cfg.out,
    )  # fmt: skip
    return 0
