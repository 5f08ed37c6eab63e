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
With max_length: auto the length `charlie tokenize` chose (<dataset_dir>/tokenize_report.json)
is used. attn_implementation: auto attends with FlashAttention where flash-attn is installed (on
CUDA, in bf16), else with transformers' default (sdpa), and logs which and why; packing (TRL's
padding-free rows) trains on a flash kernel only, and auto turns it off, saying so, without one. Before the weights load, the cost is logged: optimizer steps, tokens per epoch and an
estimated wall time (6 x parameters x tokens over this machine's measured FLOP/s; max_steps in
the config, or --smoke-test, bounds a first look at a large corpus).
Writes the adapter and tokenizer, TensorBoard logs under <output_dir>/runs (W&B too when
USE_WANDB=true), manifest.json (git commit, config hash, data hashes, versions, hardware, seed,
times, final metrics), tokenize_report.json (copied from the dataset, for evaluation) and, with
--merge, <output_dir>/merged (with the report too).

--base-model may be a `charlie fetch-model` reference folder (base_model.json, no weights): it
resolves to the folder on the cache volume that holds the weights, which this machine must
mount. base_model.json ({"ref", "path", "revision", "source"}: which base model and revision
the adapter belongs to) is written into the output dir, and into merged/ too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from charlie.basemodel import ResolvedModel, resolve, write_reference
from charlie.config import (
    CONFIG,
    TrainParams,
    add_flags,
    add_resume_flags,
    load_params,
    switch,
    train_settings,
)
from charlie.kubeflow import executor as kfp_executor
from charlie.logs import setup_logging
from charlie.plan import check_fits, verdict
from charlie.training.config import TrainConfig, load_train_config

log = logging.getLogger("charlie.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The config file, overrides of its keys, and the run's switches."""
    add_flags(parser, TrainParams, "train", ["config"])
    add_flags(parser, TrainConfig, CONFIG)
    parser.add_argument(
        "--smoke-test", nargs="?", const=True, default=False, type=switch,
        help="run the config's smoke_test_steps (10) only (also --smoke-test=true|false, as a "
        "pipeline passes it)",
    )  # fmt: skip
    add_resume_flags(parser)
    kfp_executor.add_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Plan, train, save; returns the exit code."""
    params = load_params(args)
    config_path = Path(params.train.config)
    cfg = load_train_config(config_path, args, train_settings(params))
    setup_logging("train")
    cfg, base = resolve_base_model(cfg)
    if cfg.gpu_type.upper() != "CPU":
        refuse_if_it_cannot_fit(cfg)

    from charlie.training.sft import train  # torch, transformers, trl: only when training

    metrics = train(cfg, smoke_test=args.smoke_test, resume=args.resume, config_path=config_path)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        record_base_model(cfg, base, metrics)
        write_model_cards(cfg, metrics)
    log.info(
        "trained %d steps: train loss %.4f, eval loss %.4f; %s",
        metrics.get("global_step", 0), metrics.get("train_loss", float("nan")),
        metrics.get("eval_loss", float("nan")),
        f"saved to {cfg.output_dir}" if rank == 0 else f"rank {rank}: rank 0 saves",
    )  # fmt: skip
    kfp_executor.publish(args.kfp_executor_input, metrics=metrics)  # rank 0 only
    return 0


def resolve_base_model(cfg: TrainConfig) -> tuple[TrainConfig, ResolvedModel]:
    """The config with base_model resolved to its weights, and what it resolved from.

    A `charlie fetch-model` reference folder (base_model.json, no weights) becomes the folder
    on the cache volume it records; a model folder or a hub id stays as it is.
    """
    base = resolve(cfg.base_model)
    if base.weights_path != cfg.base_model:
        log.info("base model %s (%s, revision %s) resolves to %s", base.ref, base.source,
                 base.revision, base.weights_path)  # fmt: skip
        cfg = cfg.model_copy(update={"base_model": base.weights_path})
    return cfg, base


def record_base_model(cfg: TrainConfig, base: ResolvedModel, metrics: dict) -> None:
    """Write base_model.json beside the adapter (and into merged/): which base, which revision."""
    merged = metrics.get("merged_model")
    write_reference(base, cfg.output_dir, *([merged] if merged else []))


def write_model_cards(cfg: TrainConfig, metrics: dict) -> None:
    """README.md (a Hugging Face model card, not TRL's template) in the output dir and merged/,
    and the adapter's base recorded as a hub id or an absolute path, so
    ``AutoPeftModelForCausalLM.from_pretrained`` loads it from any working directory."""
    from charlie.basemodel import read_reference
    from charlie.cards import model_card
    from charlie.io import load_dataset_dir, read_json_object

    out = Path(cfg.output_dir)
    if not (out / "manifest.json").is_file():  # nothing was trained and saved here
        log.debug("no manifest.json in %s: no model card", out)
        return
    manifest = read_json_object(out / "manifest.json")
    base = read_reference(out) or {"ref": cfg.base_model, "path": cfg.base_model}
    adapter_config = out / "adapter_config.json"
    if adapter_config.is_file() and base.get("source") != "hub" and Path(base["path"]).is_dir():
        config = read_json_object(adapter_config)
        config["base_model_name_or_path"] = str(Path(base["path"]).resolve())
        adapter_config.write_text(json.dumps(config, indent=2) + "\n")
    data = load_dataset_dir(cfg.dataset_dir)
    rows = {split: len(data[split]) for split in data}
    merged = metrics.get("merged_model")
    for folder, is_merged in (
        (out, cfg.method == "full"),
        *([(Path(merged), True)] if merged else []),
    ):
        card = model_card(name=folder.name, base=base, config=manifest["config"],
                          metrics=manifest["final_metrics"], data_files=manifest["data_files"],
                          rows=rows, merged=is_merged, git=manifest.get("git"))  # fmt: skip
        (folder / "README.md").write_text(card, encoding="utf-8")


def refuse_if_it_cannot_fit(cfg) -> None:
    """Raise the plan's one-sentence verdict when the run cannot fit its GPUs.

    Under a launcher the real world size counts, not the config's num_gpus.
    """
    world = int(os.environ.get("WORLD_SIZE", "0")) or None
    log.info("memory plan: %s", verdict(check_fits(cfg, num_gpus=world)))
