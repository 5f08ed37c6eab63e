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

The attention kernel is chosen before the weights load (``attn_implementation``:
:func:`charlie.training.config.choose_attention`; ``auto`` takes FlashAttention where its package
is installed, on CUDA, in bf16) and logged with the reason; packing (TRL's padding-free rows)
trains only on a flash kernel, and is turned off, saying so, where ``auto`` found none.

Before the weights load, the run's cost is logged: optimizer steps, tokens per epoch and a wall
time estimated as 6 x parameters x tokens (x 4/3 with activation checkpointing) over this
machine's FLOP/s, measured by a short forward/backward probe of the model's hidden size
(:func:`estimate_cost`). With ``max_length: auto`` the length ``charlie tokenize`` chose is
used; its report is copied beside the model (and into ``merged/``) for evaluation.

Under a launcher (torchrun, ``accelerate launch``, DeepSpeed; one node or several, as a
Kubeflow TrainJob runs it) every process trains and evaluates, and all of them share
``output_dir`` and ``checkpoint_dir`` (one RWX volume on a TrainJob); rank 0 alone runs the cost
probe, writes the model, the tokenizer, the tokenize report, ``merged/``, ``manifest.json`` and
``loss.csv``, and removes half-written checkpoints (:func:`latest_checkpoint`). Each process
logs its rank, its node and what it leaves to rank 0.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from charlie import headlines, models
from charlie.config import refuse_passthrough_keys
from charlie.errors import CharlieError
from charlie.headlines import SUFFIX, write_headline
from charlie.io import load_dataset_dir
from charlie.plan import load_model_config, model_shape
from charlie.training.config import (
    REPORT,
    Attention,
    TrainConfig,
    choose_attention,
    packing_problem,
    packs,
    tokenized_max_length,
)
from charlie.training.manifest import node_of_world, write_loss_curve, write_manifest
from charlie.training.targets import AUTO, resolve_targets
from charlie.training.tokens import THESIS_TOKENS

log = logging.getLogger("charlie.train")
TRAINABLE_MODULES = ["embed_tokens", "lm_head"]  # the new special tokens must be learnable
CPU_PROBE_LIMIT = 200_000_000  # probe weights (~0.8 GB in fp32) above which a CPU is not timed
FULL_MERGE = "--merge applies to LoRA and QLoRA adapters; a full fine-tune is already whole."


def get_peft_config(
    cfg: TrainConfig,
    model_config: dict[str, Any] | None = None,
    new_token_ids: Sequence[int] = (),
) -> Any:
    """The LoRA config, or None for full fine-tuning.

    embed_tokens and lm_head are trained whole (``modules_to_save``), or with
    ``trainable_embeddings: new_tokens`` embed_tokens only in the rows of ``new_token_ids``
    (``trainable_token_indices``) and lm_head whole.

    ``lora_target_modules: auto`` is resolved by the base model's ``model_type``
    (:mod:`charlie.training.targets`), read from ``model_config`` or, when that is None, from
    the base model's config.json (:func:`charlie.plan.load_model_config`); an unknown type or an
    unreadable config.json falls back to ``all-linear`` with a warning.
    """
    if cfg.method == "full":
        return None
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    if targets == AUTO:
        if model_config is None:
            try:
                model_config = load_model_config(cfg.base_model)
            except CharlieError as exc:
                log.warning("lora_target_modules: auto cannot read the base model's config: %s",
                            exc)  # fmt: skip
        targets = resolve_targets(targets, model_config)
        log.info("lora_target_modules: auto -> %s", targets)
    rows: dict[str, Any] = {"modules_to_save": TRAINABLE_MODULES}
    if cfg.trainable_embeddings == "new_tokens":
        if (model_config or {}).get("tie_word_embeddings"):
            log.warning("trainable_embeddings: new_tokens needs an untied lm_head; this model "
                        "ties it to embed_tokens, so both are trained whole")  # fmt: skip
        elif not new_token_ids:
            raise CharlieError("trainable_embeddings: new_tokens needs the added tokens' ids.")
        else:
            # lm_head stays whole: TRL's fused LM head reads lm_head.weight directly, so the row
            # deltas of a trainable-tokens wrapper there would never reach the loss.
            rows = {"modules_to_save": ["lm_head"],
                    "trainable_token_indices": {"embed_tokens": sorted(set(new_token_ids))}}  # fmt: skip
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        **rows,
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


def sft_arguments(
    cfg: TrainConfig,
    *,
    cuda: bool,
    smoke_test: bool,
    report_to: list[str],
    max_length: int | None = None,
    attn_implementation: str | None = None,
) -> Any:
    """Build TRL's SFTConfig from the file's pass-through keys, adapted to the hardware.

    Args:
        cfg: The training config.
        cuda: Whether a CUDA device trains (else fp32 on the CPU, DeepSpeed off).
        smoke_test: Run ``cfg.smoke_test_steps`` steps.
        report_to: Where to log (:func:`_report_to`).
        max_length: The length to train with (default: :func:`tokenized_max_length`).
        attn_implementation: The attention the model was loaded with (its config's
            ``_attn_implementation``; None: transformers' default). Packing stays on with a
            flash kernel only; with ``attn_implementation: auto`` it is turned off, saying so.

    Raises:
        CharlieError: A key that is not SFTConfig's or that Charlie sets, or packing on an
            attention the config named that cannot pack (:func:`packing_problem`).
    """
    from trl import SFTConfig

    check_sft_keys(cfg)
    args = {k: v for k, v in cfg.sft_args.items() if k != "report_to"}
    length = max_length or tokenized_max_length(cfg)
    if problem := packing_problem(cfg, attn_implementation):
        if cfg.attn_implementation != "auto" or not packs(cfg):
            raise CharlieError(problem)
        batch = args.get("per_device_train_batch_size", 8)
        log.warning("packing is off: padding-free rows need a flash-attention kernel and the "
                    "model attends with %s, so each micro-batch is %s example(s) padded to the "
                    "longest, not packed rows of %d tokens (install flash-attn where it trains "
                    "to pack)", attn_implementation or "transformers' default", batch, length)  # fmt: skip
        args.update(packing=False, padding_free=False, eval_packing=False)
    if not cuda:
        if args.get("bf16") or args.get("fp16"):
            log.warning("no CUDA device: training in fp32 on the CPU instead of bf16/fp16")
        args.update(use_cpu=True, bf16=False, fp16=False)
        if "LOCAL_RANK" not in os.environ:  # DeepSpeed only under a launcher
            args.pop("deepspeed", None)
    if smoke_test:
        args.update(max_steps=cfg.smoke_test_steps, save_steps=cfg.smoke_test_steps,
                    eval_steps=cfg.smoke_test_steps, logging_steps=1)  # fmt: skip
    # transformers' new names, always set: TRL's default (gradient_checkpointing: true) under
    # the old name made every run warn that the old name is deprecated.
    args["activation_checkpointing"] = activation_checkpointing(cfg)
    args.pop("gradient_checkpointing", None)
    if "gradient_checkpointing_kwargs" in args:
        args.setdefault(
            "activation_checkpointing_kwargs", args.pop("gradient_checkpointing_kwargs")
        )
    if args["activation_checkpointing"]:
        args.setdefault("activation_checkpointing_kwargs", {"use_reentrant": False})
    # Progress bars for people at a terminal; logs (DVC, KFP, CI) get the metrics lines only.
    args.setdefault("disable_tqdm", not sys.stderr.isatty())
    # Padding-free without packing: TRL cannot truncate flattened rows and refuses a max_length;
    # none is needed, since `charlie train` refuses any example longer than max_length.
    unpacked_rows = args.get("padding_free") and not args.get("packing")
    return SFTConfig(
        output_dir=str(cfg.checkpoint_dir or cfg.output_dir),
        max_length=None if unpacked_rows else length,
        completion_only_loss=True,
        report_to=report_to,
        **args,
    )


CHARLIE_SETS = {
    "completion_only_loss": "the loss covers the completion only (the thesis, never the prompt)",
    "output_dir": "it is Charlie's output_dir (or checkpoint_dir) key",
    "max_length": "it is Charlie's max_length key",
}
"""SFTConfig keys Charlie sets itself, and why a config may not set them."""


def check_sft_keys(cfg: TrainConfig) -> None:
    """Refuse, in one sentence and before any weights load, a pass-through key that is not
    ``trl.SFTConfig``'s (with the closest one named) or that Charlie sets itself."""
    from trl import SFTConfig

    refuse_passthrough_keys(cfg.sft_args, (f.name for f in dataclasses.fields(SFTConfig)),
                            TrainConfig.model_fields, CHARLIE_SETS, config="training config",
                            target="trl.SFTConfig", see="configs/sft_config.yaml")  # fmt: skip


def activation_checkpointing(cfg: TrainConfig) -> bool:
    """The config's ``activation_checkpointing`` (or the deprecated ``gradient_checkpointing``);
    TRL's default, on, when it sets neither."""
    sft = cfg.sft_args
    value = sft.get("activation_checkpointing", sft.get("gradient_checkpointing"))
    return True if value is None else bool(value)


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


def installed_attention() -> set[str]:
    """The flash-attention implementations this machine can run, as transformers checks them
    (the package and a CUDA device; never a hub download), and ``kernels`` when the hub
    kernels package is installed (for a kernel id in ``attn_implementation``)."""
    from transformers.utils import (
        is_flash_attn_2_available,
        is_flash_attn_3_available,
        is_kernels_available,
    )

    found = {"flash_attention_2": is_flash_attn_2_available(),
             "flash_attention_3": is_flash_attn_3_available(), "kernels": is_kernels_available()}  # fmt: skip
    return {name for name, ok in found.items() if ok}


def load_training_model(cfg: TrainConfig, attention: Attention, *, dtype: Any,
                        quantization: Any) -> Any:  # fmt: skip
    """The base model, attending with ``attention.implementation``.

    transformers refuses a flash kernel for an architecture without a flash path (DeepSeek-V3.2
    in transformers 5.24) when it builds the model, before any weights load: ``auto`` then
    loads with transformers' default instead, saying so; a kernel the config named is one
    sentence.

    Raises:
        CharlieError: The base cannot be loaded, or refuses the attention the config named.
    """
    from transformers import AutoModelForCausalLM

    def load(implementation: str | None) -> Any:
        return AutoModelForCausalLM.from_pretrained(
            cfg.base_model,
            dtype=dtype,
            quantization_config=quantization,
            trust_remote_code=cfg.trust_remote_code,
            attn_implementation=implementation,
        )

    try:
        try:
            return load(attention.implementation)
        except ValueError as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0]
            if attention.implementation is None or "flash" not in first.lower():
                raise
            if cfg.attn_implementation != "auto":
                raise CharlieError(
                    f"{cfg.base_model} cannot attend with attn_implementation "
                    f"{attention.implementation}: {first.rstrip('.')}; set attn_implementation: "
                    "auto or sdpa."
                ) from None
            log.warning("attention: %s refuses %s (%s); loading it with transformers' default",
                        cfg.base_model, attention.implementation, first)  # fmt: skip
            return load(None)
    except OSError as exc:
        raise CharlieError(
            f"cannot load the base model {cfg.base_model!r}: {str(exc).splitlines()[0]}"
        ) from None


# --------------------------------------------------------------------------- cost


def optimizer_steps(
    examples: int,
    *,
    batch_size: int,
    accumulation: int,
    world_size: int,
    epochs: float,
    max_steps: int = -1,
) -> tuple[int, int]:
    """``(steps of the run, steps per epoch)``, counted as transformers' Trainer does."""
    batches = math.ceil(examples / max(1, batch_size * world_size))  # per process
    per_epoch = max(1, math.ceil(batches / max(1, accumulation)))
    total = max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)
    return total, per_epoch


def seed_everything(cfg: TrainConfig) -> dict[str, Any]:
    """Seed Python, NumPy and torch with the config's ``seed`` and fix torch's CPU threads.

    With ``full_determinism`` (a TrainingArguments key) torch's deterministic algorithms are
    on as well. Returns :func:`determinism`.
    """
    import torch
    from transformers import set_seed

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    set_seed(
        int(cfg.sft_args.get("seed", 42)), deterministic=bool(cfg.sft_args.get("full_determinism"))
    )
    # Deterministic mode also fills every new tensor with NaN so that reads of uninitialised
    # memory show; the numbers do not depend on it, and it doubled the demo's training time.
    torch.utils.deterministic.fill_uninitialized_memory = False
    return determinism(cfg)


@contextlib.contextmanager
def process_settings_restored() -> Iterator[None]:
    """Put back what training sets process-wide (threads, deterministic algorithms, the
    TensorBoard run directory) afterwards.

    A caller that trains in-process (a notebook, the test suite) keeps its own settings.
    """
    import torch

    tensorboard = os.environ.get("TENSORBOARD_LOGGING_DIR")
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(strict, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        if tensorboard is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)


def determinism(cfg: TrainConfig) -> dict[str, Any]:
    """What decides whether two runs give the same numbers (for the manifest)."""
    import torch

    return {
        "seed": int(cfg.sft_args.get("seed", 42)),
        "data_seed": cfg.sft_args.get("data_seed"),  # None: the seed orders the data too
        "full_determinism": bool(cfg.sft_args.get("full_determinism", False)),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "fill_uninitialized_memory": bool(torch.utils.deterministic.fill_uninitialized_memory),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "num_threads": torch.get_num_threads(),
        "num_threads_setting": cfg.num_threads,
    }


def padded_tokens(lengths: Sequence[int], batch_size: int, seed: int = 0) -> int:
    """Tokens an epoch computes on: each shuffled batch padded to its longest example."""
    order = list(lengths)
    random.Random(seed).shuffle(order)
    return sum(
        max(order[i : i + batch_size]) * len(order[i : i + batch_size])
        for i in range(0, len(order), max(1, batch_size))
    )


def packed_rows(lengths: Sequence[int], max_length: int) -> int:
    """Rows TRL's best-fit-decreasing packing (``packing_strategy: bfd``) fills with these
    examples: longest first, each into the open row it leaves least room in, else a new row."""
    rooms: list[int] = []  # the room left in each open row, ascending
    rows = 0
    for length in sorted(lengths, reverse=True):
        length = min(length, max_length)
        at = bisect.bisect_left(rooms, length)
        if at < len(rooms):
            room = rooms.pop(at) - length
        else:
            rows, room = rows + 1, max_length - length
        if room:
            bisect.insort(rooms, room)
    return rows


@dataclasses.dataclass(frozen=True)
class Probe:
    """The shape of the timed probe: one decoder-like block and the output layer."""

    hidden: int
    heads: int
    inner: int  # the MLP's width
    vocab: int
    seq: int  # tokens per sequence (max_length, or fewer to keep the probe short)
    batch: int

    @property
    def weights_per_token(self) -> int:
        """Multiply-adds per token of the probe's linears: q, k, v, o, the SwiGLU, the head."""
        return 4 * self.hidden**2 + 3 * self.hidden * self.inner + self.hidden * self.vocab


def probe_shape(shape: Any, config: dict[str, Any], *, batch: int, max_length: int,
                cuda: bool) -> Probe:  # fmt: skip
    """A probe of the model's widths, sized to take well under a second per repeat."""
    hidden = shape.hidden_size
    heads = int(config.get("num_attention_heads") or 1)
    heads = heads if heads and hidden % heads == 0 else 1
    inner = int(config.get("intermediate_size") or config.get("moe_intermediate_size") or
                4 * hidden)  # fmt: skip
    per_token = Probe(hidden, heads, inner, shape.vocab_size, 1, 1).weights_per_token
    budget = 2e12 if cuda else 2e10  # FLOPs of one repeat
    rows = max(64, min(batch * max_length, int(budget / (6 * per_token))))
    seq = max(1, min(max_length, rows))
    return Probe(hidden, heads, inner, shape.vocab_size, seq, max(1, rows // seq))


def measure_flops(probe: Probe, *, cuda: bool, seconds: float = 0.5) -> float:
    """This machine's achieved FLOP/s on a training step's kind of work, at the model's widths.

    Times forward + backward of one pre-norm decoder block (causal attention, SwiGLU MLP) and
    the output layer with cross-entropy, on random matrices: no weights are needed. The rate
    counts ``6 x weights_per_token x tokens`` (2 FLOPs per multiply-add, x3 for backward), so
    attention, norms and the other small operations lower it as they lower a real step's.
    """
    import torch
    import torch.nn.functional as F

    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)
    b, t, d, n = probe.batch, probe.seq, probe.hidden, probe.heads

    def rand(*size: int, grad: bool = True) -> Any:
        value = (torch.randn(*size, generator=gen) * 0.02).to(device, dtype)
        return value.requires_grad_() if grad else value

    x = rand(b, t, d, grad=False)
    wqkv, wo = rand(d, 3 * d), rand(d, d)
    wg, wu, wd, head = (
        rand(d, probe.inner),
        rand(d, probe.inner),
        rand(probe.inner, d),
        rand(d, probe.vocab),
    )
    targets = torch.randint(0, probe.vocab, (b * t,), generator=gen).to(device)

    def norm(h: Any) -> Any:
        return h * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(h.dtype)

    def step() -> None:
        q, k, v = (norm(x) @ wqkv).view(b, t, 3, n, d // n).permute(2, 0, 3, 1, 4).unbind(0)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = x + attended.transpose(1, 2).reshape(b, t, d) @ wo
        g = norm(h)
        h = h + (F.silu(g @ wg) * (g @ wu)) @ wd
        logits = (norm(h) @ head).view(b * t, probe.vocab).float()
        F.cross_entropy(logits, targets).backward()
        if cuda:
            torch.cuda.synchronize()

    step()  # warm up
    repeats, start = 0, time.perf_counter()
    while repeats < 3 or time.perf_counter() - start < seconds:
        step()
        repeats += 1
    elapsed = time.perf_counter() - start
    return repeats * 6 * probe.weights_per_token * b * t / elapsed


def compute_params(shape: Any) -> int:
    """Parameters a token's forward pass multiplies by: the input embeddings (a lookup) and
    routed experts a token is not sent to are left out."""
    total = shape.lm_head_params + shape.final_norm_params
    for kind in shape.kinds:
        linears = sum(lin.in_features * lin.out_features * min(lin.active, lin.copies)
                      + (lin.biases // lin.copies) * min(lin.active, lin.copies)
                      for lin in kind.linears)  # fmt: skip
        total += kind.count * (kind.other_params + linears)
    if not shape.lm_head_params:  # tied: the embeddings are the output layer too
        total += shape.embed_params
    return total


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"~{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"~{hours} h {minutes:02d}"


def _si(value: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def estimate_cost(
    cfg: TrainConfig,
    lengths: Sequence[int],
    *,
    max_length: int,
    vocab_size: int,
    smoke_test: bool,
    done_steps: int = 0,
    cuda: bool = False,
    packed: bool = False,
) -> dict[str, Any]:
    """Steps, tokens and an estimated wall time of the run, before anything heavy loads.

    Args:
        cfg: The training config (batch size, accumulation, epochs or max_steps).
        lengths: Tokens of each train example.
        max_length: The length trained with (the probe's batch of tokens).
        vocab_size: The tokenizer's length (the resized embeddings).
        smoke_test: Count ``cfg.smoke_test_steps`` steps.
        done_steps: Steps a resumed run has already taken.
        cuda: Probe the GPU instead of the CPU.
        packed: The config's padding-free batches stay on (:class:`Attention`): with
            ``packing`` a batch holds packed rows (:func:`packed_rows`), and no batch is padded.

    Returns:
        ``steps``, ``steps_per_epoch``, ``tokens_per_epoch``, ``padded_tokens_per_epoch``,
        ``parameters``, ``flops``, ``flops_per_second``, ``seconds`` (the last four None when
        the model's config.json cannot be read), and ``line``: the sentence to log.
    """
    sft = cfg.sft_args
    batch = int(sft.get("per_device_train_batch_size", 8))
    accumulation = int(sft.get("gradient_accumulation_steps", 1))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    epochs = float(sft.get("num_train_epochs", 3.0))
    max_steps = cfg.smoke_test_steps if smoke_test else int(sft.get("max_steps", -1))
    packing = packed and bool(sft.get("packing"))
    rows = packed_rows(lengths, max_length) if packing else len(lengths)
    steps, per_epoch = optimizer_steps(
        rows,
        batch_size=batch,
        accumulation=accumulation,
        world_size=world,
        epochs=epochs,
        max_steps=max_steps,
    )
    real = sum(lengths)
    padded = real if packed else padded_tokens(lengths, batch)
    left = max(steps - done_steps, 0)
    tokens = padded * left / per_epoch
    checkpointing = activation_checkpointing(cfg)
    how = (
        "--smoke-test"
        if smoke_test
        else "max_steps"
        if max_steps > 0
        else f"{epochs:g} epoch{'' if epochs == 1 else 's'} of {per_epoch:,}"
    )
    resumed = f", {done_steps:,} done" if done_steps else ""
    of = (
        f" packed rows: {len(lengths):,} examples in {rows:,} rows of up to {max_length:,} tokens"
        if packing
        else ""
    )
    padding = "padding-free" if packed else f"~{_si(padded)} with padding"
    line = (
        f"~{steps:,} optimizer steps ({how}; batch {batch} x accumulation {accumulation} x "
        f"{world} process{'es' if world > 1 else ''}{of}{resumed}), ~{_si(real)} tokens/epoch "
        f"({padding})"
    )
    out: dict[str, Any] = {"steps": steps, "steps_per_epoch": per_epoch,
                           "tokens_per_epoch": real, "padded_tokens_per_epoch": padded,
                           "parameters": None, "flops": None, "flops_per_second": None,
                           "seconds": None}  # fmt: skip
    try:
        config = load_model_config(cfg.base_model)
        shape = model_shape({**config, "vocab_size": vocab_size}, cfg.base_model)
    except CharlieError as exc:
        out["line"] = f"{line}; no time estimate ({exc})"
        return out
    params = compute_params(shape)
    probe = probe_shape(shape, config, batch=batch, max_length=max_length, cuda=cuda)
    if not cuda and probe.weights_per_token > CPU_PROBE_LIMIT:
        out["line"] = f"{line}; no time estimate (the model is too large to probe on a CPU)"
        return out
    try:
        rate = measure_flops(probe, cuda=cuda)
    except RuntimeError as exc:  # e.g. out of memory on a busy GPU
        out["line"] = f"{line}; no time estimate (the probe failed: {str(exc).splitlines()[0]})"
        return out
    flops = 6 * params * tokens * (4 / 3 if checkpointing else 1)
    seconds = flops / (rate * world)
    formula = "6·N·tokens" + (" x 4/3 for activation checkpointing" if checkpointing else "")
    out.update(parameters=params, flops=flops, flops_per_second=rate, seconds=seconds)
    out["line"] = (
        f"{line}; estimated {_duration(seconds)} of training compute at "
        f"~{rate / 1e9:.1f} GFLOP/s measured{' per process' if world > 1 else ''} by a probe of "
        f"the model's widths ({formula}, N = {_si(params)} parameters a token passes through, "
        f"{_si(tokens)} tokens; an estimate and a lower bound: the trainer's own work, "
        "evaluation and checkpoints come on top)"
    )
    return out


def _train_lengths(dataset: Any) -> list[int]:
    """Tokens of each example of a tokenized split, read from the arrow column."""
    if not len(dataset):
        return []
    column = dataset.with_format("arrow")[:]["input_ids"]
    return [n for chunk in column.chunks for n in chunk.value_lengths().to_pylist()]


def _done_steps(checkpoint: str | None) -> int:
    if not checkpoint:
        return 0
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
        return int(state.get("global_step", 0))
    except (OSError, ValueError, TypeError):
        return 0


def _rank() -> int:
    """This process's global rank, as the launcher set it (0 without one)."""
    return int(os.environ.get("RANK", "0"))


def checkpoint_problem(folder: Path, step: int) -> str | None:
    """Why ``checkpoint-<step>`` cannot be resumed from (None: it can), in a few words.

    Trainer writes a checkpoint file by file: rank 0's weights, optimizer and scheduler, then
    its ``trainer_state.json``; every rank writes its own ``rng_state_<rank>.pth``. A process
    killed while saving leaves the folder without a readable state of that step, or with a
    file cut short. Checked: the state parses and names the step; every torch file is a whole
    zip (torch's format); every safetensors file is as long as its header says.
    """
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        if int(state["global_step"]) != step:
            return f"its trainer_state.json is of step {state['global_step']}"
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError, TypeError, KeyError):
        return "trainer_state.json does not parse"
    for torch_file in sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")):
        if not zipfile.is_zipfile(torch_file):
            return f"{torch_file.name} is cut short"
    for weights in sorted(folder.rglob("*.safetensors")):
        if not _safetensors_whole(weights):
            return f"{weights.relative_to(folder)} is cut short"
    return None


def _safetensors_whole(path: Path) -> bool:
    """Whether a safetensors file holds its header and every tensor's bytes the header names."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        return False
    return path.stat().st_size >= 8 + size + max(ends, default=0)


def latest_checkpoint(folder: Path, *, remove_incomplete: bool = False) -> str | None:
    """The newest complete ``checkpoint-<step>`` in ``folder`` (None if there is none).

    Newer, half-written ones (a node killed while saving) are skipped with a warning, and
    removed with ``remove_incomplete`` (rank 0 only: Trainer would count them against
    ``save_total_limit`` and overwrite them in place). Every rank decides from the same shared
    folder, so all of them resume from the same step.
    """
    if not folder.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), path) for path in folder.iterdir()
         if (m := re.fullmatch(r"checkpoint-(\d+)", path.name)) and path.is_dir()),
        reverse=True,
    )  # fmt: skip
    for step, path in found:
        problem = checkpoint_problem(path, step)
        if problem is None:
            return str(path)
        if remove_incomplete:
            log.warning("removing %s: a half-written checkpoint (%s; a process was stopped "
                        "while saving it)", path, problem)  # fmt: skip
            # Renamed first, at once: another rank never sees it half-deleted (and complete).
            doomed = path.with_name(f".removing-{path.name}")
            try:
                path.rename(doomed)
            except OSError:
                doomed = path
            shutil.rmtree(doomed, ignore_errors=True)
        else:
            log.warning("skipping %s: a half-written checkpoint (%s)", path, problem)
    return None


def copy_tokenize_report(dataset_dir: Path, *targets: Path) -> None:
    """Put ``charlie tokenize``'s report beside the model: evaluation sizes generation by it."""
    report = Path(dataset_dir) / REPORT
    if not report.is_file():
        log.debug("no %s to copy", report)
        return
    for target in targets:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report, target / REPORT)


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
    with process_settings_restored():
        return _train(cfg, smoke_test=smoke_test, resume=resume, merge=merge,
                      config_path=config_path)  # fmt: skip


def _train(
    cfg: TrainConfig,
    *,
    smoke_test: bool,
    resume: bool | None,
    merge: bool | None,
    config_path: Path | None,
) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, TrainerState

    from charlie.training.trainer import SFTTrainer, use_fused_lm_head

    check_sft_keys(cfg)  # a typo in a TRL key: before minutes of loading a large model
    started = dt.datetime.now(dt.UTC)
    cuda = torch.cuda.is_available()
    compute_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    # A flash kernel the config names but this machine lacks: before the data and the weights.
    attention = choose_attention(cfg, cuda=cuda, half=compute_dtype != torch.float32,
                                 installed=installed_attention())  # fmt: skip
    do_merge = merge if merge is not None else cfg.merge
    if do_merge and cfg.method == "full":  # before training, and on every rank alike
        raise CharlieError(FULL_MERGE)
    _log_role(cfg, do_merge)
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
    max_length = tokenized_max_length(cfg)  # auto: the length `charlie tokenize` chose
    lengths = {split: _train_lengths(dataset[split]) for split in ("train", "validation")}
    longest = max((max(v) for v in lengths.values() if v), default=0)
    if longest > max_length:  # TRL would cut the end off, where the action is
        raise CharlieError(
            f"max_length {max_length} is shorter than the longest tokenized example ({longest} "
            f"tokens, in {cfg.dataset_dir}): training would cut its completion; tokenize with "
            "the same max_length or set max_length: auto."
        )

    # ------------------------------------------------------------------ resume?
    checkpoints = cfg.checkpoint_dir or cfg.output_dir
    resume_from = (
        None if resume is False else latest_checkpoint(checkpoints, remove_incomplete=_rank() == 0)
    )
    if resume and resume_from is None:
        raise CharlieError(
            f"--resume: no checkpoint-* directory in {checkpoints} (or none written to the end)."
        )
    if resume_from:
        log.info("resuming from %s", resume_from)

    # ------------------------------------------------------------------ cost, before the weights
    if _rank() == 0:
        cost = estimate_cost(cfg, lengths["train"], max_length=max_length,
                             vocab_size=len(tokenizer), smoke_test=smoke_test,
                             done_steps=_done_steps(resume_from), cuda=cuda,
                             packed=attention.packing)  # fmt: skip
        log.info("cost: %s", cost["line"])

    # ------------------------------------------------------------------ load model
    # Seeded before anything is drawn: the resized embedding rows of the new special tokens
    # (the action tokens among them) are random, and TRL would seed only later, in
    # SFTTrainer.__init__, so every process got other rows (and another run).
    seed_everything(cfg)
    # Before SFTConfig: with a ZeRO-3 config, building TrainingArguments turns zero.Init on
    # process-wide, and the model must not be loaded through it here.
    quantization = get_quantization_config(cfg, compute_dtype)
    model = load_training_model(cfg, attention, dtype=compute_dtype, quantization=quantization)
    attends = model.config._attn_implementation
    log.info("attention: %s (%s)", attends, attention.reason)
    base_rows = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    # The rows `charlie tokenize` added, and the thesis tokens wherever the base vocab has them.
    new_token_ids = sorted(
        set(range(base_rows, len(tokenizer))) | set(tokenizer.convert_tokens_to_ids(THESIS_TOKENS))
    )
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=activation_checkpointing(cfg)
        )
        if not cuda:
            _cpu_4bit_gradient_fix(model)

    # ------------------------------------------------------------------ train
    if not cuda:
        _cpu_process_group(cfg)
    # TensorBoard's run named after the config and the start, not transformers' host and time
    os.environ.setdefault(
        "TENSORBOARD_LOGGING_DIR", str(tensorboard_dir(cfg, config_path, started))
    )
    args = sft_arguments(cfg, cuda=cuda, smoke_test=smoke_test, report_to=_report_to(cfg),
                         max_length=max_length, attn_implementation=attends)  # fmt: skip
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset["train"].remove_columns(columns),
        eval_dataset=dataset["validation"].remove_columns(columns),
        processing_class=tokenizer,
        peft_config=get_peft_config(cfg, model.config.to_dict(), new_token_ids),
        fused_lm_head=use_fused_lm_head(
            cfg.fused_lm_head, cuda=cuda, quantized=quantization is not None
        ),
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
        if resume_from and "train_loss" in train_metrics:  # Trainer's covers this part only
            train_metrics["train_loss"] = whole_run_loss(
                trainer.state.log_history, _done_steps(resume_from),
                train_metrics["train_loss"], trainer.state.global_step,
            )  # fmt: skip

    # ------------------------------------------------------------------ save
    # Every rank calls save_model (ZeRO-3 gathers the shards in it); rank 0 alone writes.
    trainer.save_model(str(cfg.output_dir))  # the adapter (or full model) and the tokenizer
    writer = trainer.is_world_process_zero()
    if writer:
        copy_tokenize_report(cfg.dataset_dir, cfg.output_dir)
    metrics = {**train_metrics, "global_step": trainer.state.global_step}

    # ------------------------------------------------------------------ evaluate
    metrics.update(final_eval_metrics(trainer))  # every rank alike: a collective
    if not writer:  # the merge and the manifest need no other rank: nothing left to wait for
        return metrics
    if do_merge:  # from the adapter rank 0 itself wrote above
        merged = merge_adapter(cfg, tokenizer)
        metrics["merged_model"] = str(merged)
    write_manifest(cfg, config_path, started, metrics, trainer.state.log_history,
                   determinism(cfg))  # fmt: skip
    write_loss_curve(cfg.output_dir, trainer.state.log_history)
    write_headline(Path(cfg.output_dir) / f"train{SUFFIX}", headlines.train(metrics))
    return metrics


def tensorboard_dir(cfg: TrainConfig, config_path: Path | None, started: dt.datetime) -> Path:
    """``<checkpoints>/runs/<config name>-<UTC start>``: one TensorBoard run per training run."""
    name = config_path.stem if config_path else Path(cfg.output_dir).name
    return Path(cfg.checkpoint_dir or cfg.output_dir) / "runs" / f"{name}-{started:%Y%m%d-%H%M%S}"


def whole_run_loss(history: list[dict[str, Any]], resumed_at: int, resumed_loss: float,
                   final_step: int) -> float:  # fmt: skip
    """The mean training loss over every step of a resumed run.

    The steps before ``resumed_at`` from the logged losses (each entry the mean over the steps
    since the previous one), the rest from Trainer's ``train_loss`` of the resumed part.
    """
    total, last = 0.0, 0
    for entry in history:
        if "loss" in entry and entry.get("step", 0) <= resumed_at:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    done = final_step - resumed_at
    return (total + resumed_loss * done) / max(1, last + done)


def final_eval_metrics(trainer: Any) -> dict[str, Any]:
    """The validation metrics of the trained model: the last logged evaluation when it ran at
    the final step (eval_strategy epoch or steps that land there), else a fresh ``evaluate()``.
    """
    if trainer.args.load_best_model_at_end:  # the saved model is the best, not the last
        return trainer.evaluate()
    history = trainer.state.log_history
    last = next((h for h in reversed(history) if "eval_loss" in h), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return {k: v for k, v in last.items() if k != "step"}
    return trainer.evaluate()


def _cpu_process_group(cfg: TrainConfig) -> None:
    """Under a launcher on CPUs, start the gloo process group with the config's ``ddp_timeout``.

    transformers hands ``ddp_timeout`` to the process group on GPUs only; on CPUs accelerate
    starts gloo with torch's 30-minute default, so a node that hangs (rather than dies: gloo
    sees a killed peer at once) would hold the others that long. Started here, accelerate
    reuses the group. Left to accelerate: DeepSpeed, another ``ddp_backend``, MPI builds.
    """
    import torch.distributed as dist

    args = cfg.sft_args
    if (
        int(os.environ.get("WORLD_SIZE", "1")) <= 1
        or "LOCAL_RANK" not in os.environ
        or args.get("deepspeed")
        or args.get("ddp_backend") not in (None, "gloo")
        or not dist.is_available()
        or dist.is_initialized()
        or dist.is_mpi_available()  # accelerate would pick mpi
    ):
        return
    timeout = dt.timedelta(seconds=float(args.get("ddp_timeout", 1800)))
    dist.init_process_group(backend="gloo", timeout=timeout)
    log.debug("gloo process group started, timeout %s", timeout)


def _log_role(cfg: TrainConfig, merge: bool) -> None:
    """Under a launcher: this process's rank and node, and who writes the outputs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return
    rank, (node, nodes) = _rank(), node_of_world()
    where = f"rank {rank} of {world} (node {node} of {nodes})"
    if rank == 0:
        log.info("%s: writes the model, %smanifest.json into %s", where,
                 "merged/ and " if merge else "", cfg.output_dir)  # fmt: skip
    else:
        log.info("%s: trains and evaluates; not rank 0, so it writes nothing into %s (into "
                 "checkpoints only its own share)", where, cfg.output_dir)  # fmt: skip


def merge_adapter(cfg: TrainConfig, tokenizer: Any) -> Path:
    """Write ``<output_dir>/merged``: the base model with the adapter folded in.

    The base is reloaded unquantised (a 4-bit base cannot absorb the adapter exactly) and
    resized before the adapter loads, so the result opens with plain AutoModelForCausalLM.
    """
    out = cfg.output_dir / models.MERGED
    if cfg.method == "full":
        raise CharlieError(FULL_MERGE)
    merged = models.merge_adapter(
        cfg.output_dir,
        len(tokenizer),
        base_model=cfg.base_model,
        trust_remote_code=cfg.trust_remote_code,
    )
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    models.record_merge(cfg.output_dir, out)  # evaluation loads this copy instead of merging
    copy_tokenize_report(cfg.dataset_dir, out)
    return out
