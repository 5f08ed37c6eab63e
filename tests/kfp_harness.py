"""Run a compiled KFP pipeline's container commands on this host, in DAG order.

No Docker, no Kubernetes: each executor's command and args are taken from the compiled YAML,
their placeholders resolved to paths under a work directory, the program `charlie` replaced by
this environment's, and the result run as a subprocess. It proves the wiring (every declared
output is written, every downstream stage reads what its producer wrote); it does not prove the
images, resources or Kubernetes settings, which tests/test_kfp.py checks as a spec.
"""

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import yaml

CHARLIE = str(Path(sys.executable).with_name("charlie"))
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


def run_pipeline(
    spec_path: Path | str,
    workdir: Path,
    arguments: dict[str, Any] | None = None,
    cwd: Path | str = ".",
    env: dict[str, str] | None = None,
) -> dict[str, TaskRun]:
    """Run every task of the pipeline's root DAG; raise on the first failing command.

    Args:
        spec_path: The compiled pipeline YAML.
        workdir: Where output artifacts (``<workdir>/<task>/<output>``) are written.
        arguments: Pipeline parameters overriding the compiled defaults.
        cwd: Working directory of the commands (the image's working directory: the repo root).
        env: Extra environment for every command.

    Returns:
        One :class:`TaskRun` per task, by task name.
    """
    spec = next(yaml.safe_load_all(Path(spec_path).read_text(encoding="utf-8")))
    root = spec["root"]
    params = {name: _value(p) for name, p in root["inputDefinitions"].get("parameters", {}).items()}
    params.update(arguments or {})
    unknown = set(arguments or {}) - set(params)
    if unknown:
        raise KeyError(f"not pipeline parameters: {sorted(unknown)}")
    tasks = root["dag"]["tasks"]
    executors = spec["deploymentSpec"]["executors"]
    order = TopologicalSorter({n: t.get("dependentTasks", []) for n, t in tasks.items()})

    runs: dict[str, TaskRun] = {}
    for name in order.static_order():
        task = tasks[name]
        component = spec["components"][task["componentRef"]["name"]]
        container = executors[component["executorLabel"]]["container"]
        run = TaskRun(name=name, argv=[])

        for key, source in task.get("inputs", {}).get("parameters", {}).items():
            if "componentInputParameter" in source:
                run.inputs[key] = params[source["componentInputParameter"]]
            elif "runtimeValue" in source:
                run.inputs[key] = _value(source["runtimeValue"])
            else:
                raise NotImplementedError(f"{name}: parameter source {source}")
        for key, source in task.get("inputs", {}).get("artifacts", {}).items():
            producer = source["taskOutputArtifact"]
            run.inputs[key] = runs[producer["producerTask"]].outputs[producer["outputArtifactKey"]]
        for key in component.get("outputDefinitions", {}).get("artifacts", {}):
            path = workdir / name / key
            path.parent.mkdir(parents=True, exist_ok=True)  # as the KFP launcher does
            run.outputs[key] = path

        def resolve(match: re.Match[str], run: TaskRun = run) -> str:
            side, kind, key, _ = match.groups()
            if side == "outputs":
                if kind == "artifacts":
                    return str(run.outputs[key])
                raise NotImplementedError(f"{run.name}: output parameter {key}")
            return _render(run.inputs[key])

        argv = []
        for arg in [*container.get("command", []), *container.get("args", [])]:
            arg = PLACEHOLDER.sub(resolve, arg)
            arg = arg.replace("{{$}}", str(workdir / name / "executor_output.json"))
            argv.append(arg)
        run.argv = [CHARLIE if a == "charlie" else a for a in argv]

        task_env = {**os.environ, **(env or {})}
        task_env.update({e["name"]: e["value"] for e in container.get("env", [])})
        done = subprocess.run(run.argv, cwd=cwd, env=task_env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"task {name} exited {done.returncode}: {' '.join(run.argv)}\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        runs[name] = run
    return runs
