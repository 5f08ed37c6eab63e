"""Estimate a training run's memory per GPU and say whether it fits, before renting the GPUs.

Reads the training config (configs/sft_*.yaml), the base model's config.json (a local model
directory, or the copy shipped in configs/models/<hub id with / as __>/) and the GPU type's
memory (configs/gpus.yaml), then prints a table of weights, gradients, optimizer state and
activations per GPU, with ZeRO sharding across the GPUs, and a one-sentence verdict. Nothing
is downloaded or loaded; the conventions are in charlie.plan's docstring.

  charlie plan --config configs/sft_llama3_8b_qlora_1gpu.yaml
  charlie plan --config configs/sft_config_multigpu.yaml --gpus 16 --gpu-type H100-80GB

exit codes:
  0  it fits
  1  it does not fit (the verdict, with what to change, goes to stderr)
  2  bad input: a missing or invalid config, an unshipped model config.json, an unknown GPU type
"""

from __future__ import annotations

import argparse
import logging

from charlie.config import CONFIG, TrainParams, add_flags, load_params, train_settings
from charlie.logs import setup_logging
from charlie.plan import plan_for, render_table, verdict
from charlie.training.config import TrainConfig, load_train_config

log = logging.getLogger("charlie.plan")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training config, and what-if overrides of its hardware keys."""
    add_flags(parser, TrainParams, "train", ["config"])
    add_flags(parser, TrainConfig, CONFIG, {"gpus": "num_gpus", "gpu_type": "gpu_type"})


def run(args: argparse.Namespace) -> int:
    """Print the plan's table and verdict; returns 0 when it fits, 1 when it does not."""
    setup_logging("plan")
    params = load_params(args)
    cfg = load_train_config(params.train.config, args, train_settings(params))
    plan = plan_for(cfg)
    log.debug("plan: %s", plan)

    print(render_table(plan))
    sentence = verdict(plan)
    if plan.fits:
        print(sentence)
        return 0
    log.error(sentence)
    return 1
