"""Bring a real base model onto the cache volume once, and write a small reference folder.

    charlie fetch-model --base-model meta-llama/Llama-3.1-8B-Instruct \\
        --cache-dir /mnt/charlie-cache --out <folder>
    charlie fetch-model --base-model s3://bucket/models/my-llama/ --cache-dir ... --out ...

--base-model is a Hugging Face Hub id, an s3:// URI of a save_pretrained folder, or a local
folder (used as it is). A hub model downloads with huggingface_hub into the Hugging Face cache
($HF_HUB_CACHE, else $HF_HOME/hub, else <cache-dir>/huggingface/hub; the pipeline puts HF_HOME
on the volume), with $HF_TOKEN for gated models: config, tokenizer and weights only
(safetensors; .bin only when the repository has none), so it downloads once across runs; with
HF_HUB_OFFLINE=1 the cached snapshot is used. An s3:// folder downloads with boto3 (endpoint
$AWS_ENDPOINT_URL, credentials AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) into
<cache-dir>/models/s3/<sha256 of its keys, ETags and versions>/, once per version: a later
fetch of unchanged objects downloads nothing.

--out is not the weights (an 8B or 671B model is never copied into a pipeline's artifact
store): it holds config.json, generation_config.json (if any), the tokenizer files and
base_model.json = {"ref": what --base-model said, "path": the folder holding the whole model
on this machine, "revision": the hub commit, or "sha256:..." over the S3 listing (null
for a local folder), "source": "hub" | "s3" | "local"}. tokenize reads it as a tokenizer
folder, plan reads its config.json, and train resolves it to "path" (which must be mounted).

exit codes:
  0  fetched (or found in the cache) and the reference folder written
  2  a gated, missing or unreachable model, a bad URI or folder (one sentence says which)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from charlie.basemodel import hub_cache_dir
from charlie.fetch import fetch_base_model
from charlie.logs import setup_logging

log = logging.getLogger("charlie.fetch_model")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `charlie fetch-model`."""
    parser.add_argument(
        "--base-model",
        required=True,
        metavar="REF",
        help="hub id (org/name), s3://bucket/prefix/ of a save_pretrained folder, or a folder",
    )
    parser.add_argument(
        "--revision",
        help="hub branch, tag or commit (default: main); ignored for s3:// and folders",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        required=True,
        help="a folder on the cache volume: s3:// models go to <cache-dir>/models/s3/ (hub "
        "models to the Hugging Face cache, $HF_HOME/hub)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="the reference folder to write (no weights)"
    )


def run(args: argparse.Namespace) -> int:
    """Fetch the model and write the reference folder; returns the exit code."""
    setup_logging("fetch-model")
    log.info("hub cache: %s", hub_cache_dir(args.cache_dir))
    record = fetch_base_model(args.base_model, args.cache_dir, args.out, revision=args.revision)
    print(f"base model: {record['ref']} ({record['source']}, revision {record['revision']})")
    print(f"weights:    {record['path']}")
    print(f"reference:  {args.out}")
    return 0
