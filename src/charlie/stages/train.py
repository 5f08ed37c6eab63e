"""Fine-tune the base model on the tokenized dataset: TRL SFTTrainer with LoRA or QLoRA.

    charlie train --config configs/sft_tiny_lora_cpu.yaml            # the CPU demo
    charlie train --config configs/sft_config.yaml --smoke-test      # 10 steps, as in the seed
    deepspeed --num_gpus=4 --no_local_rank --module charlie.cli train \\
        --config configs/sft_config_multigpu.yaml
    torchrun --nproc_per_node=4 -m charlie.cli train --config configs/sft_config_multigpu.yaml

The loss covers the completion only. Checkpoints go to the config's output_dir every
save_steps; when one exists the run continues from the latest (a preempted or retried step
resumes, it does not restart) unless --no-resume. Before loading anything on a GPU config the
memory plan is checked (`charlie plan`), and a run that cannot fit is refused in one sentence.
Writes the adapter and tokenizer, TensorBoard logs under <output_dir>/runs (W&B too when
USE_WANDB=true), manifest.json (git commit, config hash, data hashes, versions, hardware, seed,
times, final metrics) and, with --merge, <output_dir>/merged.
"""

from __future__ import annotations

import argparse
import logging

HELP = "fine-tune with TRL SFTTrainer + LoRA/QLoRA (resumable, with a manifest)"
log = logging.getLogger("charlie.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The config file and the run's switches."""
    parser.add_argument("--config", help="training config (default: params train.config)")
    parser.add_argument(
        "--smoke-test", nargs="?", const=True, default=False, type=_flag,
        help="run 10 steps only (also --smoke-test=true|false, as a pipeline passes it)",
    )  # fmt: skip
    parser.add_argument("--base-model", help="override the config's base_model (hub id or path)")
    parser.add_argument("--dataset-dir", help="override the config's dataset_dir")
    parser.add_argument("--output-dir", help="override the config's output_dir")
    parser.add_argument(
        "--checkpoint-dir",
        help="keep checkpoints here (e.g. on a PVC) so a retried step resumes; default: output_dir",
    )
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume", action="store_const", const=True, dest="resume",
        help="continue from the latest checkpoint (error if there is none)",
    )  # fmt: skip
    resume.add_argument(
        "--no-resume", action="store_const", const=False, dest="resume",
        help="start over even if checkpoints exist (default: continue when one exists)",
    )  # fmt: skip
    parser.add_argument(
        "--merge", action="store_const", const=True, help="also write <output_dir>/merged"
    )

    from charlie import kfp_executor

    kfp_executor.add_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Plan, train, save; returns the exit code."""
    from pathlib import Path

    from charlie.config import load_params
    from charlie.logs import setup_logging
    from charlie.training.config import load_train_config

    params = load_params(args.params, overrides={"train.config": args.config})
    config_path = Path(params.train.config)
    cfg = load_train_config(config_path)
    overrides = {"base_model": args.base_model,
                 "dataset_dir": args.dataset_dir and Path(args.dataset_dir),
                 "output_dir": args.output_dir and Path(args.output_dir),
                 "checkpoint_dir": args.checkpoint_dir and Path(args.checkpoint_dir)}  # fmt: skip
    cfg = cfg.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    setup_logging("train")
    if cfg.gpu_type.upper() != "CPU":
        refuse_if_it_cannot_fit(cfg)

    from charlie.training.sft import train

    metrics = train(cfg, smoke_test=args.smoke_test, resume=args.resume, merge=args.merge,
                    config_path=config_path)  # fmt: skip
    log.info(
        "trained %d steps: train loss %.4f, eval loss %.4f; saved to %s",
        metrics.get("global_step", 0), metrics.get("train_loss", float("nan")),
        metrics.get("eval_loss", float("nan")), cfg.output_dir,
    )  # fmt: skip
    from charlie.kfp_executor import publish

    publish(args.kfp_executor_input, metrics=metrics)
    return 0


def _flag(value: str) -> bool:
    """``true``/``false`` (any case, or 1/0, yes/no) as a bool, for ``--smoke-test=VALUE``."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def refuse_if_it_cannot_fit(cfg) -> None:
    """Raise the plan's one-sentence verdict when the run cannot fit its GPUs.

    Under a launcher the real world size counts, not the config's num_gpus.
    """
    import os

    from charlie.plan import check_fits, verdict

    world = int(os.environ.get("WORLD_SIZE", "0")) or None
    log.info("memory plan: %s", verdict(check_fits(cfg, num_gpus=world)))
