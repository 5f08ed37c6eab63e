"""The thesis special tokens, and the tiny local tokenizer and model the demo trains.

Real runs name a hub model or a local path; the demo and the tests build a small Llama-family
model and a byte-level BPE tokenizer from the training text, so nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from charlie import ACTIONS

THESIS_TOKENS: tuple[str, ...] = (
    "<reasoning>", "</reasoning>", "<support>", "</support>", "<action>", "</action>",
    *(f"<{a}>" for a in ACTIONS),
)  # fmt: skip
"""The seed's special tokens: the XML structure and one token per action."""

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
# A minimal chat template: each message is "<|role|>\n{content}<|end|>\n"; the assistant turn of
# a generation prompt starts with "<|assistant|>\n". The sequence ends with EOS.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}"
)


def add_thesis_tokens(tokenizer: Any) -> int:
    """Add the thesis tokens as special tokens (idempotent); returns how many were new.

    Special, so the tokenizer never splits them and decoding can find the action exactly.
    """
    missing = [t for t in THESIS_TOKENS if t not in tokenizer.get_vocab()]
    if not missing:
        return 0
    return tokenizer.add_special_tokens(
        {"additional_special_tokens": missing}, replace_extra_special_tokens=False
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on ``texts``, with the chat template above.

    The thesis tokens are not added here: ``charlie tokenize`` adds them to whichever base
    tokenizer it is given, the tiny one or a hub model's, the same way.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS, PAD, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=4096,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer: Any, *, hidden_size: int, num_layers: int, num_heads: int,
                     num_kv_heads: int, intermediate_size: int, max_positions: int,
                     seed: int) -> Any:  # fmt: skip
    """A randomly initialised Llama-family causal LM sized for a CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
