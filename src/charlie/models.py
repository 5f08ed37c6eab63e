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
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGED = "merged"
MERGED_FROM = "merged_from.json"
"""In ``<adapter_dir>/merged``: the SHA-256 of the adapter weights it was merged from."""


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


def adapter_digest(adapter_dir: Path | str) -> str | None:
    """The SHA-256 of an adapter's weights file, or None when it has none (a .bin adapter)."""
    from charlie.io import sha256_file

    weights = Path(adapter_dir) / ADAPTER_WEIGHTS
    return sha256_file(weights) if weights.is_file() else None


def record_merge(adapter_dir: Path | str, merged_dir: Path | str) -> None:
    """Write :data:`MERGED_FROM` into ``merged_dir``: which adapter weights it folds in."""
    record = {"adapter_sha256": adapter_digest(adapter_dir)}
    (Path(merged_dir) / MERGED_FROM).write_text(json.dumps(record, indent=2) + "\n")


def current_merge(adapter_dir: Path | str) -> Path | None:
    """``<adapter_dir>/merged`` when it is this adapter merged (its :data:`MERGED_FROM` names
    the adapter weights' digest), else None: a missing, older or hand-made ``merged/`` is not
    trusted, and the adapter is merged on load instead."""
    merged = Path(adapter_dir) / MERGED
    try:
        record = json.loads((merged / MERGED_FROM).read_text())
    except (OSError, ValueError):
        return None
    digest = record.get("adapter_sha256") if isinstance(record, dict) else None
    return merged if digest and digest == adapter_digest(adapter_dir) else None


def load_for_inference(model_dir: Path | str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from an adapter directory or a whole model's.

    An adapter loads as its ``merged/`` copy when :func:`current_merge` vouches for it (the
    same weights, bit for bit, without importing PEFT or merging: seconds of every evaluate
    run), and is merged on load otherwise. With a CUDA device the model is moved there in bf16
    (fp16 where the GPU has no bf16): :func:`inference_placement`.
    """
    import torch
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if (model_dir / ADAPTER_CONFIG).is_file():
        merged = current_merge(model_dir)
        if merged is None:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            model = merge_adapter(model_dir, len(tokenizer))
            return _placed(model, torch), tokenizer
        model_dir = merged
    model = load_model_dir(model_dir)
    return _placed(model, torch), AutoTokenizer.from_pretrained(str(model_dir))


def inference_placement(cuda: bool, bf16: bool) -> tuple[str, str | None]:
    """Where an inference model goes: ``("cuda", "bfloat16")`` on a GPU that has bf16, else
    ``("cuda", "float16")``; ``("cpu", None)`` without one (the weights' own dtype)."""
    if not cuda:
        return "cpu", None
    return "cuda", "bfloat16" if bf16 else "float16"


def _placed(model: Any, torch: Any) -> Any:
    """``model`` on the GPU in half precision when there is one (evaluate and GRPO generate
    there: an 8B model on the CPU in fp32 is hours per split), untouched on the CPU."""
    cuda = torch.cuda.is_available()
    device, dtype = inference_placement(cuda, cuda and torch.cuda.is_bf16_supported())
    if device == "cpu":
        return model
    return model.to(device=device, dtype=getattr(torch, dtype))
