"""Greedy generation of theses and extraction of the action from the generated text.

Generation stops at the end of the thesis: the ``</action>`` special token and the chat
template's end of turn ``<|end|>`` (when the tokenizer has them) are stop tokens beside the
tokenizer's and the model's end-of-sequence ids, so a finished thesis does not spend the rest
of ``max_new_tokens``, each row on its own. A row that reaches ``max_new_tokens`` without
stopping is *unfinished*; if it has no action token either, it is *truncated*
(:func:`extract_prediction`): it ran out of budget before its action.

Rows are batched longest prompt first (and returned in their own order), so a batch's rows
need little left padding: fewer pad positions in every attention step, and the longest batch
runs first, where an out-of-memory error costs least.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from charlie import ACTIONS, UNPARSEABLE

STOP_TOKEN = "</action>"
"""The special token that ends a thesis; generation stops at it."""
END_OF_TURN = "<|end|>"
"""The chat template's end of a turn (:data:`charlie.training.tokens.CHAT_TEMPLATE`); a model
that closes its turn without an action stops there too, not at the budget."""

_TOKEN = re.compile(r"<(STRONG_BUY|BUY|HOLD|SELL|STRONG_SELL)>")
_TEXT = re.compile(r"\b(strong[\s_-]*buy|strong[\s_-]*sell|buy|hold|sell)\b", re.IGNORECASE)


def extract_action(text: str) -> str:
    """The action special token first; else the last action word in the text; else UNPARSEABLE."""
    if match := _TOKEN.search(text):
        return match.group(1)
    words = _TEXT.findall(text)
    if not words:
        return UNPARSEABLE
    action = re.sub(r"[\s_-]+", "_", words[-1].upper())
    return action if action in ACTIONS else UNPARSEABLE


def extract_prediction(text: str, *, finished: bool = True) -> tuple[str, bool]:
    """``(action, truncated)`` for one generation.

    A generation that did not finish (it reached ``max_new_tokens``) and holds no action token
    is truncated: its action is UNPARSEABLE, whatever action words its cut-off reasoning holds
    (the text fallback of :func:`extract_action` would read a half-written thesis). Otherwise
    the action is :func:`extract_action`'s and the row is not truncated.
    """
    if not finished and not _TOKEN.search(text):
        return UNPARSEABLE, True
    return extract_action(text), False


@dataclass(frozen=True)
class Generation:
    """One row's generated text (up to and including its stop token) and how it ended."""

    text: str
    new_tokens: int
    """Tokens generated, the stop token included."""
    finished: bool
    """Whether it ended on a stop token; False: it reached ``max_new_tokens``."""


def chat_prompt(tokenizer: Any, prompt: str) -> str:
    """The prompt as the user turn of the chat template, ready for the assistant's answer."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def prompt_tokens(tokenizer: Any, prompt: str) -> int:
    """How many tokens the chat-templated prompt takes, tokenized as :func:`generate` does."""
    text = chat_prompt(tokenizer, prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def stop_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """The ids generation stops at: the tokenizer's eos, the model's eos ids, ``</action>`` and
    the end of turn ``<|end|>``.

    The last two are included only when the tokenizer has them as one token each; the model's
    ``generation_config.eos_token_id`` (an int or a list, e.g. an end-of-turn token) is kept
    because passing ``eos_token_id`` to ``generate`` replaces it.
    """
    ids: list[int] = []

    def add(value: Any) -> None:
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, int) and item not in ids:
                ids.append(item)

    add(tokenizer.eos_token_id)
    config = getattr(model, "generation_config", None)
    if config is not None:
        add(getattr(config, "eos_token_id", None))
    vocab = tokenizer.get_vocab()
    for token in (STOP_TOKEN, END_OF_TURN):
        if token in vocab:
            add(int(vocab[token]))
    return ids


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    progress: Any = None,
) -> list[Generation]:
    """Greedy completions of chat-templated prompts, batched with left padding, in order.

    Rows are batched longest prompt first (stable, so equal lengths keep their order) and
    returned in the order of ``prompts``. Each row stops at the first of
    :func:`stop_token_ids`; its text is decoded (special tokens kept) up to and including that
    token, so the padding after it is not part of the text.
    """
    import torch

    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    stops = stop_token_ids(tokenizer, model)
    is_stop = set(stops).__contains__
    out: list[Generation | None] = [None] * len(texts)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]},
                                  return_tensors="pt").to(model.device)  # fmt: skip
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stops,
            )
            new = generated[:, batch["input_ids"].shape[1] :].tolist()
            for row, ids in zip(rows, new, strict=True):
                end = next((i + 1 for i, t in enumerate(ids) if is_stop(t)), None)
                kept = ids if end is None else ids[:end]
                out[row] = Generation(tokenizer.decode(kept, skip_special_tokens=False),
                                      len(kept), end is not None)  # fmt: skip
            if progress is not None:
                progress.update(len(new))
    return out  # type: ignore[return-value]  # every row filled


def greedy_complete(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    progress: Any = None,
) -> list[str]:
    """The texts of :func:`generate`: greedy, batched, left padded, stopped at ``</action>``."""
    return [g.text for g in generate(model, tokenizer, prompts, batch_size=batch_size,
                                     max_new_tokens=max_new_tokens, progress=progress)]  # fmt: skip
