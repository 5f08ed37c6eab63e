"""The GRPO config file (``configs/grpo_*.yaml``): Charlie's keys plus TRL's GRPOConfig.

As with the SFT config, the file is flat: the keys named here are Charlie's (which SFT model,
which episodes, which rewards, the adapter), and every other key is a field of
``trl.GRPOConfig`` / ``transformers.TrainingArguments`` (group size ``num_generations``,
``temperature``, ``max_completion_length``, the KL coefficient ``beta``, ``loss_type``,
``use_vllm`` ...), passed through as is and checked against GRPOConfig's fields before any
weights load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from charlie.config import Section


class RewardSettings(Section):
    """The reward terms' settings (:class:`charlie.rl.rewards.RewardSpec`)."""

    clip: float = Field(3.0, gt=0, description="The return terms are clipped to +-clip.")
    hold_reward: float = Field(
        0.5, description="HOLD's reward when the move stays inside the cost band."
    )
    hold_band: float | None = Field(
        None,
        ge=0,
        description="|return| at or under which HOLD is right; null: the one-unit round-trip "
        "cost of the backtest config.",
    )
    bullish_penalty: float = Field(
        1.5, ge=0, description="Weight of the extra loss on a bullish call that lost."
    )
    bearish_penalty: float = Field(
        1.0, ge=0, description="Weight of the extra loss on a bearish call that lost."
    )
    format_floor: float = Field(-1.0, description="The format reward of an unparseable answer.")
    weights: tuple[float, float, float] = Field(
        (0.5, 1.0, 1.0),
        description="reward_weights of the format, return and asymmetry terms (TRL sums them).",
    )


class GRPOTrainConfig(Section):
    """What to align with GRPO, against which rewards, on which episodes."""

    model_config = ConfigDict(extra="allow", frozen=True)

    sft_model: Path = Field(
        Path("checkpoints/sft"),
        description="`charlie train`'s output: the SFT adapter (its merged/ copy when current) "
        "or a whole model; GRPO trains a new LoRA adapter on it.",
    )
    dataset_dir: Path = Field(
        Path("data/hf_datasets/sft_dataset"),
        description="`charlie dataset`'s DatasetDict: the prompts of the episodes.",
    )
    output_dir: Path = Field(
        Path("checkpoints/grpo"), description="Checkpoints, adapter, merged/, manifest, runs/."
    )
    checkpoint_dir: Path | None = Field(
        None,
        description="Checkpoints and TensorBoard runs, when they must outlive output_dir (a "
        "PVC on Kubeflow, so a retried step resumes); unset: inside output_dir.",
    )
    backtest_config: Path = Field(
        Path("configs/backtest_config.yaml"),
        description="Costs (commission + slippage, in and out) and the price basis the "
        "rewards use, as the backtest trades.",
    )
    horizon: int = Field(5, ge=1, description="Trading days each action is held for its reward.")
    vol_window: int = Field(
        20, ge=2, description="Daily returns in the trailing volatility (known at t)."
    )
    rewards: RewardSettings = Field(default_factory=RewardSettings)
    curriculum: bool = Field(
        True, description="Episodes easy first (calm markets first, by trailing volatility)."
    )
    curriculum_stages: int = Field(3, ge=1, description="Bands of rising difficulty.")
    eval_rows: int | None = Field(
        32,
        ge=1,
        description="Validation episodes whose mean reward is measured at each evaluation "
        "(null: all of them).",
    )
    lora_r: int = Field(16, ge=1, description="Rank of the GRPO adapter.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: str | list[str] = "all-linear"
    merge: bool = Field(True, description="Also write merged/ (what evaluate loads).")
    num_threads: int | None = Field(
        None, ge=1, description="CPU threads torch computes with (a fixed count repeats exactly)."
    )

    @property
    def grpo_args(self) -> dict[str, Any]:
        """The keys passed through to ``trl.GRPOConfig``."""
        return dict(self.model_extra or {})
