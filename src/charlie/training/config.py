"""The training config file (``configs/sft_*.yaml``): Charlie's keys plus TRL's SFTConfig.

The file is flat, as in the seed. Keys named here are Charlie's (what to train, how, on what
hardware); every other key is a field of ``trl.SFTConfig`` / ``transformers.TrainingArguments``
and is passed through as is, so hyperparameters are never re-declared here. Unknown keys fail
with one sentence when the trainer builds its ``SFTConfig`` (see ``sft_arguments``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from charlie.config import Section, load_config
from charlie.errors import ConfigError


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
    max_length: int = Field(2048, ge=16, description="Tokens per example, prompt included.")
    over_length: Literal["trim_prompt", "drop"] = Field(
        "trim_prompt", description="Longer examples lose the prompt's oldest tokens, or go."
    )
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling numerator (alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: str | list[str] = "all-linear"
    merge: bool = Field(False, description="Also write a merged model after training.")
    smoke_test_steps: int = Field(10, ge=1, description="Steps for --smoke-test (the seed: 10).")
    gpu_type: str = Field(
        "H100-80GB", description="GPU type from configs/gpus.yaml (for `charlie plan`)."
    )
    num_gpus: int = Field(1, ge=1, description="GPUs the run uses (for `charlie plan`).")

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


def load_train_config(path: Path | str, overrides: Any = None) -> TrainConfig:
    """Load and validate a training config file (``overrides``: see ``load_config``)."""
    return load_config(path, TrainConfig, overrides=overrides)
