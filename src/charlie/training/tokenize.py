"""Chat-template prompt/completion pairs into token ids with a completion mask.

The prompt becomes the user turn and the completion the assistant turn of the tokenizer's chat
template; ``completion_mask`` marks the assistant tokens, so the loss is taken on the
completion only (TRL builds ``labels`` from it). Over-length policy: the completion (and so the
action and its closing tags) is never cut; either the prompt loses its oldest tokens until the
example fits, or the example is dropped and counted.
"""

from __future__ import annotations

from typing import Any

TRIM_TRIES = 4


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


def fit(
    tokenizer: Any, prompt: str, completion: str, max_length: int, policy: str
) -> tuple[list[int], list[int], str]:
    """Token ids and completion mask within ``max_length``, and what was done to fit.

    Returns:
        ``(input_ids, completion_mask, outcome)`` with outcome ``ok``, ``trimmed`` or
        ``dropped`` (then the lists are empty).
    """
    head, tail = encode(tokenizer, prompt, completion)
    if len(head) + len(tail) <= max_length:
        return head + tail, [0] * len(head) + [1] * len(tail), "ok"
    if policy == "drop":
        return [], [], "dropped"
    content = _ids(tokenizer, prompt)
    for _ in range(TRIM_TRIES):  # token boundaries can shift by one when re-encoding
        excess = len(head) + len(tail) - max_length
        if excess <= 0:
            return head + tail, [0] * len(head) + [1] * len(tail), "trimmed"
        if excess >= len(content):
            break
        content = content[excess:]  # the oldest part of the prompt goes first
        head, tail = encode(tokenizer, tokenizer.decode(content), completion)
    return [], [], "dropped"


def tokenize_batch(
    batch: dict[str, list], tokenizer: Any, max_length: int, policy: str
) -> dict[str, list]:
    """``datasets.map(batched=True)`` function: adds input_ids, completion_mask and stats."""
    out: dict[str, list] = {
        "input_ids": [],
        "completion_mask": [],
        "outcome": [],
        "full_length": [],
    }
    for prompt, completion in zip(batch["prompt"], batch["completion"], strict=True):
        head, tail = encode(tokenizer, prompt, completion)
        ids, mask, outcome = (
            (head + tail, [0] * len(head) + [1] * len(tail), "ok")
            if len(head) + len(tail) <= max_length
            else fit(tokenizer, prompt, completion, max_length, policy)
        )
        out["input_ids"].append(ids)
        out["completion_mask"].append(mask)
        out["outcome"].append(outcome)
        out["full_length"].append(len(head) + len(tail))
    return out
