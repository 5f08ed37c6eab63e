"""Greedy generation of theses and extraction of the action from the generated text."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from charlie import ACTIONS, UNPARSEABLE

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


def greedy_complete(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    progress: Any = None,
) -> list[str]:
    """Greedy completions of chat-templated prompts, batched with left padding."""
    import torch

    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    out: list[str] = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(model.device)
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = generated[:, batch["input_ids"].shape[1] :]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=False))
            if progress is not None:
                progress.update(len(new))
    return out
