"""The prompt: a one-line instruction, then a market snapshot; and how to trim it to a budget.

Training (``charlie tokenize``) and evaluation trim prompts with the same function, so the
model sees one prompt shape at both.
"""

from __future__ import annotations

from collections.abc import Callable

PROMPT_HEADER = (
    "You are an equity analyst. From the market snapshot below, write a trading thesis: "
    "your reasoning, the supporting points, and one action (STRONG_BUY, BUY, HOLD, SELL or "
    "STRONG_SELL)."
)


def prompt_text(snapshot: str) -> str:
    """The prompt: a one-line instruction, then the market snapshot."""
    return f"{PROMPT_HEADER}\n\n{snapshot}"


SECTIONS = ("Bar", "Returns", "Trend", "Momentum", "Volatility", "Volume", "52-week range")
"""The snapshot's section lines, most important first: trimming drops them from the end."""


def trim_prompt(prompt: str, fits: Callable[[str], bool]) -> str | None:
    """The prompt with as few whole snapshot sections dropped as ``fits`` needs, or None.

    The instruction, the header line (ticker and date) and any note about missing bars always
    stay; section lines (:data:`SECTIONS`) go from the least important (the 52-week range)
    up. Training and evaluation trim the same way, so both see one prompt shape.

    Args:
        prompt: A prompt as :func:`prompt_text` writes it.
        fits: Whether a candidate prompt fits the token budget.

    Returns:
        ``prompt`` itself when it fits, a shorter prompt, or None when even the instruction
        and header alone do not fit.
    """
    if fits(prompt):
        return prompt
    lines = prompt.split("\n")
    droppable = [i for i, line in enumerate(lines) if line.startswith(_SECTION_PREFIXES)]
    for n in range(1, len(droppable) + 1):
        gone = set(droppable[-n:])
        candidate = "\n".join(line for i, line in enumerate(lines) if i not in gone)
        if fits(candidate):
            return candidate
    return None


_SECTION_PREFIXES = tuple(f"{name}: " for name in SECTIONS)
