"""The training config file (``configs/sft_*.yaml``): Charlie's keys plus TRL's SFTConfig.

The file is flat, as in the seed. Keys named here are Charlie's (what to train, how, on what
hardware); every other key is a field of ``trl.SFTConfig`` / ``transformers.TrainingArguments``
and is passed through as is, so hyperparameters are never re-declared here. Unknown keys fail
with one sentence when the trainer builds its ``SFTConfig`` (see ``sft_arguments``).

The attention implementation and packing are decided together (:func:`choose_attention`):
TRL's padding-free batches (``padding_free``, or ``packing`` with its default ``bfd``
strategy) flatten a micro-batch into one row whose examples are told apart only by their
``position_ids``. A flash-attention kernel reads those boundaries and attends within each
example (varlen); sdpa and eager attention do not: transformers rebuilds a dense
row x row block mask from the position ids where the architecture supports it (the seq²
memory and work packing was meant to save), and a model that does not, attends across
examples. So packing runs only on a flash kernel, is refused with an explicit sdpa or eager,
and with ``auto`` is turned off, saying so, where no flash kernel can be used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from charlie.config import Section, load_config
from charlie.errors import CharlieError, ConfigError
from charlie.io import read_json_object

REPORT = "tokenize_report.json"
"""``charlie tokenize``'s report, in the tokenized dataset dir (and copied beside the model)."""
MIN_LENGTH = 16
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
                "n_ctx")  # fmt: skip
"""Where model configs keep their context length (Llama-style first, then GPT-2 and others)."""
SANE_TOKENIZER_MAX = 10_000_000  # transformers uses 1e30 for "no limit"
FLASH = {"flash_attention_3": "flash-attn-3", "flash_attention_2": "flash-attn"}
"""transformers' flash-attention implementations and the packages they need, the one ``auto``
prefers first (FlashAttention-3 installs on Hopper GPUs only, where it is the faster)."""
ATTENTION = ("auto", "sdpa", "eager", *sorted(FLASH))
HUB_KERNEL = re.compile(r"^[\w.-]+/[\w.-]+(@[\w.-]+)?(:[\w.-]+)?$")  # org/name[@rev][:fn]


class TrainConfig(Section):
    """What to fine-tune, with which method, on which data and hardware."""

    model_config = ConfigDict(extra="allow", frozen=True)

    base_model: str = Field(description="Hub id or local path of the base model.")
    trust_remote_code: bool = Field(
        False, description="Run the model repository's own code (needed by some hub models)."
    )
    tokenizer: str | None = Field(
        None, description="Hub id or local path of the tokenizer, when not the base model's."
    )
    dataset_dir: Path = Field(
        Path("data/hf_datasets/tokenized"),
        description="The tokenized DatasetDict (`charlie tokenize` writes it, train reads it).",
    )
    output_dir: Path = Field(description="Checkpoints, adapter, manifest, TensorBoard runs.")
    checkpoint_dir: Path | None = Field(
        None,
        description="Checkpoints and TensorBoard runs, when they must outlive output_dir (a "
        "PVC on Kubeflow, so a retried step resumes); unset: inside output_dir.",
    )
    method: Literal["full", "lora", "qlora"] = Field(
        "lora", description="Full fine-tune, LoRA, or QLoRA (4-bit NF4 base with LoRA)."
    )
    max_length: int | Literal["auto"] = Field(
        2048,
        description="Tokens per example, prompt included; auto: the smallest length that fits "
        "every example, capped by the base model's context (`charlie tokenize` measures it).",
    )
    over_length: Literal["trim_prompt", "drop"] = Field(
        "trim_prompt",
        description="Longer examples lose whole snapshot sections, least important first (the "
        "instruction and the ticker/date header stay; never the completion), or are dropped.",
    )
    max_over_length_share: float = Field(
        0.01,
        ge=0,
        le=1,
        description="`charlie tokenize` fails when max_length trims or drops more than this "
        "share of any split.",
    )
    max_label_shift: float = Field(
        0.02,
        ge=0,
        le=1,
        description="`charlie tokenize` fails when dropping over-length examples moves an "
        "action's share of a split by more than this (absolute: 0.02 is 2 points).",
    )
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling numerator (alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: str | list[str] = "all-linear"
    trainable_embeddings: Literal["whole", "new_tokens"] = Field(
        "whole",
        description="LoRA/QLoRA: train embed_tokens and lm_head whole (PEFT modules_to_save), or "
        "embed_tokens only in the added thesis tokens' rows (PEFT trainable_token_indices) and "
        "lm_head whole (TRL's fused LM head reads its weight directly): on DeepSeek-V3.2 that "
        "drops 0.93 B trained parameters and ~15 GB of AdamW state.",
    )
    fused_lm_head: bool | Literal["auto"] = Field(
        "auto",
        description="Compute the loss through TRL's fused LM head (tiled, never holds the "
        "full logits: the memory a large vocabulary needs) or through the model's own forward "
        "(at a plain loop's speed where Triton is absent); auto: fused on CUDA only.",
    )
    attn_implementation: str = Field(
        "auto",
        description="Attention kernel: auto (flash_attention_3 or _2 where the package is "
        "installed, on CUDA, in bf16/fp16; else transformers' default, sdpa), sdpa, eager, "
        "flash_attention_2, flash_attention_3, or a hub kernel id (kernels-community/flash-attn2); "
        "packing needs a flash one.",
        json_schema_extra={"metavar": "auto|sdpa|eager|flash_attention_2|flash_attention_3|ID"},
    )
    merge: bool = Field(False, description="Also write a merged model after training.")
    smoke_test_steps: int = Field(10, ge=1, description="Steps for --smoke-test (the seed: 10).")
    num_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads torch computes with (torch.set_num_threads); a fixed count "
        "makes CPU losses repeat exactly, since the count changes the order floats are summed "
        "in (default: torch's, one per core).",
    )
    gpu_type: str = Field(
        "H100-80GB", description="GPU type from configs/gpus.yaml (for `charlie plan`)."
    )
    num_gpus: int = Field(1, ge=1, description="GPUs the run uses, per node (for `charlie plan`).")

    @field_validator("max_length", mode="before")
    @classmethod
    def _length_or_auto(cls, value: Any) -> int | str:
        """A whole number of tokens (also as text, from a flag) or ``auto``."""
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < MIN_LENGTH:
            raise ValueError(f"use a whole number of tokens (at least {MIN_LENGTH}) or auto")
        return value

    @field_validator("attn_implementation")
    @classmethod
    def _known_attention(cls, value: str) -> str:
        """One of transformers' implementations, or a hub kernel's ``org/name``."""
        if value in ATTENTION or HUB_KERNEL.match(value):
            return value
        raise ValueError(f"use {', '.join(ATTENTION)} or a hub kernel id (org/name)")

    @property
    def sft_args(self) -> dict[str, Any]:
        """The keys passed through to ``trl.SFTConfig``."""
        return dict(self.model_extra or {})

    def deepspeed_config(self) -> dict[str, Any] | None:
        """The DeepSpeed JSON named by the ``deepspeed`` key, if any."""
        path = self.sft_args.get("deepspeed")
        if not path:
            return None
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"deepspeed config {path} cannot be read: {exc}.") from None

    def zero_stage(self) -> int:
        """The ZeRO stage of the DeepSpeed config (0 without DeepSpeed)."""
        ds = self.deepspeed_config() or {}
        return int(ds.get("zero_optimization", {}).get("stage", 0))


def packs(cfg: TrainConfig) -> bool:
    """Whether TRL will flatten the config's batches: ``padding_free``, or ``packing`` with the
    bfd strategies (TRL's default; they turn padding-free on whatever padding_free says)."""
    sft = cfg.sft_args
    strategy = sft.get("packing_strategy", "bfd")
    return bool(sft.get("padding_free")) or (bool(sft.get("packing")) and strategy != "wrapped")


def varlen(implementation: str | None) -> bool:
    """Whether an attention implementation attends within each example of a padding-free row.

    transformers routes every implementation named ``*flash*`` (its own and the hub kernels)
    through its varlen path, which takes the boundaries from ``position_ids``; None is
    transformers' default (sdpa, or eager), which does not.
    """
    return implementation is not None and "flash" in implementation


WRAPPED = (
    "packing_strategy wrapped cuts examples at max_length, separating theses from their prompts, "
    "and lets each row's examples attend to one another: use bfd (TRL's default)."
)


def packing_problem(cfg: TrainConfig, implementation: str | None) -> str | None:
    """Why the config's packing cannot train on ``implementation``, as a sentence (None: it can).

    ``packing_strategy: wrapped`` never can (:data:`WRAPPED`); padding-free batches can on a
    flash kernel only (:func:`varlen`).
    """
    sft = cfg.sft_args
    if sft.get("packing") and sft.get("packing_strategy") == "wrapped":
        return WRAPPED
    if not packs(cfg) or varlen(implementation):
        return None
    name = implementation or "transformers' default attention (sdpa)"
    return (
        f"packing (padding-free batches) needs a flash-attention kernel, and {name} is none: it "
        "would build a dense block mask over each packed row or attend across examples; set "
        "attn_implementation to auto or flash_attention_2, or turn packing and padding_free off."
    )


@dataclass(frozen=True)
class Attention:
    """The attention implementation to load the model with, and why it was chosen."""

    implementation: str | None  # for from_pretrained; None: transformers' default (sdpa, or eager)
    reason: str
    packing: bool  # whether the config's padding-free batches stay on with it


def choose_attention(
    cfg: TrainConfig, *, cuda: bool, half: bool, installed: Collection[str]
) -> Attention:
    """Resolve ``attn_implementation`` for this machine, before any weights load.

    Args:
        cfg: The training config.
        cuda: Whether a CUDA device trains.
        half: Whether the model is loaded in bf16/fp16 (flash kernels compute in nothing else).
        installed: The flash implementations this machine can run (:data:`FLASH` keys whose
            package imports, with CUDA), plus ``"kernels"`` when the hub kernels package does.

    Returns:
        ``auto``: the first installed of :data:`FLASH` on CUDA in 16-bit; else transformers'
        default, and the config's packing off. Otherwise the config's implementation.

    Raises:
        CharlieError: A flash kernel named in the config cannot run here (saying so when the
            config packs, which needs it), an explicit sdpa or eager with packing, or wrapped
            packing (:func:`packing_problem`).
    """
    setting = cfg.attn_implementation
    packed = packs(cfg)
    if cfg.sft_args.get("packing") and cfg.sft_args.get("packing_strategy") == "wrapped":
        raise CharlieError(WRAPPED)
    if setting == "auto":
        flash = next((name for name in FLASH if name in installed), None)
        if cuda and half and flash:
            return Attention(
                flash, f"auto: {FLASH[flash]} is installed, on CUDA, in 16-bit", packed
            )
        why = (
            "no CUDA device" if not cuda
            else "the model loads in float32 (no bf16 on this GPU)" if not half
            else "neither flash-attn nor flash-attn-3 is installed"
        )  # fmt: skip
        return Attention(None, f"auto: {why}, so transformers' default", False)
    if varlen(setting):
        if not cuda:
            missing = "a CUDA device, and this machine has none"
        elif not half:
            missing = "bf16 or fp16, and this run loads the model in float32 (no bf16 on this GPU)"
        elif setting in FLASH and setting not in installed:
            missing = f"the {FLASH[setting]} package, which is not installed"
        elif setting not in FLASH and "kernels" not in installed:
            missing = "the kernels package, which is not installed"
        else:
            return Attention(setting, "set in the config", packed)
        needs = ", and packing (padding-free batches) needs a flash kernel" if packed else ""
        raise CharlieError(
            f"attn_implementation {setting} needs {missing}{needs}: install what it needs or set "
            "attn_implementation: auto (transformers' default, sdpa, unpacked, where no flash "
            "kernel runs)."
        )
    if problem := packing_problem(cfg, setting):
        raise CharlieError(problem)
    return Attention(setting, "set in the config", False)


def context_length(model_config: Mapping[str, Any], tokenizer_max: Any = None) -> int | None:
    """The base model's context: its config's position limit, else a sane tokenizer limit.

    Args:
        model_config: The model's config.json (as a dict; multimodal ones keep the language
            model's under ``text_config``), or ``{}`` when it cannot be read.
        tokenizer_max: ``tokenizer.model_max_length`` (huge sentinels mean "unknown").

    Returns:
        Tokens, or None when neither says.
    """
    for config in (model_config, model_config.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    if isinstance(tokenizer_max, int) and 0 < tokenizer_max <= SANE_TOKENIZER_MAX:
        return tokenizer_max
    return None


def read_tokenize_report(dataset_dir: Path | str) -> dict[str, Any] | None:
    """``<dataset_dir>/tokenize_report.json``, or None when there is none."""
    path = Path(dataset_dir) / REPORT
    return read_json_object(path) if path.is_file() else None


def tokenized_max_length(cfg: TrainConfig) -> int:
    """The max_length to train with: the config's, or for ``auto`` the one tokenize chose.

    Raises:
        CharlieError: ``auto`` and no usable tokenize report in ``cfg.dataset_dir``.
    """
    if cfg.max_length != "auto":
        return cfg.max_length
    report = read_tokenize_report(cfg.dataset_dir)
    if report is None:
        raise CharlieError(
            f"max_length: auto uses the length `charlie tokenize` chose, but {cfg.dataset_dir} "
            f"has no {REPORT}: run `charlie tokenize` first."
        )
    chosen = report.get("max_length")
    if isinstance(chosen, bool) or not isinstance(chosen, int) or chosen < 1:
        raise CharlieError(
            f"{Path(cfg.dataset_dir) / REPORT} has no max_length (got {chosen!r}): rerun "
            "`charlie tokenize`."
        )
    return chosen


def load_train_config(path: Path | str, overrides: Any = None, settings: Any = None) -> TrainConfig:
    """Load and validate a training config file (``overrides``, ``settings``: see
    ``load_config``; ``charlie.config.train_settings`` gives params.yaml's)."""
    return load_config(path, TrainConfig, overrides=overrides, settings=settings)
