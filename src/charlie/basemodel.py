"""A base model's reference folder, and the weights it names.

``charlie fetch-model`` (:func:`charlie.fetch.fetch_base_model`) brings a base model onto a
volume once and writes a *reference folder*: config.json, generation_config.json (if any), the
tokenizer files and ``base_model.json``::

    {"ref": "meta-llama/Llama-3.1-8B-Instruct",        # what the user gave
     "path": "/mnt/charlie-cache/huggingface/hub/models--meta-llama--.../snapshots/<sha>",
     "revision": "<sha>",                               # hub commit, or sha256 of S3 keys+ETags
     "source": "hub"}                                   # hub | s3 | local

The weights never enter the folder (an 8B or 671B model must not be copied into a pipeline's
artifact store); tokenize reads it as a tokenizer folder, the memory planner reads its
config.json, and :func:`resolve` turns it into the weights' folder for training. Nothing here
downloads (so the trainer's image needs no object-store client).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from charlie.errors import CharlieError
from charlie.io import read_json_object

REFERENCE = "base_model.json"
"""The file that makes a folder a base model reference (and records a trained model's base)."""
TINY = "tiny"  # the demo's base model, which init-model builds (never fetched)
SOURCES = ("hub", "s3", "local")
# What a reference folder holds besides base_model.json: a model's config and tokenizer.
SMALL_FILES = (
    "config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json",
    "added_tokens.json", "vocab.*", "merges.txt", "*.model", "*.tiktoken", "chat_template.*",
    "preprocessor_config.json", "*.py",
)  # fmt: skip
SAFETENSORS = ("*.safetensors", "*.safetensors.index.json")
BIN = ("pytorch_model*.bin", "pytorch_model*.bin.index.json")
HUB_IGNORE = ("*/*",)  # root files only: not original/ (Meta's .pth), onnx/, gguf/ ...
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ResolvedModel(NamedTuple):
    """Where a base model's weights are, and which model and revision they are."""

    weights_path: str  # a local folder, or a hub id that transformers downloads itself
    ref: str  # what the user named
    revision: str | None  # hub commit sha, S3 digest, or None when unknown
    source: str  # hub | s3 | local

    def record(self) -> dict[str, Any]:
        """The ``base_model.json`` object."""
        path = self.weights_path
        if self.source == "local" or Path(path).is_dir():
            path = str(Path(path).resolve())
        return {"ref": self.ref, "path": path, "revision": self.revision, "source": self.source}


# --------------------------------------------------------------------------- resolve


def has_weights(folder: Path) -> bool:
    """True when ``folder`` holds a whole model's weights (not a LoRA adapter's)."""
    names = [p.name for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    patterns = (*SAFETENSORS, *BIN)
    return any(
        fnmatch.fnmatch(n, p) for n in names if not n.startswith("adapter_model") for p in patterns
    )


def read_reference(folder: Path | str) -> dict[str, Any] | None:
    """A folder's ``base_model.json``, or None when it has none."""
    path = Path(folder) / REFERENCE
    if not path.is_file():
        return None
    data = read_json_object(path)
    if not isinstance(data.get("path"), str) or not data["path"]:
        raise CharlieError(f'{path} names no "path"; rewrite it with `charlie fetch-model`.')
    return data


def resolve(path_or_ref: str | Path) -> ResolvedModel:
    """The weights a base model names: a reference folder's volume path, a folder, a hub id.

    A folder holding weights is itself; a folder with ``base_model.json`` (and no weights)
    resolves to the folder it records; anything else is returned as is (a hub id
    transformers downloads itself).

    Raises:
        CharlieError: A reference points at a folder this machine does not have.
    """
    name = str(path_or_ref)
    folder = Path(name).expanduser()
    if folder.is_dir() and has_weights(folder):
        return ResolvedModel(name, name, None, "local")
    reference = read_reference(folder) if folder.is_dir() else None
    if reference is not None:
        target = reference["path"]
        if not Path(target).is_dir():
            raise CharlieError(
                f"the base model reference {folder} points at {target}, which this pod does "
                "not mount; mount the cache volume that `charlie fetch-model` filled (the "
                "pipeline's cache PVC) at the same path."
            )
        ref = str(reference.get("ref") or name)
        source = str(reference.get("source") or "local")
        return ResolvedModel(target, ref, reference.get("revision"), source)
    if folder.is_dir() or not HUB_ID.match(name):
        return ResolvedModel(name, name, None, "local")
    return ResolvedModel(name, name, cached_hub_revision(name), "hub")


def cached_hub_revision(repo_id: str, revision: str = "main") -> str | None:
    """The commit the Hugging Face cache holds for ``repo_id`` at ``revision``, if any."""
    if not HUB_ID.match(repo_id) or "/" not in repo_id:
        return None
    ref = hub_cache_dir(None) / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    try:
        return ref.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def write_reference(resolved: ResolvedModel, *folders: Path | str) -> None:
    """Write ``base_model.json`` (``resolved.record()``) into each folder that exists."""
    text = json.dumps(resolved.record(), indent=2) + "\n"
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir():
            (folder / REFERENCE).write_text(text, encoding="utf-8")


def hub_cache_dir(cache_dir: Path | str | None) -> Path:
    """The Hugging Face hub cache: $HF_HUB_CACHE, $HF_HOME/hub, else <cache_dir>/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / "huggingface" / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()
