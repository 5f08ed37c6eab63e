"""Run a compiled KFP pipeline's container commands on this host, in DAG order.

No Docker, no Kubernetes: each executor's command and args are taken from the compiled YAML and
resolved as KFP's driver and launcher would resolve them: parameters, artifact paths, the job
placeholders, and ``{{$}}`` (the executor input JSON, with ``outputs.outputFile``). Programs the
images provide (``charlie``, ``deepspeed``) become this environment's, each PVC mount a folder
under the work directory, and the result runs as a subprocess. Afterwards, like the launcher,
the harness reads the executor output file and merges each artifact's metadata (what the KFP UI
shows). It proves the wiring (every declared output is written, every downstream stage reads
what its producer wrote); it does not prove the images, resources or Kubernetes settings, which
tests/test_kfp.py checks as a spec.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import yaml

BIN = Path(sys.executable).parent
PROGRAMS = {name: str(BIN / name) for name in ("charlie", "deepspeed")}
PLACEHOLDER = re.compile(
    r"\{\{\$\.(inputs|outputs)\.(parameters|artifacts)\['([^']+)'\](?:\.(path|output_file))?\}\}"
)


@dataclass
class TaskRun:
    """What one task was given and wrote."""

    name: str
    argv: list[str]
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)  # from executor output
    attempts: int = 0
    log: str = ""  # stdout and stderr of the last attempt


def _value(spec: dict[str, Any]) -> Any:
    """A compiled parameter default or constant (``{"defaultValue": x}`` / ``{"constant": x}``)."""
    return spec.get("defaultValue", spec.get("constant"))


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _artifact(key: str, spec: dict[str, Any], path: Path, metadata: dict | None = None) -> dict:
    """One runtime artifact of the executor input (a local URI: its path is the URI itself)."""
    return {"artifacts": [{"name": key, "type": spec["artifactType"], "uri": str(path),
                           "metadata": metadata or {}}]}  # fmt: skip


def run_pipeline(
    spec_path: Path | str,
    workdir: Path,
    arguments: dict[str, Any] | None = None,
    cwd: Path | str = ".",
    env: dict[str, str] | None = None,
    retry: Collection[str] = (),
    job_id: str | None = None,
) -> dict[str, TaskRun]:
    """Run every task of the pipeline's root DAG; raise on the first failing command.

    Args:
        spec_path: The compiled pipeline YAML.
        workdir: Where output artifacts (``<workdir>/<task>/<output>``) and PVCs
            (``<workdir>/pvc/<claim>``) live.
        arguments: Pipeline parameters overriding the compiled defaults.
        cwd: Working directory of the commands (the image's working directory: the repo root).
        env: Extra environment for every command.
        retry: Tasks to run a second time after they succeed, as KFP retries a task whose pod was
            lost: same executor input and volumes, empty local output paths.
        job_id: The run's ``{{$.pipeline_job_uuid}}`` (default: a new UUID).

    Returns:
        One :class:`TaskRun` per task, by task name.
    """
    pipeline, *platform = yaml.safe_load_all(Path(spec_path).read_text(encoding="utf-8"))
    k8s = platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {}
    root = pipeline["root"]
    params = {name: _value(p) for name, p in root["inputDefinitions"].get("parameters", {}).items()}
    unknown = set(arguments or {}) - set(params)
    if unknown:
        raise KeyError(f"not pipeline parameters: {sorted(unknown)}")
    params.update(arguments or {})
    job = {"{{$.pipeline_job_uuid}}": job_id or str(uuid.uuid4()),
           "{{$.pipeline_job_name}}": pipeline["pipelineInfo"]["name"]}  # fmt: skip
    tasks = root["dag"]["tasks"]
    executors = pipeline["deploymentSpec"]["executors"]
    order = TopologicalSorter({n: t.get("dependentTasks", []) for n, t in tasks.items()})

    runs: dict[str, TaskRun] = {}
    for name in order.static_order():
        task = tasks[name]
        component = pipeline["components"][task["componentRef"]["name"]]
        label = component["executorLabel"]
        container = executors[label]["container"]
        run = TaskRun(name=name, argv=[])
        declared_in = component.get("inputDefinitions", {}).get("artifacts", {})
        declared_out = component.get("outputDefinitions", {}).get("artifacts", {})

        executor_input: dict[str, Any] = {
            "inputs": {"parameterValues": {}, "artifacts": {}},
            "outputs": {"artifacts": {}, "outputFile": str(workdir / name / "executor_output.json")},
        }  # fmt: skip
        for key, source in task.get("inputs", {}).get("parameters", {}).items():
            if "componentInputParameter" in source:
                run.inputs[key] = params[source["componentInputParameter"]]
            elif "runtimeValue" in source:
                value = _value(source["runtimeValue"])
                run.inputs[key] = job.get(value, value) if isinstance(value, str) else value
            else:
                raise NotImplementedError(f"{name}: parameter source {source}")
            executor_input["inputs"]["parameterValues"][key] = run.inputs[key]
        for key, source in task.get("inputs", {}).get("artifacts", {}).items():
            producer = runs[source["taskOutputArtifact"]["producerTask"]]
            out_key = source["taskOutputArtifact"]["outputArtifactKey"]
            run.inputs[key] = producer.outputs[out_key]
            executor_input["inputs"]["artifacts"][key] = _artifact(
                key, declared_in[key], run.inputs[key], producer.metadata.get(out_key)
            )
        for key, spec in declared_out.items():
            run.outputs[key] = workdir / name / key
            executor_input["outputs"]["artifacts"][key] = _artifact(key, spec, run.outputs[key])

        def resolve(match: re.Match[str], run: TaskRun = run) -> str:
            side, kind, key, _ = match.groups()
            if side == "outputs":
                if kind == "artifacts":
                    return str(run.outputs[key])
                raise NotImplementedError(f"{run.name}: output parameter {key}")
            return _render(run.inputs[key])

        volumes = {}
        for mount in k8s.get(label, {}).get("pvcMount", []):
            claim = mount.get("constant") or params[mount["componentInputParameter"]]
            volumes[mount["mountPath"]] = str(workdir / "pvc" / claim)

        def localise(text: str, volumes: dict[str, str] = volumes) -> str:
            for mount_path, host_path in volumes.items():
                text = text.replace(mount_path, host_path)
            return text

        argv = []
        for arg in [*container.get("command", []), *container.get("args", [])]:
            arg = localise(PLACEHOLDER.sub(resolve, arg))
            argv.append(arg.replace("{{$}}", json.dumps(executor_input)))
        run.argv = [PROGRAMS.get(a, a) for a in argv]
        task_env = {**os.environ, **(env or {})}
        task_env.update({e["name"]: localise(e["value"]) for e in container.get("env", [])})

        for attempt in range(1 + (name in retry)):
            _fresh_outputs(run, Path(executor_input["outputs"]["outputFile"]))
            run.attempts = attempt + 1
            done = subprocess.run(run.argv, cwd=cwd, env=task_env, capture_output=True, text=True)
            run.log = done.stdout + done.stderr
            if done.returncode != 0:
                raise RuntimeError(
                    f"task {name} exited {done.returncode} (attempt {run.attempts}): "
                    f"{' '.join(run.argv)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
                )
        run.metadata = _merge_executor_output(run, Path(executor_input["outputs"]["outputFile"]))
        runs[name] = run
    return runs


def _fresh_outputs(run: TaskRun, output_file: Path) -> None:
    """Empty local output paths, their parent created, as the launcher gives a new pod."""
    for path in [*run.outputs.values(), output_file]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)


def _merge_executor_output(run: TaskRun, output_file: Path) -> dict[str, dict[str, Any]]:
    """Each output's metadata from the executor output file, checked as the launcher reads it."""
    if not output_file.is_file():
        return {}
    written = json.loads(output_file.read_text(encoding="utf-8"))
    metadata = {}
    for key, listed in written.get("artifacts", {}).items():
        if key not in run.outputs:
            raise KeyError(f"{run.name}: executor output names undeclared output {key!r}")
        (artifact,) = listed["artifacts"]
        if artifact["uri"] != str(run.outputs[key]):
            raise ValueError(f"{run.name}: executor output moved {key!r} to {artifact['uri']}")
        metadata[key] = artifact.get("metadata", {})
    return metadata
