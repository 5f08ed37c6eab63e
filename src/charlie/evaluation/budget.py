"""How many tokens evaluation may generate per row, and the prompts that leave room for them.

``max_new_tokens: auto`` reads the completion lengths from ``tokenize_report.json`` (which
``charlie train`` copies next to the model) and asks for

    max(ceil(p99 x (1 + max_new_tokens_margin)), max)

tokens, p99 and max taken over every split of the report: the margin covers a model that writes
a little longer than its teacher, and the floor means no completion seen in training is cut.
With a known context (the report's ``context_length`` or the model config's
``max_position_embeddings``, the smaller when both are known) prompt + generation must fit in
it: the margin then shrinks so that the longest prompt still fits untrimmed, but never below the
longest completion; prompts that do not fit beside the budget lose whole snapshot sections
(:func:`charlie.prompts.trim_prompt`, the way training trims them).

:func:`find_report` reads the report; the rest is pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from charlie.errors import CharlieError
from charlie.io import read_json_object
from charlie.prompts import trim_prompt

REPORT = "tokenize_report.json"
"""The tokenize stage's length report; ``charlie train`` copies it next to the model."""


def report_candidates(model_dir: Path) -> list[Path]:
    """Where the report may be: in ``model_dir``, and in its parent for ``<output_dir>/merged``."""
    paths = [model_dir / REPORT]
    if model_dir.name == "merged":
        paths.append(model_dir.parent / REPORT)
    return paths


def find_report(model_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The first report of :func:`report_candidates` that exists, parsed; None when none does.

    Raises:
        CharlieError: The report is not JSON.
    """
    for path in report_candidates(Path(model_dir)):
        if path.is_file():
            return path, read_json_object(path)
    return None


def missing_report_message(model_dir: Path) -> str:
    """The one sentence for ``max_new_tokens: auto`` without a report."""
    where = " or ".join(str(p.parent) for p in report_candidates(Path(model_dir)))
    return (
        f"max_new_tokens is auto but there is no {REPORT} in {where} (`charlie train` copies "
        "it next to the model from the tokenized dataset); set max_new_tokens in the eval "
        "config to a number of tokens."
    )


def completion_lengths(report: Mapping[str, Any], source: str = REPORT) -> tuple[float, float]:
    """``(p99, max)`` of the completion token counts, each the largest over the report's splits.

    Raises:
        CharlieError: No split has ``completion_tokens`` with ``p99`` and ``max``.
    """
    found = [
        split["completion_tokens"]
        for split in (report.get("splits") or {}).values()
        if isinstance(split, Mapping) and isinstance(split.get("completion_tokens"), Mapping)
        and {"p99", "max"} <= set(split["completion_tokens"])
    ]  # fmt: skip
    if not found:
        raise CharlieError(
            f"{source} has no splits.<split>.completion_tokens with p99 and max; rerun "
            "`charlie tokenize` (and `charlie train`), or set max_new_tokens to a number."
        )
    return max(float(c["p99"]) for c in found), max(float(c["max"]) for c in found)


def context_limit(report_context: Any, model_context: Any) -> int | None:
    """The context prompt + generation must fit in: the smaller known one, or None."""
    known = [int(c) for c in (report_context, model_context) if isinstance(c, int) and c > 0]
    return min(known) if known else None


@dataclass(frozen=True)
class Budget:
    """The generation budget and how it was chosen (``eval_metrics.json``'s ``generation``)."""

    max_new_tokens: int
    source: Literal["auto", "config"]
    context_length: int | None
    """The cap on prompt + generation tokens; None: unknown, prompts are never trimmed."""
    report: str | None = None
    completion_p99: float | None = None
    completion_max: float | None = None
    margin: float | None = None
    wanted: int | None = None
    """auto: max(ceil(p99 x (1 + margin)), max), before the context's cap."""
    longest_prompt: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for the log and the summary."""
        if self.source == "config":
            how = "set in the eval config"
        else:
            how = (
                f"auto: max(ceil(p99 {self.completion_p99:g} x {1 + (self.margin or 0):g}), "
                f"max {self.completion_max:g}) = {self.wanted} from {self.report}"
            )
            if self.wanted != self.max_new_tokens:
                how += f", capped so the longest prompt ({self.longest_prompt} tokens) fits"
        ctx = "unknown" if self.context_length is None else str(self.context_length)
        return f"max_new_tokens {self.max_new_tokens} ({how}; context {ctx} tokens)"


def plan_budget(
    setting: int | str,
    margin: float,
    report: tuple[Path | str, Mapping[str, Any]] | None,
    model_context: int | None,
    longest_prompt: int,
    *,
    model_dir: Path | str = ".",
) -> Budget:
    """The budget for ``max_new_tokens`` = ``setting`` (a number, or ``"auto"``).

    Args:
        setting: The eval config's ``max_new_tokens``.
        margin: ``max_new_tokens_margin``, the share added to the p99 completion length.
        report: ``(path, parsed tokenize_report.json)`` (:func:`find_report`), or None.
        model_context: The model config's ``max_position_embeddings``, when it has one.
        longest_prompt: The token count of the longest chat-templated prompt.
        model_dir: Named in the sentence when ``auto`` has no report.

    Raises:
        CharlieError: ``auto`` without a report, a report without completion lengths, or a
            context too short for any generation.
    """
    report_context = report[1].get("context_length") if report else None
    context = context_limit(report_context, model_context)
    if setting != "auto":
        return Budget(int(setting), "config", context, report=str(report[0]) if report else None,
                      longest_prompt=longest_prompt)  # fmt: skip
    if report is None:
        raise CharlieError(missing_report_message(Path(model_dir)))
    path, data = report
    p99, longest = completion_lengths(data, str(path))
    wanted = max(math.ceil(p99 * (1 + margin)), math.ceil(longest), 1)
    chosen = wanted
    if context is not None:
        room = context - longest_prompt
        chosen = min(wanted, max(room, math.ceil(longest)))
        if chosen >= context:
            raise CharlieError(
                f"the longest completion in {path} ({longest:g} tokens) leaves no room for a "
                f"prompt in the model's context of {context} tokens; set max_new_tokens to a "
                "number below it."
            )
    return Budget(chosen, "auto", context, str(path), p99, longest, margin, wanted, longest_prompt)


def fit_prompts(
    prompts: Sequence[str],
    length: Callable[[str], int],
    budget: Budget,
    uids: Sequence[str] | None = None,
) -> tuple[list[str], list[bool]]:
    """Each prompt, trimmed when prompt + ``max_new_tokens`` exceeds the context.

    Args:
        prompts: The dataset's prompts.
        length: The chat-templated prompt's token count (``inference.prompt_tokens``).
        budget: The generation budget; with no known context nothing is trimmed.
        uids: Row ids, to name a prompt that cannot fit.

    Returns:
        The prompts to generate from, and whether each was trimmed.

    Raises:
        CharlieError: A prompt does not fit even with every snapshot section dropped.
    """
    if budget.context_length is None:
        return list(prompts), [False] * len(prompts)
    limit = budget.context_length - budget.max_new_tokens

    def fits(candidate: str) -> bool:
        return length(candidate) <= limit

    out, trimmed = [], []
    for i, prompt in enumerate(prompts):
        kept = trim_prompt(prompt, fits)
        if kept is None:
            name = uids[i] if uids is not None else f"row {i}"
            raise CharlieError(
                f"the prompt of {name} does not fit in {limit} tokens (a context of "
                f"{budget.context_length} less max_new_tokens {budget.max_new_tokens}) even "
                "without its snapshot sections; set a smaller max_new_tokens."
            )
        out.append(kept)
        trimmed.append(kept != prompt)
    return out, trimmed
