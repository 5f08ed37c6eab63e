"""``configs/eval_config.yaml``: what to evaluate and how (the seed's keys, typed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from charlie.config import Section, auto_or_count

MAX_WINDOW = 260  # trading days: a year; the dataset's purge and history scale with it


class EvalConfig(Section):
    """Evaluation settings; command-line flags override them."""

    model_dir: Path = Field(
        Path("checkpoints/sft"),
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
    forward_windows: list[Annotated[int, Field(ge=1, le=MAX_WINDOW)]] = Field(
        [1, 5, 10, 30],
        min_length=1,
        description="Forward-return horizons in trading days (the dataset audit uses the longest).",
    )
    batch_size: int = Field(16, ge=1, description="Rows generated per batch.")
    max_new_tokens: int | Literal["auto"] = Field(
        "auto",
        description="Most tokens generated per row (generation stops at </action>), or auto: "
        "max(ceil(p99 x (1 + max_new_tokens_margin)), max) of the completion token counts over "
        "the splits of tokenize_report.json (in model_dir, or its parent for <output_dir>/merged), "
        "capped so prompt + generation fits the model's context.",
    )
    max_new_tokens_margin: float = Field(
        1.0,
        ge=0,
        le=10,
        description="auto: the share added to the p99 completion length (never below the "
        "longest completion). A model writes longer than its training theses before it is "
        "good (the demo's: 0.58 of rows reach the action at 0.25, 0.73 at 1.0); generation "
        "stops at </action>, so the room costs only the rows that need it.",
    )
    min_parse_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Exit 1, after writing every output, when fewer rows than this share have "
        "an action (0 turns the gate off).",
    )
    bootstrap_samples: int = Field(
        1000,
        ge=100,
        description="Resamples of the block bootstrap behind every 95% interval (the model's, "
        "the baselines' and the paired differences').",
    )
    block_length: int | Literal["auto"] = Field(
        "auto",
        description="Mean block length, in distinct record dates, of the stationary block "
        "bootstrap over dates (all tickers of a date resampled together), or auto: the longest "
        "forward window. Overlapping forward windows and same-day correlation across tickers "
        "make row-level intervals too narrow; 1 resamples dates independently.",
    )
    permutations: int = Field(
        500,
        ge=20,
        description="Permutations per null (the model's predictions shuffled across dates "
        "within each ticker, and rotated in time within each ticker) behind the p-values.",
    )
    seed: int = Field(0, description="Seed of the bootstrap and the permutations.")
    strategy_config: Path = Field(
        Path("configs/backtest_config.yaml"),
        description="The backtest config whose action_units and allow_shorts define the "
        "traded position per action (HOLD and UNPARSEABLE: 0 units per row), so the trade "
        "metrics score the strategy the backtest simulates.",
    )

    @field_validator("block_length", mode="before")
    @classmethod
    def _auto_or_days(cls, value: object) -> object:
        return auto_or_count(value, "block_length", "dates")

    @field_validator("max_new_tokens", mode="before")
    @classmethod
    def _auto_or_positive(cls, value: object) -> object:
        return auto_or_count(value, "max_new_tokens", "tokens")
