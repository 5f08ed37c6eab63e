"""`charlie train` as two nodes of a Kubeflow Trainer TrainJob, on 127.0.0.1.

Each node runs ``node_command`` under ``node_env`` (the ``PET_*`` settings torchrun reads), as
Trainer's torch plugin starts it: ``torchrun --nnodes=2 --nproc_per_node=1`` with a static
rendezvous at a master address and port, on the CPU, so torch.distributed talks gloo. Both
nodes share one ``--output-dir`` and ``--checkpoint-dir``, as they share the TrainJob's RWX PVC;
each has its own working directory, temp directory and log directory, as each has its own pod.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from charlie.kubeflow.trainjob import node_command, node_env
from tests.test_train_paths import tiny  # noqa: F401  (a fixture: a tiny base and its data)

REPO = Path(__file__).resolve().parents[1]
NODES = 2
TEMPORARY = r"(^|/)\.?te?mp[-_.]|\.(te?mp|part)$|~$|incomplete|removing"  # half-written
LEFTOVER = TEMPORARY + r"|[-_ ]\(?1\)?\."  # ... or a second copy of a file (manifest_1.json)
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                    "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR",
                    "MASTER_PORT", "TORCHELASTIC_RUN_ID")  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(made: dict[str, Path], path: Path, **keys) -> Path:
    """A copy of the CPU demo's config on the tiny model: small steps, no evaluation while it
    trains (only the final one), no TensorBoard."""
    config = yaml.safe_load((REPO / "configs" / "sft_tiny_lora_cpu.yaml").read_text())
    config.update(
        base_model=str(made["base"]), lora_r=4, lora_alpha=8, per_device_train_batch_size=4,
        per_device_eval_batch_size=8, learning_rate=1e-2, warmup_steps=0, logging_steps=1,
        eval_strategy="no", report_to=["none"], disable_tqdm=True, dataloader_num_workers=0,
        **keys,
    )  # fmt: skip
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid``, read from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


class Node:
    """One TrainJob node: a torchrun process group with its own pod-like directories."""

    def __init__(self, root: Path, rank: int, port: int, train_args: list[str], run: str):
        self.rank = rank
        self.home = root / f"{run}-node{rank}"  # a restarted pod starts on a fresh disk
        self.tmp = self.home / "tmp"
        self.cwd = self.home / "cwd"
        for folder in (self.tmp, self.cwd):
            folder.mkdir(parents=True, exist_ok=True)
        self.log_dir = self.home / "logs"
        self.output = self.home / f"{run}.out"
        command = node_command(train_args)
        assert command[0] == "torchrun"
        command[0] = str(Path(sys.executable).parent / "torchrun")
        env = {k: v for k, v in os.environ.items()
               if k not in LAUNCH_VARIABLES and not k.startswith("PET_")}  # fmt: skip
        env.update(node_env(NODES, rank, 1, "127.0.0.1", port))
        env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TMPDIR=str(self.tmp),
                   CHARLIE_LOG_DIR=str(self.log_dir), TOKENIZERS_PARALLELISM="false")  # fmt: skip
        with open(self.output, "w", encoding="utf-8") as out:
            self.process = subprocess.Popen(command, cwd=self.cwd, env=env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    @property
    def text(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the whole node, as when its pod goes: torchrun and its workers, each of
        which torchrun starts in a session of its own (so the agent's group is not enough)."""
        if self.process.poll() is None:  # else its pid may be another process's by now
            for pid in [self.process.pid, *_descendants(self.process.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
        self.process.wait(30)

    def trained_steps(self) -> int:
        found = re.findall(r"^trained (\d+) steps", self.text, flags=re.MULTILINE)
        assert found, self.text[-3000:]
        return int(found[-1])


def _launch(root: Path, train_args: list[str], run: str) -> list[Node]:
    port = _free_port()
    return [Node(root, rank, port, train_args, run) for rank in range(NODES)]


def _finish(nodes: list[Node], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    try:
        for node in nodes:
            code = node.wait(max(1.0, deadline - time.monotonic()))
            assert code == 0, f"node {node.rank} exited {code}:\n{node.text[-4000:]}"
    finally:
        for node in nodes:
            node.kill()


def _complete(checkpoint: Path, *, every_rank: bool = False) -> bool:
    """Trainer wrote it to the end: rank 0's trainer_state.json last, and no cut RNG state
    (``every_rank``: and the RNG state of each rank; Trainer resumes without a missing one)."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    rngs = [checkpoint / f"rng_state_{rank}.pth" for rank in range(NODES)]
    return (
        state.get("global_step") == int(checkpoint.name.split("-")[1])
        and all(zipfile.is_zipfile(rng) for rng in rngs if rng.is_file())
        and (not every_rank or all(rng.is_file() for rng in rngs))
    )


def _steps(folder: Path, *, every_rank: bool = False) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*")
                  if _complete(p, every_rank=every_rank))  # fmt: skip


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def _data(made: dict[str, Path], tmp_path: Path) -> Path:
    """The tiny tokenized dataset with a tokenize report, so that max_length: auto works."""
    data = tmp_path / "tokenized"
    shutil.copytree(made["data"], data)
    (data / "tokenize_report.json").write_text(json.dumps({"max_length": 128}))
    return data


def _kill_after_a_checkpoint(nodes: list[Node], checkpoints: Path) -> int | None:
    """Wait for a complete checkpoint, SIGKILL node 1, and return node 0's exit code (None: it
    was still running a minute later, and was killed: JobSet would restart it anyway)."""
    try:
        deadline = time.monotonic() + 180
        while not _steps(checkpoints, every_rank=True):
            assert time.monotonic() < deadline, nodes[0].text[-3000:]
            assert all(node.process.poll() is None for node in nodes), nodes[0].text[-3000:]
            time.sleep(0.01)
        nodes[1].kill()  # node 1's pod is gone: torchrun and its worker at once
        try:
            return nodes[0].process.wait(60)  # its next collective fails: gloo sees the peer go
        except subprocess.TimeoutExpired:
            return None
    finally:
        for node in nodes:
            node.kill()


@pytest.mark.slow
def test_two_nodes_train_and_resume_after_a_node_is_killed(tiny, tmp_path):  # noqa: F811
    """Both nodes train; rank 0 alone writes; a killed node's restart resumes them both."""
    max_steps, every = 80, 5
    data, pvc = _data(tiny, tmp_path), tmp_path / "pvc"
    out, checkpoints = pvc / "run", pvc / "checkpoints"
    # ddp_timeout bounds a hung peer's wait (a killed one is seen at once).
    config = _config(tiny, tmp_path / "run.yaml", max_length="auto", max_steps=max_steps,
                     save_steps=every, save_total_limit=2, ddp_timeout=20)  # fmt: skip
    args = ["--config", str(config), "--dataset-dir", str(data), "--output-dir", str(out),
            "--checkpoint-dir", str(checkpoints), "--merge"]  # fmt: skip

    # ---------------------------------------------------------------- the kill
    first = _launch(tmp_path, args, "first")
    code = _kill_after_a_checkpoint(first, checkpoints)
    assert code not in (0, None), first[0].text[-3000:]  # node 0 failed, and did not hang
    assert not out.exists() or not list(out.iterdir()), _files(out)  # nothing written yet
    done = _steps(checkpoints)[-1]
    assert 0 < done < max_steps
    # A node killed while it saved leaves a checkpoint without its trainer state, or with a cut
    # RNG file: make one (unless the kill did); the resume must pass it by.
    half = checkpoints / f"checkpoint-{done + every}"
    if not half.exists():
        half.mkdir()
        shutil.copy(checkpoints / f"checkpoint-{done}" / "adapter_config.json", half)
        rng = (checkpoints / f"checkpoint-{done}" / "rng_state_1.pth").read_bytes()
        (half / "rng_state_1.pth").write_bytes(rng[: len(rng) // 2])
    assert not _complete(half)

    # ---------------------------------------------------------------- the restart
    nodes = _launch(tmp_path, args, "again")  # JobSet restarts every node, with the same command
    _finish(nodes)

    # (a) Both nodes trained, in step, to max_steps.
    resumed = f"resuming from {checkpoints / f'checkpoint-{done}'}"
    for node in nodes:
        assert resumed in node.text, node.text[-3000:]
        assert node.trained_steps() == max_steps
        # The steps after the checkpoint only (logging_steps: 1): it went on, not over.
        assert len(re.findall(rf"^step \d+/{max_steps} ", node.text, re.M)) == max_steps - done
    zero, one = nodes[0].text, nodes[1].text
    assert f"removing {half}: a half-written checkpoint" in zero
    assert (
        f"rank 0 of 2 (node 0 of 2): writes the model, merged/ and manifest.json into {out}" in zero
    )
    leaves = "rank 1 of 2 (node 1 of 2): trains and evaluates; not rank 0, so it writes nothing"
    assert f"{leaves} into {out}" in one
    assert f"x 2 processes, {done} done)" in zero and "cost:" not in one  # the probe: rank 0 only

    # (b) One adapter, tokenizer, report, manifest, loss curve and merged model, from rank 0.
    files = _files(out)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "tokenize_report.json", "manifest.json", "loss.csv",
                 "merged/model.safetensors", "merged/config.json", "merged/tokenizer.json",
                 "merged/tokenize_report.json"):  # fmt: skip
        assert name in files, files
    assert not [f for f in files if re.search(LEFTOVER, f)], files
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["merged"]
    final = [f"checkpoint-{max_steps - every}", f"checkpoint-{max_steps}"]
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == final  # no half left
    assert _steps(checkpoints, every_rank=True) == [max_steps - every, max_steps]
    for checkpoint in final:  # of a checkpoint, rank 1 writes its RNG state only
        assert not [f for f in _files(checkpoints / checkpoint) if re.search(TEMPORARY, f)]
        assert [f for f in _files(checkpoints / checkpoint) if "rng_state" in f] == [
            "rng_state_0.pth", "rng_state_1.pth"]  # fmt: skip
    # The pods' own disks: nothing but torchrun's empty log dirs (datasets' temporary cache is
    # removed at exit; a SIGKILLed process leaves its own, on a disk that goes with its pod).
    for node in (*first, *nodes):
        assert _files(node.cwd) == [], node.home
    for node in nodes:
        assert _files(node.tmp) == [], node.home

    # (c) The manifest says how the run was spread, and (d) where it ended.
    manifest = json.loads((out / "manifest.json").read_text())
    hardware = manifest["hardware"]
    assert {k: hardware[k] for k in ("world_size", "local_world_size", "num_nodes", "rank",
                                     "node_rank", "backend")} == {
        "world_size": 2, "local_world_size": 1, "num_nodes": 2, "rank": 0, "node_rank": 0,
        "backend": "gloo"}  # fmt: skip
    assert manifest["final_metrics"]["global_step"] == max_steps
    assert manifest["final_metrics"]["merged_model"] == str(out / "merged")
    state = json.loads((checkpoints / f"checkpoint-{max_steps}" / "trainer_state.json").read_text())
    assert state["global_step"] == max_steps
    steps = [e["step"] for e in manifest["log_history"] if "loss" in e]
    assert steps == list(range(1, max_steps + 1))  # the first run's steps, then the rest
    curve = (out / "loss.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in curve] == steps
