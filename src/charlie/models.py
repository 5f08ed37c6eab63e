"""Models ready to generate or to save: a base with a LoRA adapter folded in, or a whole model.

One place for DESIGN.md's loading trap: the base is loaded unquantised (a 4-bit base cannot
absorb the adapter exactly) and its embeddings resized to the tokenizer, without mean
resizing, *before* ``PeftModel.from_pretrained``, since the adapter's ``modules_to_save`` carry
the new special tokens' rows. torch, transformers and peft are imported where they are used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from charlie.errors import CharlieError

ADAPTER_CONFIG = "adapter_config.json"


def load_base_model(name: str, vocab_size: int, *, trust_remote_code: bool = False) -> Any:
    """The base model in float32, its embeddings resized to ``vocab_size`` rows.

    Raises:
        CharlieError: The base cannot be loaded (a missing directory, an unknown hub name).
    """
    import torch
    from transformers import AutoModelForCausalLM

    try:
        base = AutoModelForCausalLM.from_pretrained(
            name, dtype=torch.float32, trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise CharlieError(
            f"cannot load the adapter's base model {name!r}: {str(exc).splitlines()[0]}"
        ) from None
    base.resize_token_embeddings(vocab_size, mean_resizing=False)
    return base


def merge_adapter(
    adapter_dir: Path | str,
    vocab_size: int,
    *,
    base_model: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """The base with the adapter in ``adapter_dir`` merged in: a plain transformers model.

    Args:
        adapter_dir: A saved PEFT adapter (``adapter_config.json`` and its weights).
        vocab_size: The tokenizer's length, which the adapter was trained with.
        base_model: The base to load; default: the adapter config's ``base_model_name_or_path``.
        trust_remote_code: Passed to ``from_pretrained`` for the base.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if base_model is None:
        base_model = adapter_base(adapter_dir)
    base = load_base_model(base_model, vocab_size, trust_remote_code=trust_remote_code)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def adapter_base(adapter_dir: Path | str) -> str:
    """The base model an adapter was trained on, as this machine can load it.

    The adapter config's ``base_model_name_or_path`` when that loads here; else the hub id that
    ``charlie train`` recorded in ``base_model.json`` (a base trained from the cache volume's
    snapshot of a hub model loads from the hub, or this machine's cache, elsewhere).
    """
    from charlie.basemodel import read_reference

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    named = str(config["base_model_name_or_path"])
    record = read_reference(adapter_dir)
    if record is None or Path(named).is_dir() or not Path(named).is_absolute():
        return named
    if Path(record["path"]).is_dir():
        return record["path"]
    if record.get("source") == "hub":
        return str(record["ref"])
    return named


def load_model_dir(model_dir: Path | str) -> Any:
    """A whole model saved with ``save_pretrained`` (a full fine-tune or a merged adapter).

    Raises:
        CharlieError: The directory holds no model weights.
    """
    model_dir = Path(model_dir)
    weights = list(model_dir.glob("*.safetensors")) + list(model_dir.glob("pytorch_model*.bin"))
    if not weights:
        raise CharlieError(
            f"{model_dir} holds no model weights (an adapter_config.json with its adapter, or a "
            "model's *.safetensors); point --model-dir at a `charlie train` output."
        )
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir))


def load_for_inference(model_dir: Path | str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from an adapter directory (merged on load) or a whole model's."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if (model_dir / ADAPTER_CONFIG).is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        return merge_adapter(model_dir, len(tokenizer)), tokenizer
    model = load_model_dir(model_dir)
    return model, AutoTokenizer.from_pretrained(str(model_dir))
