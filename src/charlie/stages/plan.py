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

HELP = "estimate per-GPU memory of a training config and say whether it fits"
log = logging.getLogger("charlie.plan")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: the training config, and overrides of its hardware keys."""
    parser.add_argument(
        "--config", required=True, help="training config YAML (e.g. configs/sft_config.yaml)"
    )
    parser.add_argument("--gpus", type=int, help="number of GPUs (default: the config's num_gpus)")
    parser.add_argument(
        "--gpu-type", help="GPU type from configs/gpus.yaml (default: the config's gpu_type)"
    )


def run(args: argparse.Namespace) -> int:
    """Print the plan's table and verdict; returns 0 when it fits, 1 when it does not."""
    from charlie.errors import CharlieError
    from charlie.logs import setup_logging
    from charlie.plan import plan_for, render_table, verdict
    from charlie.training.config import load_train_config

    setup_logging("plan")
    if args.gpus is not None and args.gpus < 1:
        raise CharlieError(f"--gpus must be at least 1, not {args.gpus}.")
    cfg = load_train_config(args.config)
    plan = plan_for(cfg, num_gpus=args.gpus, gpu_type=args.gpu_type)
    log.debug("plan: %s", plan)

    print(render_table(plan))
    sentence = verdict(plan)
    if plan.fits:
        print(sentence)
        return 0
    log.error(sentence)
    return 1
