"""Supervised fine-tuning with TRL's SFTTrainer and PEFT LoRA / QLoRA.

    charlie train --config configs/sft_tiny_lora_cpu.yaml [--smoke-test] [--resume] [--merge]
    deepspeed --num_gpus=4 --no_local_rank --module charlie.cli train \\
        --config configs/sft_config_multigpu.yaml

One linear function, :func:`train`, split by banner comments (load data, load model, train,
save, evaluate), after the TRL and alignment-handbook scripts; the LoRA and quantisation
objects come from two small pure helpers. DESIGN.md's known traps are handled where they bite:
bf16 only where the hardware has it, embeddings resized without mean resizing and trained as
``modules_to_save``, the model loaded before any ZeRO-3 ``TrainingArguments`` exist, and
bitsandbytes' AVX512-BF16 CPU path switched off so 4-bit layers keep their gradients.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Any

from charlie import models
from charlie.errors import CharlieError
from charlie.io import load_dataset_dir
from charlie.training.config import TrainConfig
from charlie.training.manifest import write_loss_curve, write_manifest

log = logging.getLogger("charlie.train")
TRAINABLE_MODULES = ["embed_tokens", "lm_head"]  # the new special tokens must be learnable


def get_peft_config(cfg: TrainConfig) -> Any:
    """The LoRA config, or None for full fine-tuning."""
    if cfg.method == "full":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules,
        modules_to_save=TRAINABLE_MODULES,
        task_type="CAUSAL_LM",
    )


def get_quantization_config(cfg: TrainConfig, compute_dtype: Any) -> Any:
    """4-bit NF4 with double quantisation for QLoRA, else None."""
    if cfg.method != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def sft_arguments(cfg: TrainConfig, *, cuda: bool, smoke_test: bool, report_to: list[str]) -> Any:
    """Build TRL's SFTConfig from the file's pass-through keys, adapted to the hardware."""
    from trl import SFTConfig

    known = {f.name for f in dataclasses.fields(SFTConfig)}
    args = {k: v for k, v in cfg.sft_args.items() if k != "report_to"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise CharlieError(
            f"unknown key(s) {', '.join(unknown)} in the training config: neither Charlie's "
            f"({', '.join(TrainConfig.model_fields)}) nor trl.SFTConfig's."
        )
    if not cuda:
        if args.get("bf16") or args.get("fp16"):
            log.warning("no CUDA device: training in fp32 on the CPU instead of bf16/fp16")
        args.update(use_cpu=True, bf16=False, fp16=False)
        if "LOCAL_RANK" not in os.environ:  # DeepSpeed only under a launcher
            args.pop("deepspeed", None)
    if smoke_test:
        args.update(max_steps=cfg.smoke_test_steps, save_steps=cfg.smoke_test_steps,
                    eval_steps=cfg.smoke_test_steps, logging_steps=1)  # fmt: skip
    if args.get("gradient_checkpointing"):
        args.setdefault("gradient_checkpointing_kwargs", {"use_reentrant": False})
    # Progress bars for people at a terminal; logs (DVC, KFP, CI) get the metrics lines only.
    args.setdefault("disable_tqdm", not sys.stderr.isatty())
    return SFTConfig(
        output_dir=str(cfg.checkpoint_dir or cfg.output_dir),
        max_length=cfg.max_length,
        completion_only_loss=True,
        report_to=report_to,
        **args,
    )


def _report_to(cfg: TrainConfig) -> list[str]:
    """TensorBoard as configured; W&B only when USE_WANDB=true, silently off otherwise."""
    wanted = cfg.sft_args.get("report_to", ["tensorboard"])
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    wanted = [r for r in wanted if r != "wandb"]
    if os.environ.get("USE_WANDB", "").lower() in ("1", "true", "yes"):
        wanted.append("wandb")
    return [r for r in wanted if r != "none"] or ["none"]


def _cpu_4bit_gradient_fix(model: Any) -> None:
    """bitsandbytes' AVX512-BF16 CPU kernel loses gradients after an eval-mode forward."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def train(
    cfg: TrainConfig,
    *,
    smoke_test: bool = False,
    resume: bool | None = None,
    merge: bool | None = None,
    config_path: Path | None = None,
) -> dict[str, Any]:
    """Fine-tune ``cfg.base_model`` on ``cfg.dataset_dir`` and save into ``cfg.output_dir``.

    Args:
        cfg: The training config.
        smoke_test: Run ``cfg.smoke_test_steps`` steps only.
        resume: True: continue from the latest checkpoint (error if none); False: start over;
            None (default): continue when a checkpoint exists, as a retried pipeline step must.
        merge: Also write a merged model (default: ``cfg.merge``).
        config_path: The config file, hashed into the manifest.

    Returns:
        The final metrics.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerState
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    started = dt.datetime.now(dt.UTC)
    cuda = torch.cuda.is_available()
    if not sys.stderr.isatty():
        import datasets

        datasets.disable_progress_bars()

    # ------------------------------------------------------------------ load data
    if not (cfg.dataset_dir / "dataset_dict.json").is_file():
        raise CharlieError(f"{cfg.dataset_dir} holds no tokenized dataset; run `charlie tokenize`.")
    dataset = load_dataset_dir(cfg.dataset_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(cfg.dataset_dir / "tokenizer"))
    for split in ("train", "validation"):
        if split not in dataset:
            raise CharlieError(f"{cfg.dataset_dir} has no {split} split.")
    columns = [
        c for c in dataset["train"].column_names if c not in ("input_ids", "completion_mask")
    ]

    # ------------------------------------------------------------------ resume?
    checkpoints = cfg.checkpoint_dir or cfg.output_dir
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if resume and last is None:
        raise CharlieError(f"--resume: no checkpoint-* directory in {checkpoints}.")
    resume_from = last if resume is not False else None
    if resume_from:
        log.info("resuming from %s", resume_from)

    # ------------------------------------------------------------------ load model
    # Before SFTConfig: with a ZeRO-3 config, building TrainingArguments turns zero.Init on
    # process-wide, and the model must not be loaded through it here.
    compute_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    quantization = get_quantization_config(cfg, compute_dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            cfg.base_model,
            dtype=compute_dtype,
            quantization_config=quantization,
            trust_remote_code=cfg.trust_remote_code,
        )
    except OSError as exc:
        raise CharlieError(
            f"cannot load the base model {cfg.base_model!r}: {str(exc).splitlines()[0]}"
        ) from None
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(cfg.sft_args.get("gradient_checkpointing"))
        )
        if not cuda:
            _cpu_4bit_gradient_fix(model)

    # ------------------------------------------------------------------ train
    args = sft_arguments(cfg, cuda=cuda, smoke_test=smoke_test, report_to=_report_to(cfg))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset["train"].remove_columns(columns),
        eval_dataset=dataset["validation"].remove_columns(columns),
        processing_class=tokenizer,
        peft_config=get_peft_config(cfg),
    )
    saved = None  # the last checkpoint's state, when a max_steps run resumes
    if resume_from and args.max_steps > 0 and not args.deepspeed:
        saved = TrainerState.load_from_json(os.path.join(resume_from, "trainer_state.json"))
    if saved is not None and saved.global_step >= args.max_steps:
        # Trainer runs one step past max_steps when it resumes a finished run (its loop checks
        # for the end only after a step): load the last checkpoint's weights and state instead.
        log.info("%s already reached max_steps=%d: nothing left to train", resume_from,
                 args.max_steps)  # fmt: skip
        trainer._load_from_checkpoint(resume_from)
        trainer.state = saved
        # What train() does first: callbacks set up (TensorBoard writes under output_dir/runs).
        trainer.control = trainer.callback_handler.on_train_begin(args, trainer.state,
                                                                  trainer.control)  # fmt: skip
        train_metrics: dict[str, Any] = {}
    else:
        train_metrics = trainer.train(resume_from_checkpoint=resume_from).metrics

    # ------------------------------------------------------------------ save
    trainer.save_model(str(cfg.output_dir))  # the adapter (or full model) and the tokenizer
    metrics = {**train_metrics, "global_step": trainer.state.global_step}

    # ------------------------------------------------------------------ evaluate
    metrics.update(trainer.evaluate())
    if merge if merge is not None else cfg.merge:
        merged = merge_adapter(cfg, tokenizer)
        metrics["merged_model"] = str(merged)
    if trainer.is_world_process_zero():
        write_manifest(cfg, config_path, started, metrics, trainer.state.log_history)
        write_loss_curve(cfg.output_dir, trainer.state.log_history)
    return metrics


def merge_adapter(cfg: TrainConfig, tokenizer: Any) -> Path:
    """Write ``<output_dir>/merged``: the base model with the adapter folded in.

    The base is reloaded unquantised (a 4-bit base cannot absorb the adapter exactly) and
    resized before the adapter loads, so the result opens with plain AutoModelForCausalLM.
    """
    out = cfg.output_dir / "merged"
    if cfg.method == "full":
        raise CharlieError(
            "--merge applies to LoRA and QLoRA adapters; a full fine-tune is already whole."
        )
    merged = models.merge_adapter(
        cfg.output_dir,
        len(tokenizer),
        base_model=cfg.base_model,
        trust_remote_code=cfg.trust_remote_code,
    )
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
