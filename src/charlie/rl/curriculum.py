"""Curriculum: the training episodes ordered easy first, by what was known at the decision.

Difficulty is the episode's trailing volatility over the horizon (:mod:`charlie.rl.environment`,
bars up to t only): in a calm market the reward is less noise and more signal, so the policy
first learns what the snapshot's signals mean where a right call is visibly right. The
episodes are cut into ``stages`` equal bands of rising difficulty; each band is shuffled
(seeded) so one band is not one ticker's calendar, and the bands run in order. GRPOTrainer
is then told not to reshuffle (``shuffle_dataset: false``), so its sampler serves this order.
Off, the episodes keep their order and GRPOTrainer shuffles as usual.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def curriculum_order(difficulty: np.ndarray, stages: int, seed: int) -> np.ndarray:
    """Row indices, band by band from the easiest ``1/stages`` of ``difficulty`` to the hardest,
    shuffled within each band (ties broken by position, so the order is deterministic)."""
    if stages < 1:
        raise ValueError("stages must be >= 1")
    ranked = np.argsort(np.asarray(difficulty, dtype="float64"), kind="stable")
    rng = np.random.default_rng(seed)
    bands = np.array_split(ranked, min(stages, max(len(ranked), 1)))
    return np.concatenate([rng.permutation(band) for band in bands]) if len(ranked) else ranked


def apply_curriculum(episodes: pd.DataFrame, stages: int, seed: int) -> pd.DataFrame:
    """``episodes`` in curriculum order, with its ``stage`` (0 = easiest) as a column."""
    order = curriculum_order(episodes["volatility"].to_numpy(), stages, seed)
    out = episodes.iloc[order].reset_index(drop=True)
    sizes = [len(b) for b in np.array_split(np.arange(len(out)), min(stages, max(len(out), 1)))]
    out["stage"] = np.repeat(np.arange(len(sizes)), sizes) if len(out) else []
    return out
