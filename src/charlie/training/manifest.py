"""``manifest.json``: everything needed to say how a model was made and to make it again.

Its ``hardware`` section says where the run ran (see :func:`_hardware`), including how it was
distributed, from the variables the launcher sets for each process. torchrun (and a Kubeflow
TrainJob, which runs torchrun on every node) sets ``WORLD_SIZE`` (processes in all),
``LOCAL_WORLD_SIZE`` (processes on this node), ``GROUP_WORLD_SIZE`` (nodes: torchrun agents)
and ``GROUP_RANK`` (this node); DeepSpeed's launcher sets ``WORLD_SIZE``, ``LOCAL_SIZE``,
``CROSS_SIZE`` and ``CROSS_RANK`` for the same; a launcher that sets neither pair has its nodes
counted as processes in all over processes on this node.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from charlie.gitinfo import git_state

PACKAGES = ("charlie", "torch", "transformers", "trl", "peft", "datasets", "accelerate",
            "bitsandbytes", "deepspeed", "tokenizers", "numpy", "pandas")  # fmt: skip


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _env_int(*names: str) -> int | None:
    """The first of the environment variables ``names`` that is set, as an int."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def node_of_world() -> tuple[int, int]:
    """``(this node's rank, nodes in the run)`` as the launcher set them; ``(0, 1)`` without one.

    torchrun's ``GROUP_RANK`` and ``GROUP_WORLD_SIZE`` (its agents, one a node); otherwise
    DeepSpeed's ``CROSS_RANK`` / ``CROSS_SIZE``, or the node count as processes in all over
    processes on this node.
    """
    world = _env_int("WORLD_SIZE") or 1
    local = _env_int("LOCAL_WORLD_SIZE", "LOCAL_SIZE") or world
    nodes = _env_int("GROUP_WORLD_SIZE", "CROSS_SIZE") or max(1, world // max(1, local))
    rank = _env_int("GROUP_RANK", "CROSS_RANK")
    if rank is None:
        rank = (_env_int("RANK") or 0) // max(1, local)
    return rank, nodes


def _hardware() -> dict[str, Any]:
    """This machine, and how the run was spread: ``world_size`` (processes in all),
    ``local_world_size`` (on this node), ``num_nodes``, and of the process writing the
    manifest (rank 0) its ``rank`` and ``node_rank``; ``backend``: torch.distributed's (gloo on
    CPUs, nccl on GPUs), None for a single process without a process group."""
    import torch

    world = _env_int("WORLD_SIZE") or 1
    node_rank, nodes = node_of_world()
    backend = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        backend = str(torch.distributed.get_backend())
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
        "world_size": world,
        "local_world_size": _env_int("LOCAL_WORLD_SIZE", "LOCAL_SIZE") or world,
        "num_nodes": nodes,
        "rank": _env_int("RANK") or 0,
        "node_rank": node_rank,
        "backend": backend,
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_manifest(
    cfg: Any,
    config_path: Path | None,
    started: dt.datetime,
    metrics: dict[str, Any],
    log_history: list[dict[str, Any]],
    determinism: dict[str, Any] | None = None,
) -> Path:
    """Write ``<output_dir>/manifest.json`` and return its path.

    ``determinism`` says what was in force (seed, deterministic algorithms, CPU threads: see
    :func:`charlie.training.sft.determinism`).
    """
    config = cfg.model_dump(mode="json")
    config_text = json.dumps(config, sort_keys=True)
    data_files = sorted(p for p in Path(cfg.dataset_dir).rglob("*") if p.is_file())
    manifest = {
        "git": git_state(),
        "config": config,
        "config_file": str(config_path) if config_path else None,
        "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "data_files": {str(p): sha256(p) for p in data_files},
        "base_model": cfg.base_model,
        "packages": _versions(),
        "hardware": _hardware(),
        "seed": cfg.sft_args.get("seed", 42),
        "determinism": determinism,
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "final_metrics": metrics,
        "log_history": log_history,
    }
    path = Path(cfg.output_dir) / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def write_loss_curve(output_dir: Path, log_history: list[dict[str, Any]]) -> Path:
    """``<output_dir>/loss.csv``: step, train loss, eval loss (a DVC plot)."""
    rows: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        row = rows.setdefault(int(step), {"step": int(step), "loss": "", "eval_loss": ""})
        for key in ("loss", "eval_loss"):
            if key in entry:
                row[key] = entry[key]
    path = Path(output_dir) / "loss.csv"
    lines = ["step,loss,eval_loss"] + [
        f"{r['step']},{r['loss']},{r['eval_loss']}" for _, r in sorted(rows.items())
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
