"""``configs/eval_config.yaml``: what to evaluate and how (the seed's keys, typed)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from charlie.config import Section


class EvalConfig(Section):
    """Evaluation settings; command-line flags override them."""

    model_dir: Path = Field(Path("checkpoints/sft-tiny-lora-cpu"), description="Adapter or model.")
    dataset_dir: Path = Field(Path("data/hf_datasets/sft_dataset"), description="The DatasetDict.")
    split: str = "test"
    out: Path = Field(
        Path("results/eval_results.csv"), description="Per-sample CSV; others beside."
    )
    forward_windows: list[int] = Field([1, 5, 10, 30], min_length=1)
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(320, ge=1, description="Long enough for a whole thesis.")
    bootstrap_samples: int = Field(1000, ge=100)
    seed: int = 0
