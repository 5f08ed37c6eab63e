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
from charlie.io import sha256_file

PACKAGES = ("charlie", "torch", "transformers", "trl", "peft", "datasets", "accelerate",
            "bitsandbytes", "deepspeed", "tokenizers", "numpy", "pandas")  # fmt: skip


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
    *,
    base_model: str | None = None,
    seed: int | None = None,
) -> Path:
    """Write ``<output_dir>/manifest.json`` and return its path.

    ``determinism`` says what was in force (seed, deterministic algorithms, CPU threads: see
    :func:`charlie.training.sft.determinism`). ``base_model`` and ``seed`` default to an SFT
    config's (``cfg.base_model``, its pass-through ``seed``); GRPO names its SFT model.
    """
    config = cfg.model_dump(mode="json")
    config_text = json.dumps(config, sort_keys=True)
    data_files = sorted(p for p in Path(cfg.dataset_dir).rglob("*") if p.is_file())
    manifest = {
        "git": git_state(),
        "config": config,
        "config_file": str(config_path) if config_path else None,
        "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "data_files": {str(p): sha256_file(p) for p in data_files},
        "base_model": base_model if base_model is not None else cfg.base_model,
        "packages": _versions(),
        "hardware": _hardware(),
        "seed": seed if seed is not None else cfg.sft_args.get("seed", 42),
        "determinism": determinism,
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "final_metrics": metrics,
        "log_history": log_history,
    }
    path = Path(cfg.output_dir) / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def write_loss_curve(output_dir: Path, log_history: list[dict[str, Any]]) -> list[Path]:
    """The loss curves, each series with its own steps only (a blank cell would plot as 0):

    ``loss.csv`` (step, loss) and ``eval_loss.csv`` (step, eval_loss), DVC plots, and
    ``loss.png``, both on one chart with named axes.
    """
    out = Path(output_dir)
    series = {key: sorted({int(e["step"]): e[key] for e in log_history
                           if key in e and e.get("step") is not None}.items())
              for key in ("loss", "eval_loss")}  # fmt: skip
    paths = []
    for key, points in series.items():
        path = out / f"{key}.csv"
        path.write_text("\n".join([f"step,{key}", *(f"{s},{v}" for s, v in points)]) + "\n",
                        encoding="utf-8")  # fmt: skip
        paths.append(path)
    paths.append(_loss_png(out / "loss.png", series))
    return paths


def _loss_png(path: Path, series: dict[str, list[tuple[int, float]]]) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 3.6), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    styles = {
        "loss": ("training loss", "#1f5fa8", ""),
        "eval_loss": ("validation loss", "#b03a2e", "o"),
    }
    for key, points in series.items():
        if points:
            label, color, marker = styles[key]
            ax.plot(*zip(*points, strict=True), label=label, color=color, marker=marker,
                    markersize=4, linewidth=1.4)  # fmt: skip
    ax.set_title("Training and validation loss (completion tokens)")
    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("cross-entropy per token")
    ax.grid(alpha=0.3)
    if any(series.values()):
        ax.legend(frameon=False)
    fig.savefig(path, format="png")
    return path
