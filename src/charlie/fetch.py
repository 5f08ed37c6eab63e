"""Bring a base model onto the cache volume once, and write its reference folder.

``charlie fetch-model`` (:func:`fetch_base_model`) takes what the pipeline's ``base_model``
names and leaves a reference folder (:mod:`charlie.basemodel`: config, tokenizer,
``base_model.json``; never the weights):

  hub    ``huggingface_hub.snapshot_download`` into the Hugging Face cache ($HF_HUB_CACHE,
         else $HF_HOME/hub, else <cache dir>/huggingface/hub), token from $HF_TOKEN; config,
         tokenizer and weights only (safetensors; .bin only when the repository has none),
         root files only; with HF_HUB_OFFLINE=1 the cached snapshot is used
  s3     a ``save_pretrained`` folder, kept by version under <cache dir>/models/s3/<sha256>/
         (:func:`charlie.sources.cached_source`): unchanged objects are not downloaded again
  local  a folder, used as it is

Every failure is one sentence (:class:`~charlie.errors.CharlieError`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from pathlib import Path

from charlie.basemodel import (
    BIN,
    HUB_ID,
    HUB_IGNORE,
    REFERENCE,
    SAFETENSORS,
    SMALL_FILES,
    TINY,
    ResolvedModel,
    has_weights,
    hub_cache_dir,
    resolve,
)
from charlie.errors import CharlieError
from charlie.io import atomic_directory
from charlie.sources import cached_source

log = logging.getLogger("charlie.fetch")


def kind_of(ref: str) -> str:
    """hub, s3 or local; one sentence for what is none of them."""
    if ref == TINY:
        raise CharlieError(
            "base model 'tiny' is the demo's, built by `charlie init-model`; fetch-model takes "
            "a hub id, an s3:// URI or a folder."
        )
    if "://" in ref:
        if ref.startswith("s3://"):
            return "s3"
        raise CharlieError(
            f"base model {ref!r}: only s3:// object-store URIs are read (S3, MinIO, any "
            "S3-compatible store through AWS_ENDPOINT_URL)."
        )
    if Path(ref).expanduser().is_dir():
        return "local"
    if ref.startswith(("/", ".", "~")) or not HUB_ID.match(ref):
        raise CharlieError(f"base model {ref!r} is no folder here and no hub id (org/name).")
    return "hub"


def fetch_base_model(
    ref: str, cache_dir: Path | str, out: Path | str, revision: str | None = None
) -> dict:
    """Bring ``ref`` onto ``cache_dir`` (or the hub cache) and write its reference folder ``out``.

    Returns:
        The ``base_model.json`` object written.
    """
    kind = kind_of(ref)
    if kind == "hub":
        resolved = fetch_hub(ref, revision, cache_dir)
    elif kind == "s3":
        resolved = fetch_s3_model(ref, Path(cache_dir))
    else:
        resolved = resolve(ref)
        if not has_weights(Path(resolved.weights_path)):
            raise CharlieError(f"{resolved.weights_path} holds no model weights (*.safetensors).")
        if resolved.ref == ref:
            resolved = resolved._replace(source="local")
    write_reference_folder(resolved, Path(out))
    return resolved.record()


def write_reference_folder(resolved: ResolvedModel, out: Path) -> None:
    """``out``: the model's config and tokenizer files (no weights) and base_model.json."""
    model = Path(resolved.weights_path)
    if not (model / "config.json").is_file():
        raise CharlieError(
            f"{resolved.ref} has no config.json: it is not a save_pretrained folder."
        )
    with atomic_directory(out) as tmp:
        for file in sorted(model.iterdir()):
            if file.is_file() and any(fnmatch.fnmatch(file.name, p) for p in SMALL_FILES):
                shutil.copyfile(file, tmp / file.name)  # follows the hub cache's symlinks
        (tmp / REFERENCE).write_text(json.dumps(resolved.record(), indent=2) + "\n")
    log.info("wrote %s: %s (%s, revision %s) is at %s", out, resolved.ref, resolved.source,
             resolved.revision, resolved.weights_path)  # fmt: skip


def fetch_hub(repo_id: str, revision: str | None, cache_dir: Path | str | None) -> ResolvedModel:
    """Download (or find in the cache) a hub model's config, tokenizer and weights."""
    cache = hub_cache_dir(cache_dir)
    log.info("fetching %s%s into the hub cache %s", repo_id,
             f"@{revision}" if revision else "", cache)  # fmt: skip
    folder = Path(_snapshot(repo_id, revision, cache, [*SMALL_FILES, *SAFETENSORS]))
    if not any(folder.glob("*.safetensors")):  # an older repository: PyTorch .bin weights
        folder = Path(_snapshot(repo_id, revision, cache, [*SMALL_FILES, *BIN]))
    if not has_weights(folder):
        raise CharlieError(f"{repo_id} on the Hugging Face Hub has no safetensors or .bin weights.")
    return ResolvedModel(str(folder), repo_id, folder.name, "hub")


def _snapshot(repo_id: str, revision: str | None, cache: Path, patterns: list[str]) -> str:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=str(cache),
            token=os.environ.get("HF_TOKEN") or None,
            allow_patterns=patterns,
            ignore_patterns=list(HUB_IGNORE),
        )
    except GatedRepoError:
        raise CharlieError(
            f"{repo_id} is a gated model: accept its licence at https://huggingface.co/"
            f"{repo_id} with the account whose token the charlie-hf Secret holds (key token, "
            "read as HF_TOKEN), and give that token read access to gated repositories."
        ) from None
    except RevisionNotFoundError:
        raise CharlieError(
            f"{repo_id} has no revision {revision!r} on the Hugging Face Hub."
        ) from None
    except RepositoryNotFoundError:
        raise CharlieError(
            f"{repo_id} is not a model on the Hugging Face Hub (or it is private and HF_TOKEN "
            "cannot see it); check the id and the charlie-hf Secret's token."
        ) from None
    except LocalEntryNotFoundError:
        at = f" at {revision}" if revision else ""
        if constants.HF_HUB_OFFLINE or _env_true("HF_HUB_OFFLINE"):
            raise CharlieError(
                f"HF_HUB_OFFLINE is set and {repo_id}{at} is not (completely) in the hub cache "
                f"{cache}; unset HF_HUB_OFFLINE to download it, or fill the cache first."
            ) from None
        raise CharlieError(
            f"the Hugging Face Hub cannot be reached and {repo_id}{at} is not (completely) in "
            f"the hub cache {cache}; let the pod reach huggingface.co (or set HF_ENDPOINT to a "
            "mirror), or fill the cache beforehand and set HF_HUB_OFFLINE=1."
        ) from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise CharlieError(
            f"the Hugging Face Hub answered HTTP {status} for {repo_id}: "
            f"{str(exc).splitlines()[0].rstrip('.')}."
        ) from None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def fetch_s3_model(uri: str, cache_dir: Path) -> ResolvedModel:
    """An S3 ``save_pretrained`` folder on the volume, under ``<cache_dir>/models/s3/<sha256>/``.

    :func:`cached_source` downloads a version once: a later fetch of unchanged objects lists
    the prefix and downloads nothing.
    """
    folder, source = cached_source(uri, cache_dir / "models", tree=False)
    if not (folder / "config.json").is_file():
        raise CharlieError(f"{uri} has no config.json: it is not a save_pretrained folder.")
    return ResolvedModel(str(folder.resolve()), uri, f"sha256:{source.version['sha256']}", "s3")
