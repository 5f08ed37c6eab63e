"""Chat-template prompt/completion pairs into token ids with a completion mask; length policy.

The prompt becomes the user turn and the completion the assistant turn of the tokenizer's chat
template; ``completion_mask`` marks the assistant tokens, so the loss is taken on the
completion only (TRL builds ``labels`` from it).

Lengths: every example is measured whole first (:func:`tokenize_batch` with no limit), so that
``max_length: auto`` can pick the smallest length that fits every example, capped by the base
model's context (:func:`choose_max_length`). Over-length policy (:func:`fit`): the completion
(and so the action and its closing tags) is never cut; either the prompt loses whole snapshot
sections, least important first, keeping the instruction and the "Market snapshot for TICKER
as of ..." header (:func:`charlie.prompts.trim_prompt`, as evaluation trims), or the example is
dropped and counted. Two gates (:func:`check_gates`) stop the stage rather than train on a
quietly different corpus: too large a share of a split trimmed or dropped, or dropping that
moves an action's share of a split.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from charlie import ACTIONS
from charlie.dataset import percentiles
from charlie.errors import CharlieError
from charlie.prompts import trim_prompt

STATS = ("outcome", "full_length", "prompt_tokens", "completion_tokens")
"""Per-example columns :func:`tokenize_batch` adds besides the ids: for the report, not saved."""


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Prompt ids (template prefix + user turn + assistant header) and completion ids."""
    user = [{"role": "user", "content": prompt}]
    full = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": completion}], tokenize=False
    )
    head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    if not full.startswith(head):  # a template that rewrites earlier turns: split on the text
        head = full[: full.index(completion)]
    return _ids(tokenizer, head), _ids(tokenizer, full[len(head) :])


def _joined(head: list[int], tail: list[int]) -> tuple[list[int], list[int]]:
    return head + tail, [0] * len(head) + [1] * len(tail)


def fit(
    tokenizer: Any, prompt: str, completion: str, max_length: int, policy: str
) -> tuple[list[int], list[int], str]:
    """Token ids and completion mask within ``max_length``, and what was done to fit.

    With ``policy`` ``trim_prompt`` the prompt loses whole snapshot section lines, least
    important first (:func:`charlie.prompts.trim_prompt`); the instruction and the header line
    always stay, so an example whose completion and header alone are too long is dropped.

    Returns:
        ``(input_ids, completion_mask, outcome)`` with outcome ``ok``, ``trimmed`` or
        ``dropped`` (then the lists are empty).
    """
    head, tail = encode(tokenizer, prompt, completion)
    if len(head) + len(tail) <= max_length:
        return *_joined(head, tail), "ok"
    if policy == "drop" or len(tail) >= max_length:
        return [], [], "dropped"
    encoded: dict[str, tuple[list[int], list[int]]] = {prompt: (head, tail)}

    def fits(candidate: str) -> bool:
        if candidate not in encoded:
            encoded[candidate] = encode(tokenizer, candidate, completion)
        h, t = encoded[candidate]
        return len(h) + len(t) <= max_length

    trimmed = trim_prompt(prompt, fits)
    if trimmed is None:
        return [], [], "dropped"
    return *_joined(*encoded[trimmed]), "trimmed"


def tokenize_batch(
    batch: dict[str, list], tokenizer: Any, max_length: int | None, policy: str
) -> dict[str, list]:
    """``datasets.map(batched=True)`` function: input_ids, completion_mask, outcome, lengths.

    ``prompt_tokens`` and ``completion_tokens`` are the whole example's (before any trimming;
    ``full_length`` is their sum). ``max_length`` None measures only: every outcome is ``ok``.
    """
    out: dict[str, list] = {key: [] for key in ("input_ids", "completion_mask", *STATS)}
    for prompt, completion in zip(batch["prompt"], batch["completion"], strict=True):
        head, tail = encode(tokenizer, prompt, completion)
        ids, mask, outcome = (
            (*_joined(head, tail), "ok")
            if max_length is None or len(head) + len(tail) <= max_length
            else fit(tokenizer, prompt, completion, max_length, policy)
        )
        out["input_ids"].append(ids)
        out["completion_mask"].append(mask)
        out["outcome"].append(outcome)
        out["full_length"].append(len(head) + len(tail))
        out["prompt_tokens"].append(len(head))
        out["completion_tokens"].append(len(tail))
    return out


def fit_batch(
    batch: dict[str, list], tokenizer: Any, max_length: int, policy: str
) -> dict[str, list]:
    """``datasets.map(batched=True)`` over measured rows: refit only those over ``max_length``."""
    out: dict[str, list] = {"input_ids": [], "completion_mask": [], "outcome": []}
    rows = zip(batch["input_ids"], batch["completion_mask"], batch["full_length"],
               batch["prompt"], batch["completion"], strict=True)  # fmt: skip
    for ids, mask, length, prompt, completion in rows:
        outcome = "ok"
        if length > max_length:
            ids, mask, outcome = fit(tokenizer, prompt, completion, max_length, policy)
        out["input_ids"].append(ids)
        out["completion_mask"].append(mask)
        out["outcome"].append(outcome)
    return out


# --------------------------------------------------------------------------- lengths and gates


def choose_max_length(setting: int | str, longest: int, context: int | None) -> int:
    """The max_length to tokenize with: an explicit one as is; ``auto``: the longest example,
    capped by the base model's context (when known)."""
    if setting != "auto":
        return int(setting)
    return max(1, longest if context is None else min(longest, context))


def summarize_split(
    outcomes: Sequence[str],
    actions: Sequence[str] | None,
    prompt_tokens: Sequence[int],
    completion_tokens: Sequence[int],
) -> dict[str, Any]:
    """One split's part of the report: lengths, what the policy did, and per action counts.

    Args:
        outcomes: ``ok`` / ``trimmed`` / ``dropped`` per example.
        actions: Each example's action, or None when the split has no ``action`` column.
        prompt_tokens: Each example's whole prompt length in tokens (template included).
        completion_tokens: Each example's completion length in tokens (template included).
    """
    full = [p + c for p, c in zip(prompt_tokens, completion_tokens, strict=True)]
    counts = Counter(outcomes)
    summary: dict[str, Any] = {
        "examples": len(outcomes),
        "kept": len(outcomes) - counts["dropped"],
        "tokens": percentiles(full),
        "prompt_tokens": percentiles(prompt_tokens),
        "completion_tokens": percentiles(completion_tokens),
        "over_max_length": counts["trimmed"] + counts["dropped"],
        "trimmed": counts["trimmed"],
        "dropped": counts["dropped"],
    }
    if actions is not None:
        by: dict[str, Counter[str]] = {}
        for action, outcome in zip(actions, outcomes, strict=True):
            by.setdefault(action, Counter())[outcome] += 1
        order = [*ACTIONS, *sorted(set(by) - set(ACTIONS))]
        summary["by_action"] = {
            a: {"examples": sum(by.get(a, Counter()).values()),
                "trimmed": by.get(a, Counter())["trimmed"],
                "dropped": by.get(a, Counter())["dropped"]}
            for a in order
        }  # fmt: skip
    return summary


def _pct(share: float) -> str:
    return f"{share:.0%}" if share >= 0.1 else f"{share:.1%}".replace(".0%", "%")


def _n(value: int) -> str:
    return f"{value:,}"


def _advice(setting: int | str, longest: int, context: int | None) -> str:
    """What would fit every example, for the gates' sentences."""
    if context is not None and longest > context:
        return (
            f"the longest example needs {_n(longest)} tokens, more than the base model's context "
            f"({_n(context)}): use a base model with a longer context or shorter theses"
        )
    tail = "" if setting == "auto" else " (or set max_length: auto)"
    return f"max_length {longest} fits every example{tail}"


def check_gates(
    splits: Mapping[str, Mapping[str, Any]],
    *,
    setting: int | str,
    max_length: int,
    context: int | None,
    longest: int,
    max_over_length_share: float,
    max_label_shift: float,
) -> None:
    """Refuse, in one sentence, a max_length that cuts too much or skews the labels.

    Args:
        splits: :func:`summarize_split` per split.
        setting: The config's max_length (an int, or ``auto``).
        max_length: The length used.
        context: The base model's context (None: unknown).
        longest: The longest example of every split, in tokens.
        max_over_length_share: Most share of a split that may be trimmed or dropped.
        max_label_shift: Most an action's share of a split may move when examples are dropped.

    Raises:
        CharlieError: The first split over either limit.
    """
    what = (
        f"max_length auto (capped at the base model's context, {_n(max_length)})"
        if setting == "auto"
        else f"max_length {max_length}"
    )
    advice = _advice(setting, longest, context)
    for split, info in splits.items():
        n, trimmed, dropped = info["examples"], info["trimmed"], info["dropped"]
        share = (trimmed + dropped) / n if n else 0.0
        if share > max_over_length_share:
            raise CharlieError(
                f"{what} trims {_n(trimmed)} and drops {_n(dropped)} of {_n(n)} {split} "
                f"examples ({_pct(share)}), over max_over_length_share "
                f"{_pct(max_over_length_share)}; {advice}."
            )
    for split, info in splits.items():
        by_action = info.get("by_action") or {}
        n, kept = info["examples"], info["kept"]
        if not info["dropped"] or not by_action or not n:
            continue
        if not kept:
            raise CharlieError(f"{what} drops all {_n(n)} {split} examples; {advice}.")
        shifts = {
            a: ((c["examples"] - c["dropped"]) / kept, c["examples"] / n)
            for a, c in by_action.items()
        }
        action, (after, before) = max(shifts.items(), key=lambda kv: abs(kv[1][0] - kv[1][1]))
        if abs(after - before) > max_label_shift:
            raise CharlieError(
                f"{what} drops {_n(info['dropped'])} of {_n(n)} {split} examples and moves "
                f"{action} from {before:.1%} of all examples to {after:.1%} of those kept, more "
                f"than max_label_shift {max_label_shift:g}; {advice}."
            )
