"""Estimate a training run's memory per GPU and say whether it fits, before renting the GPUs.

Reads the training config (configs/sft_*.yaml), the base model's config.json (a local model
folder, one with a base_model.json reference, the Hugging Face cache, the hub when it answers,
or the copy shipped in configs/models/<hub id with / as __>/) and the GPU type's memory
(configs/gpus.yaml), then prints a table of weights, gradients, optimizer state and activations
per GPU, with ZeRO sharding across every GPU of every node, what an optimizer step trains on
(tokens and examples, packed rows with packing, and what packing would change), the attention
kernel's seq² masks and scores (none for flash attention), and a one-sentence verdict. No
weights are downloaded or loaded (architectures the planner does not count by arithmetic are
built on PyTorch's meta device); the conventions are in charlie.plan's docstring. In a Kubeflow
pipeline it runs on a CPU pod before any GPU is requested, and stops the run when it does not
fit. A config with `gpu_type: CPU` has no GPU to check: the plan says so and exits 0.

  charlie plan --config configs/sft_llama3_8b_qlora_1gpu.yaml
  charlie plan --config configs/sft_config_multigpu.yaml --gpus 16 --gpu-type H100-80GB
  charlie plan --config configs/sft_config_multigpu.yaml --nodes 4 --gpus 8 --out plan.md
  charlie plan --config configs/sft_llama3_8b_qlora_1gpu.yaml --base-model Qwen/Qwen2.5-7B-Instruct

exit codes:
  0  it fits (or gpu_type is CPU: nothing to check)
  1  it does not fit (the verdict, with the numbers and what to change, goes to stderr)
  2  bad input: a missing or invalid config, no config.json for the model anywhere, an unknown
     GPU type, --nodes below 1
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from charlie.config import CONFIG, TrainParams, add_flags, load_params, train_settings
from charlie.errors import CharlieError
from charlie.io import atomic_outputs
from charlie.kubeflow import executor as kfp_executor
from charlie.logs import setup_logging
from charlie.plan import (
    is_cpu,
    no_gpu_sentence,
    plan_for,
    plan_metrics,
    render_markdown,
    render_table,
    verdict,
)
from charlie.training.config import TrainConfig, load_train_config

log = logging.getLogger("charlie.plan")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training config, what-if overrides of its model, data and hardware keys, and outputs."""
    add_flags(parser, TrainParams, "train", ["config"])
    add_flags(
        parser,
        TrainConfig,
        CONFIG,
        {
            "base_model": "base_model",
            "dataset_dir": "dataset_dir",  # its tokenize_report.json: max_length: auto's length
            "gpus": "num_gpus",
            "gpu_type": "gpu_type",
        },
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        metavar="N",
        help="Nodes the run uses, each with --gpus GPUs; ZeRO shards across all of them "
        "(default: 1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="Also write the table and verdict to FILE as Markdown (for Kubeflow's UI)",
    )
    kfp_executor.add_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Print the plan's table and verdict; returns 0 when it fits, 1 when it does not."""
    setup_logging("plan")
    if args.nodes < 1:
        raise CharlieError(f"--nodes must be at least 1, not {args.nodes}.")
    params = load_params(args)
    cfg = load_train_config(params.train.config, args, train_settings(params))

    if is_cpu(cfg.gpu_type):
        sentence = no_gpu_sentence(cfg)
        print(sentence)
        _publish(args, f"# Memory plan\n\n{sentence}\n", {"fits": 1, "gpus": 0})
        return 0

    plan = plan_for(cfg, num_nodes=args.nodes)
    log.debug("plan: %s", plan)
    print(render_table(plan))
    _publish(args, render_markdown(plan), plan_metrics(plan))
    sentence = verdict(plan)
    if plan.fits:
        print(sentence)
        return 0
    log.error(sentence)
    return 1


def _publish(args: argparse.Namespace, markdown: str, metrics: dict) -> None:
    """Write --out, and fill the Kubeflow component's Markdown and Metrics outputs."""
    if args.out is not None:
        with atomic_outputs(args.out) as (tmp,):
            tmp.write_text(markdown, encoding="utf-8")
    if args.kfp_executor_input is None:
        return
    if args.out is not None:
        kfp_executor.publish(args.kfp_executor_input, markdown=args.out, metrics=metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "plan.md"
        report.write_text(markdown, encoding="utf-8")
        kfp_executor.publish(args.kfp_executor_input, markdown=report, metrics=metrics)
