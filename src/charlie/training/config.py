"""The training config file (``configs/sft_*.yaml``): Charlie's keys plus TRL's SFTConfig.

The file is flat, as in the seed. Keys named here are Charlie's (what to train, how, on what
hardware); every other key is a field of ``trl.SFTConfig`` / ``transformers.TrainingArguments``
and is passed through as is, so hyperparameters are never re-declared here. Unknown keys fail
with one sentence when the trainer builds its ``SFTConfig`` (see ``sft_arguments``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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
