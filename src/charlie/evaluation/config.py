"""``configs/eval_config.yaml``: what to evaluate and how (the seed's keys, typed)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from charlie.config import Section


class EvalConfig(Section):
    """Evaluation settings; command-line flags override them."""

    model_dir: Path = Field(
        Path("checkpoints/sft-tiny-lora-cpu"),
        description="The adapter directory or a merged model to evaluate.",
    )
    dataset_dir: Path = Field(
        Path("data/hf_datasets/sft_dataset"),
        description="The SFT DatasetDict (prompt, completion, ...).",
    )
    split: str = Field("test", description="The split to evaluate.")
    out: Path = Field(
        Path("results/eval_results.csv"),
        description="The per-sample CSV; the other outputs go beside it.",
    )
    forward_windows: list[int] = Field(
        [1, 5, 10, 30],
        min_length=1,
        description="Forward-return horizons in trading days (the dataset audit uses the longest).",
    )
    batch_size: int = Field(16, ge=1, description="Rows generated per batch.")
    max_new_tokens: int = Field(
        320, ge=1, description="Tokens generated per row: long enough for a whole thesis."
    )
    bootstrap_samples: int = Field(
        1000, ge=100, description="Resamples behind the baselines' 95% intervals."
    )
    seed: int = Field(0, description="Seed of the bootstrap and the random baseline.")
