"""Reward functions in TRL's GRPO signature: ``(prompts, completions, **columns) -> list[float]``.

Each scores one completion against its episode (:mod:`charlie.rl.environment`); TRL passes
the episode's dataset columns as keyword arguments (``forward_return``, ``volatility``) and
combines the functions with ``reward_weights``. The action is read with the evaluation's own
extraction (:func:`charlie.inference.extract_action`: the action token, else the last action
word), so RL optimises what the evaluation scores. TRL decodes ``completions`` without special
tokens, which are the thesis's structure and its action here, so with a tokenizer the functions
decode TRL's ``completion_ids`` themselves, special tokens kept, as the evaluation does.

* ``format``: 1 for a well-formed thesis (``<reasoning>…</reasoning><support>…</support>
  <action><X></action>``, then at most the end of turn); 0 when an action can be read but the
  structure is broken; the floor (``format_floor``) when no action can be read (UNPARSEABLE).
* ``return``: the volatility-aware return of the completion's *own* action: units x r - |units|
  x round-trip cost, divided by the ticker's volatility over the horizon known at t, clipped
  to +-``clip``. HOLD earns ``hold_reward`` only when the move is inside the cost band
  (|r| <= ``hold_band``, default the one-unit round-trip cost), and the clipped excess move
  over the band as a loss otherwise: standing aside is right only when no trade could have
  paid. UNPARSEABLE earns -``clip``, so no answer is never a safe one.
* ``asymmetry``: an extra loss on wrong directional calls, ``bullish_penalty`` x the clipped
  normalised loss for a bullish action that lost and ``bearish_penalty`` x for a bearish one
  (Trading-R1 penalises false bullish calls more: a long-biased book pays for them twice).

Every term varies with the completion within a GRPO group (the same prompt): a term that is
constant across a group has zero advantage and teaches nothing (TRL logs that share as
``frac_reward_zero_std``). An episode without an outcome (NaN return) scores None, which TRL
leaves out of the weighted sum.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from charlie import ACTIONS, UNPARSEABLE
from charlie.inference import END_OF_TURN, extract_action

SIGNED_UNITS: dict[str, float] = {
    "STRONG_BUY": 2.0, "BUY": 1.0, "HOLD": 0.0, "SELL": -1.0, "STRONG_SELL": -2.0,
}  # fmt: skip
"""The direction each action takes, in units (shorts included: the reward scores the call,
whatever a long-only book would do with it)."""

_WELL_FORMED = re.compile(
    r"\s*<reasoning>(?P<reasoning>.*?)</reasoning>\s*<support>(?P<support>.*?)</support>\s*"
    r"<action><(?:" + "|".join(ACTIONS) + r")></action>\s*(?:" + re.escape(END_OF_TURN) + r")?\s*",
    re.DOTALL,
)


@dataclass(frozen=True)
class RewardSpec:
    """The reward's settings (the GRPO config's ``rewards`` section fills it)."""

    cost: float
    """Round-trip cost of one unit, as a fraction (2 x (commission + slippage) bps / 1e4)."""
    clip: float = 3.0
    hold_reward: float = 0.5
    hold_band: float | None = None
    """|r| at or under which HOLD is right; None: ``cost``."""
    bullish_penalty: float = 1.5
    bearish_penalty: float = 1.0
    format_floor: float = -1.0
    units: Mapping[str, float] = field(default_factory=lambda: dict(SIGNED_UNITS))

    @property
    def band(self) -> float:
        return self.cost if self.hold_band is None else self.hold_band


def completion_text(completion: Any) -> str:
    """The text of a completion, plain (a string) or conversational (a list of messages)."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion if isinstance(m, Mapping))


def format_score(text: str, spec: RewardSpec) -> float:
    """The ``format`` term of one completion."""
    if extract_action(text) == UNPARSEABLE:
        return spec.format_floor
    return 1.0 if _WELL_FORMED.fullmatch(text) else 0.0


def _clip(value: float, spec: RewardSpec) -> float:
    return max(-spec.clip, min(spec.clip, value))


def net_return(action: str, ret: float, spec: RewardSpec) -> float:
    """What the action earns over the horizon after the round-trip cost of its units."""
    units = spec.units.get(action, 0.0)
    return units * ret - abs(units) * spec.cost


def return_score(action: str, ret: float, vol: float, spec: RewardSpec) -> float | None:
    """The ``return`` term of one action against its episode's return and volatility."""
    if not (math.isfinite(ret) and math.isfinite(vol) and vol > 0):
        return None
    if action == UNPARSEABLE or action not in spec.units:
        return -spec.clip
    if spec.units[action] == 0:  # HOLD
        excess = abs(ret) - spec.band
        return spec.hold_reward if excess <= 0 else -_clip(excess / vol, spec)
    return _clip(net_return(action, ret, spec) / vol, spec)


def asymmetry_score(action: str, ret: float, vol: float, spec: RewardSpec) -> float | None:
    """The ``asymmetry`` term: a weighted extra loss on a directional call that lost."""
    if not (math.isfinite(ret) and math.isfinite(vol) and vol > 0):
        return None
    units = spec.units.get(action, 0.0)
    net = net_return(action, ret, spec)
    if units == 0 or net >= 0:
        return 0.0
    weight = spec.bullish_penalty if units > 0 else spec.bearish_penalty
    return weight * _clip(net / vol, spec)


RewardFunc = Callable[..., list[float | None]]


def reward_functions(spec: RewardSpec, tokenizer: Any = None) -> list[RewardFunc]:
    """``[format, return, asymmetry]`` as TRL reward functions (named for TRL's logs).

    With ``tokenizer``, each completion's text is ``completion_ids`` decoded with its special
    tokens; without, TRL's ``completions`` (plain strings or chat messages).
    """

    def texts(
        completions: Sequence[Any], completion_ids: Sequence[Sequence[int]] | None
    ) -> list[str]:
        if tokenizer is not None and completion_ids is not None:
            return [tokenizer.decode(ids, skip_special_tokens=False) for ids in completion_ids]
        return [completion_text(c) for c in completions]

    def format_reward(prompts: Sequence[Any], completions: Sequence[Any],
                      completion_ids: Sequence[Sequence[int]] | None = None, **_: Any) -> list[float | None]:  # fmt: skip
        return [format_score(t, spec) for t in texts(completions, completion_ids)]

    def return_reward(
        prompts: Sequence[Any], completions: Sequence[Any], *, forward_return: Sequence[float],
        volatility: Sequence[float], completion_ids: Sequence[Sequence[int]] | None = None, **_: Any,
    ) -> list[float | None]:  # fmt: skip
        return [return_score(extract_action(t), float(r), float(v), spec) for t, r, v
                in zip(texts(completions, completion_ids), forward_return, volatility, strict=True)]  # fmt: skip

    def asymmetry_reward(
        prompts: Sequence[Any], completions: Sequence[Any], *, forward_return: Sequence[float],
        volatility: Sequence[float], completion_ids: Sequence[Sequence[int]] | None = None, **_: Any,
    ) -> list[float | None]:  # fmt: skip
        return [asymmetry_score(extract_action(t), float(r), float(v), spec) for t, r, v
                in zip(texts(completions, completion_ids), forward_return, volatility, strict=True)]  # fmt: skip

    return [format_reward, return_reward, asymmetry_reward]


def spec_from_costs(commission_bps: float, slippage_bps: float, **settings: Any) -> RewardSpec:
    """A :class:`RewardSpec` whose cost is the backtest's: a fill in and a fill out, each paying
    commission and slippage."""
    return RewardSpec(cost=2 * (commission_bps + slippage_bps) / 1e4, **settings)
