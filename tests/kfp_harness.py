"""Run a compiled KFP pipeline's container commands on this host, in the order KFP runs them.

No Docker, no Kubernetes. The root DAG and its sub-DAGs (``dsl.If``/``Elif``/``Else``, nested
pipelines) run in dependency order; a false ``triggerPolicy.condition`` (a small CEL evaluator for
what kfp emits, never Python ``eval``) skips its DAG, and a ``dsl.OneOf`` output is the first
branch that ran. Each command is resolved as KFP's driver and launcher resolve it (parameters,
artifact paths, job placeholders, ``{{$}}``), its programs (``charlie``, ``deepspeed``,
``python``) are this environment's, each PVC mount a folder under the work directory, and it runs
in a fresh copy of its image's working directory, laid out from the image's Dockerfile and the
context's ``.dockerignore`` (:func:`image_layout`). Afterwards the harness merges each artifact's
metadata from the executor output file, as the launcher does.

It proves the wiring (every declared output is written; every consumer reads what its producer,
or the branch that ran, wrote) and that each stage finds the files its image ships. It does not
prove what ``RUN`` installs or creates, resources, secrets (only their names are recorded) or
other Kubernetes settings: tests/test_kfp.py checks those as a spec.
"""

import json
import os
import posixpath
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

BIN = Path(sys.executable).parent
PROGRAMS = {name: str(BIN / name) for name in ("charlie", "deepspeed")}
PROGRAMS |= {"python": sys.executable, "python3": sys.executable}
PLACEHOLDER = re.compile(
    r"\{\{\$\.(inputs|outputs)\.(parameters|artifacts)\['([^']+)'\](?:\.(path|output_file))?\}\}"
)


@dataclass
class TaskRun:
    """What one container task was given and wrote."""

    name: str
    argv: list[str]
    dag: str = ""  # the enclosing DAG tasks, outermost first ("condition-branches-1/condition-2")
    image: str = ""
    cwd: Path | None = None  # where the last attempt ran (a copy of the image's working directory)
    inputs: dict[str, Any] = field(default_factory=dict)  # parameters, and artifacts' paths
    outputs: dict[str, Path] = field(default_factory=dict)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)  # from executor output
    volumes: dict[str, Path] = field(default_factory=dict)  # PVC mount path -> host folder
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # secret -> {env var: key}
    attempts: int = 0
    log: str = ""  # stdout and stderr of the last attempt
    seconds: float = 0.0  # wall time of every attempt, in all


class PipelineRun(dict[str, TaskRun]):
    """The container tasks that ran, by task name, in the order they ran.

    A task whose condition was false is absent; :attr:`skipped` maps it to that condition.
    """

    def __init__(self) -> None:
        super().__init__()
        self.skipped: dict[str, str] = {}


@dataclass
class _Artifact:
    path: Path
    metadata: dict[str, Any]


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


def _executor_artifact(key: str, spec: dict[str, Any], artifact: _Artifact) -> dict:
    """One runtime artifact of the executor input (a local URI: its path is the URI itself)."""
    return {"artifacts": [{"name": key, "type": spec["artifactType"], "uri": str(artifact.path),
                           "metadata": artifact.metadata}]}  # fmt: skip


def run_pipeline(
    spec_path: Path | str,
    workdir: Path,
    arguments: dict[str, Any] | None = None,
    cwd: Path | str = ".",
    env: dict[str, str] | None = None,
    retry: Collection[str] = (),
    job_id: str | None = None,
    layout: bool = True,
) -> PipelineRun:
    """Run the pipeline's DAGs, skipping false conditions; raise on the first failing command.

    Args:
        spec_path: The compiled pipeline YAML (with kfp-kubernetes' platform document, if any).
        workdir: Where output artifacts (``<workdir>/<task>/<output>``), PVCs
            (``<workdir>/pvc/<claim>``), image layouts (``<workdir>/images/<image>/app``) and the
            tasks' working directories (``<workdir>/pods/<task>``) live.
        arguments: Pipeline parameters overriding the compiled defaults.
        cwd: The images' build context (the repo root): image ``<registry>/<name>:<tag>`` is
            built from ``<cwd>/images/<name>/Dockerfile`` and ``<cwd>/.dockerignore``.
        env: Extra environment for every command (the container spec's env wins).
        retry: Tasks to run a second time after they succeed, as KFP retries a task whose pod was
            lost: same executor input and volumes, empty local output paths, a fresh working dir.
        job_id: The run's ``{{$.pipeline_job_uuid}}`` (default: a new UUID).
        layout: Run each command in its image's working directory (default). False runs every
            command in ``cwd`` itself, as the harness did before it knew the images.

    Returns:
        One :class:`TaskRun` per container task that ran, by task name (task names are unique
        across the pipeline, or this raises); skipped tasks are in ``.skipped``.
    """
    return _Runner(
        Path(spec_path), Path(workdir).absolute(), Path(cwd), env or {}, set(retry), job_id, layout
    ).run(arguments or {})


class _Runner:
    def __init__(
        self,
        spec_path: Path,
        workdir: Path,
        context: Path,
        env: dict[str, str],
        retry: set[str],
        job_id: str | None,
        layout: bool,
    ) -> None:
        pipeline, *platform = yaml.safe_load_all(spec_path.read_text(encoding="utf-8"))
        self.pipeline = pipeline
        self.components = pipeline.get("components", {})
        self.executors = pipeline["deploymentSpec"]["executors"]
        self.k8s = (
            platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
            if platform and platform[0]
            else {}
        )
        self.workdir, self.context, self.env, self.retry = workdir, context, env, retry
        self.layout = layout
        self.layouts: dict[str, Path] = {}
        self.job = {"{{$.pipeline_job_uuid}}": job_id or str(uuid.uuid4()),
                    "{{$.pipeline_job_name}}": pipeline["pipelineInfo"]["name"]}  # fmt: skip
        self.result = PipelineRun()

        names = list(self._container_tasks(pipeline["root"]))
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names not unique across the pipeline: {duplicates}")
        unknown = retry - set(names)
        if unknown:
            raise KeyError(f"retry names no task: {sorted(unknown)}")

    def _container_tasks(self, component: dict[str, Any]) -> Iterator[str]:
        for name, task in component.get("dag", {}).get("tasks", {}).items():
            child = self.components[task["componentRef"]["name"]]
            if "dag" in child:
                yield from self._container_tasks(child)
            else:
                yield name

    def run(self, arguments: dict[str, Any]) -> PipelineRun:
        root = self.pipeline["root"]
        declared = root.get("inputDefinitions", {}).get("parameters", {})
        params = {name: _value(p) for name, p in declared.items()}
        unknown = set(arguments) - set(params)
        if unknown:
            raise KeyError(f"not pipeline parameters: {sorted(unknown)}")
        params.update(arguments)
        self._dag(root, params, {}, ())
        return self.result

    # ---- DAGs -----------------------------------------------------------------------------

    def _dag(
        self,
        component: dict[str, Any],
        params: dict[str, Any],
        artifacts: dict[str, _Artifact],
        path: tuple[str, ...],
    ) -> dict[str, _Artifact]:
        """Run one DAG's tasks in dependency order; return its output artifacts that resolved.

        A task that only depends on (``.after``) a skipped sibling still runs; one that reads a
        skipped task's output raises.
        """
        dag = component["dag"]
        tasks = dag["tasks"]
        order = TopologicalSorter({n: t.get("dependentTasks", []) for n, t in tasks.items()})
        produced: dict[str, dict[str, _Artifact] | None] = {}  # None: skipped
        for name in order.static_order():
            task = tasks[name]
            for unsupported in ("iteratorPolicy", "parameterIterator", "artifactIterator"):
                if unsupported in task:
                    raise NotImplementedError(f"{name}: {unsupported} (dsl.ParallelFor)")
            strategy = task.get("triggerPolicy", {}).get("strategy", "ALL_UPSTREAM_TASKS_SUCCEEDED")
            if strategy != "ALL_UPSTREAM_TASKS_SUCCEEDED":
                raise NotImplementedError(f"{name}: trigger strategy {strategy}")
            sources = task.get("inputs", {}).get("parameters", {})
            task_params = {key: self._parameter(name, src, params) for key, src in sources.items()}
            for key, source in sources.items():  # f"{param}/x": the driver fills it in
                if "runtimeValue" in source and isinstance(task_params[key], str):
                    task_params[key] = PLACEHOLDER.sub(
                        lambda m, p=task_params: _render(p[m.group(3)]), task_params[key]
                    )
            task_artifacts = {
                key: self._input_artifact(name, source, artifacts, produced)
                for key, source in task.get("inputs", {}).get("artifacts", {}).items()
            }
            child = self.components[task["componentRef"]["name"]]
            condition = task.get("triggerPolicy", {}).get("condition")
            if condition and not evaluate_condition(condition, task_params):
                produced[name] = None
                for skipped in self._container_tasks(child) if "dag" in child else [name]:
                    self.result.skipped[skipped] = condition
                continue
            if "dag" in child:
                produced[name] = self._dag(child, task_params, task_artifacts, (*path, name))
            else:
                produced[name] = self._container(
                    name, child, task_params, task_artifacts, params, "/".join(path)
                )

        if dag.get("outputs", {}).get("parameters"):
            raise NotImplementedError(
                f"DAG output parameters: {sorted(dag['outputs']['parameters'])}"
            )
        outputs = {}
        for key, spec in dag.get("outputs", {}).get("artifacts", {}).items():
            for selector in spec["artifactSelectors"]:  # OneOf: the first branch that ran
                ran = produced.get(selector["producerSubtask"])
                if ran is not None and selector["outputArtifactKey"] in ran:
                    outputs[key] = ran[selector["outputArtifactKey"]]
                    break
        return outputs

    def _parameter(self, task: str, source: dict[str, Any], params: dict[str, Any]) -> Any:
        if "componentInputParameter" in source:
            return params[source["componentInputParameter"]]
        if "runtimeValue" in source:
            value = _value(source["runtimeValue"])
            if isinstance(value, str):  # dsl.PIPELINE_JOB_ID_PLACEHOLDER and the like, anywhere
                for placeholder, job_value in {
                    **self.job,
                    "{{$.pipeline_task_name}}": task,
                }.items():
                    value = value.replace(placeholder, job_value)
            return value
        raise NotImplementedError(f"{task}: parameter source {source}")

    @staticmethod
    def _input_artifact(
        task: str,
        source: dict[str, Any],
        artifacts: dict[str, _Artifact],
        produced: dict[str, dict[str, _Artifact] | None],
    ) -> _Artifact:
        if "componentInputArtifact" in source:
            key = source["componentInputArtifact"]
            if key not in artifacts:
                raise KeyError(
                    f"{task}: input artifact {key!r} was not produced: no branch of its OneOf ran"
                )
            return artifacts[key]
        if "taskOutputArtifact" in source:
            producer = source["taskOutputArtifact"]["producerTask"]
            key = source["taskOutputArtifact"]["outputArtifactKey"]
            outputs = produced[producer]
            if outputs is None or key not in outputs:
                raise KeyError(
                    f"{task}: {producer} produced no {key!r}: skipped, or no branch of its OneOf ran"
                )
            return outputs[key]
        raise NotImplementedError(f"{task}: artifact source {source}")

    # ---- container tasks ------------------------------------------------------------------

    def _container(
        self,
        name: str,
        component: dict[str, Any],
        params: dict[str, Any],
        artifacts: dict[str, _Artifact],
        scope: dict[str, Any],
        dag_path: str,
    ) -> dict[str, _Artifact]:
        """Run one executor; ``scope`` is the enclosing DAG's parameters (the platform config's)."""
        label = component["executorLabel"]
        container = self.executors[label]["container"]
        platform = self.k8s.get(label, {})
        run = TaskRun(name=name, argv=[], dag=dag_path, image=container.get("image", ""))
        declared_params = component.get("inputDefinitions", {}).get("parameters", {})
        declared_in = component.get("inputDefinitions", {}).get("artifacts", {})
        declared_out = component.get("outputDefinitions", {}).get("artifacts", {})
        if component.get("outputDefinitions", {}).get("parameters"):
            raise NotImplementedError(f"{name}: output parameters")
        output_file = self.workdir / name / "executor_output.json"

        executor_input: dict[str, Any] = {
            "inputs": {"parameterValues": {}, "artifacts": {}},
            "outputs": {"artifacts": {}, "outputFile": str(output_file)},
        }
        for key, spec in declared_params.items():  # the driver fills the component's defaults
            if key not in params and "defaultValue" in spec:
                params = {**params, key: spec["defaultValue"]}
        for key, value in params.items():
            run.inputs[key] = value
            executor_input["inputs"]["parameterValues"][key] = value
        for key, artifact in artifacts.items():
            run.inputs[key] = artifact.path
            executor_input["inputs"]["artifacts"][key] = _executor_artifact(
                key, declared_in[key], artifact
            )
        for key, spec in declared_out.items():
            run.outputs[key] = self.workdir / name / key
            executor_input["outputs"]["artifacts"][key] = _executor_artifact(
                key, spec, _Artifact(run.outputs[key], {})
            )

        def resolve(match: re.Match[str]) -> str:
            side, kind, key, _ = match.groups()
            if side == "outputs":
                if kind == "artifacts":
                    return str(run.outputs[key])
                raise NotImplementedError(f"{name}: output parameter {key}")
            return _render(run.inputs[key])

        for mount in platform.get("pvcMount", []):
            claim = self._platform_parameter(name, mount, "pvcNameParameter", scope)
            run.volumes[mount["mountPath"]] = self.workdir / "pvc" / claim
            run.volumes[mount["mountPath"]].mkdir(parents=True, exist_ok=True)  # the claim exists
        for secret in platform.get("secretAsEnv", []):
            secret_name = self._platform_parameter(name, secret, "secretNameParameter", scope)
            run.secrets[secret_name] = {e["envVar"]: e["secretKey"] for e in secret["keyToEnv"]}

        def localise(text: str) -> str:
            for mount_path, host_path in run.volumes.items():
                text = text.replace(mount_path, str(host_path))
            return text

        argv = []
        for arg in [*container.get("command", []), *container.get("args", [])]:
            arg = localise(PLACEHOLDER.sub(resolve, arg))
            argv.append(arg.replace("{{$}}", json.dumps(executor_input)))
        run.argv = [PROGRAMS.get(a, a) for a in argv]
        if argv and argv[0] == "deepspeed" and not any(a.startswith("--master_port") for a in argv):
            # A pod has a network namespace of its own; on one host, the launcher's default port
            # (29500) is every other launcher's too: two tests at once (pytest-xdist) would clash.
            run.argv.insert(1, f"--master_port={_free_port()}")
        task_env = {**os.environ, **self.env}
        task_env.update({e["name"]: localise(e["value"]) for e in container.get("env", [])})

        for attempt in range(1 + (name in self.retry)):
            _fresh_outputs(run, output_file)
            run.cwd = self._pod_dir(name, run.image)
            run.attempts = attempt + 1
            started = time.monotonic()
            done = subprocess.run(
                run.argv, cwd=run.cwd, env=task_env, capture_output=True, text=True
            )
            run.seconds += time.monotonic() - started
            run.log = done.stdout + done.stderr
            if done.returncode != 0:
                raise RuntimeError(
                    f"task {name} exited {done.returncode} (attempt {run.attempts}) in {run.cwd}: "
                    f"{' '.join(run.argv)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
                )
        run.metadata = _merge_executor_output(run, output_file)
        self.result[name] = run
        return {
            key: _Artifact(path, run.metadata.get(key, {})) for key, path in run.outputs.items()
        }

    def _platform_parameter(
        self, task: str, spec: dict[str, Any], parameter: str, params: dict[str, Any]
    ) -> str:
        """A PVC's or secret's name: ``<x>NameParameter``, else the older constant/input forms."""
        source = spec.get(parameter)
        if source is not None:
            value = self._parameter(task, source, params)
        elif "constant" in spec:
            value = spec["constant"]
        elif "componentInputParameter" in spec:
            value = params[spec["componentInputParameter"]]
        elif "secretName" in spec:
            value = spec["secretName"]
        else:
            raise NotImplementedError(f"{task}: platform config {spec}")
        return str(value)

    def _pod_dir(self, task: str, image: str) -> Path:
        """A fresh copy of the image's working directory for one attempt (or the context)."""
        if not self.layout:
            return self.context
        name = image_name(image)
        if name not in self.layouts:
            dockerfile = self.context / "images" / name / "Dockerfile"
            if not dockerfile.is_file():
                raise FileNotFoundError(f"{task}: image {image!r} has no {dockerfile}")
            self.layouts[name] = image_layout(
                dockerfile, self.context, self.workdir / "images" / name / "app"
            )
        pod = self.workdir / "pods" / task
        if pod.exists():
            shutil.rmtree(pod)
        shutil.copytree(self.layouts[name], pod)
        return pod


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


# ---- trigger conditions ---------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+\.\d*(?:[eE][+-]?\d+)?|\d+(?:[eE][+-]?\d+)?)"
    r"|(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
    r"|(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)"
    r"|(?P<op>&&|\|\||==|!=|<=|>=|[<>!()\[\]-]))"
)
_COMPARE = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    raise TypeError(f"condition operand {value!r}: not a bool, number or string")


def evaluate_condition(condition: str, parameter_values: dict[str, Any]) -> bool:
    """Evaluate a ``triggerPolicy.condition`` (the CEL subset kfp emits) against a task's inputs.

    Supports ``inputs.parameter_values['key']``, string/number/``true``/``false`` literals,
    ``int()``, ``double()``, ``string()``, ``== != < > <= >=``, ``! && ||``, unary ``-`` and
    parentheses. Operand types are checked as CEL does (no string-to-number comparison).
    """
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(condition):
        if condition[pos:].strip() == "":
            break
        match = _TOKEN.match(condition, pos)
        if not match:
            raise ValueError(f"condition {condition!r}: cannot parse at {condition[pos:]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    tokens.append(("end", ""))
    at = 0

    def peek() -> tuple[str, str]:
        return tokens[at]

    def take(expected: str | None = None) -> tuple[str, str]:
        nonlocal at
        token = tokens[at]
        if expected is not None and token[1] != expected:
            raise ValueError(f"condition {condition!r}: expected {expected!r}, got {token[1]!r}")
        at += 1
        return token

    def boolean(value: Any, op: str) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"condition {condition!r}: {op} of non-bool {value!r}")
        return value

    def disjunction() -> Any:
        value = conjunction()
        while peek() == ("op", "||"):
            take()
            right = conjunction()  # both sides are evaluated: a typo fails either way
            value = boolean(value, "||") | boolean(right, "||")
        return value

    def conjunction() -> Any:
        value = relation()
        while peek() == ("op", "&&"):
            take()
            right = relation()
            value = boolean(value, "&&") & boolean(right, "&&")
        return value

    def relation() -> Any:
        left = unary()
        if peek()[0] == "op" and peek()[1] in _COMPARE:
            op = take()[1]
            right = unary()
            kinds = {_kind(left), _kind(right)}
            if len(kinds) != 1 or (kinds == {"bool"} and op not in ("==", "!=")):
                raise TypeError(f"condition {condition!r}: no overload {left!r} {op} {right!r}")
            return _COMPARE[op](left, right)
        return left

    def unary() -> Any:
        if peek() == ("op", "!"):
            take()
            return not boolean(unary(), "!")
        if peek() == ("op", "-"):
            take()
            value = unary()
            if _kind(value) != "number":
                raise TypeError(f"condition {condition!r}: -{value!r}")
            return -value
        return primary()

    def primary() -> Any:
        kind, text = take()
        if kind == "num":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "str":
            return re.sub(r"\\(.)", r"\1", text[1:-1])
        if kind == "op" and text == "(":
            value = disjunction()
            take(")")
            return value
        if kind == "name":
            if text in ("true", "false"):
                return text == "true"
            if text == "inputs.parameter_values":
                take("[")
                key_kind, key = take()
                if key_kind != "str":
                    raise ValueError(f"condition {condition!r}: parameter key {key!r}")
                take("]")
                key = key[1:-1]
                if key not in parameter_values:
                    raise KeyError(f"condition {condition!r}: no input parameter {key!r}")
                return parameter_values[key]
            if text in ("int", "double", "string"):
                take("(")
                value = disjunction()
                take(")")
                return _convert(condition, text, value)
        raise ValueError(f"condition {condition!r}: unexpected {text!r}")

    value = disjunction()
    if peek()[0] != "end":
        raise ValueError(f"condition {condition!r}: trailing {peek()[1]!r}")
    return boolean(value, "condition")


def _convert(condition: str, function: str, value: Any) -> Any:
    kind = _kind(value)
    if function == "string":
        return _render(value) if kind != "number" or isinstance(value, int) else repr(value)
    if kind == "bool":
        raise TypeError(f"condition {condition!r}: no overload {function}({value!r})")
    if function == "int":
        return int(value) if kind == "number" else int(value.strip())  # CEL truncates doubles
    return float(value)


# ---- image layouts ----------------------------------------------------------------------------


def image_name(image: str) -> str:
    """``<registry>/<name>:<tag>`` (or ``@sha256:...``) -> ``<name>``."""
    return image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]


class DockerIgnore:
    """A context's ``.dockerignore`` read and matched as Docker does (moby's patternmatcher).

    Comment lines (``#`` first) and blank lines are dropped, each pattern is cleaned
    (``configs/`` is ``configs``), ``*``/``?`` stop at ``/``, ``**`` spans directories, and the
    last pattern that matches a path or one of its parent directories wins (``!`` re-includes).
    """

    def __init__(self, context: Path) -> None:
        self.patterns: list[tuple[bool, str, re.Pattern[str]]] = []
        path = context / ".dockerignore"
        lines = path.read_text(encoding="utf-8-sig").splitlines() if path.is_file() else []
        for line in lines:
            if line.startswith("#") or not line.strip():
                continue
            line = line.strip()
            include = line.startswith("!")
            text = line[1:].strip() if include else line
            if text:
                text = posixpath.normpath(text)
                text = text.lstrip("/") if len(text) > 1 else text
            self.patterns.append((include, text, re.compile(_pattern_regex(text))))

    def ignored(self, rel: str) -> bool:
        """Whether the context path ``rel`` (``a/b/c``) is left out of the build context."""
        if rel in ("", "."):
            return False
        parts = rel.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        ignored = False
        for include, _, regex in self.patterns:
            if any(regex.match(c) for c in candidates):
                ignored = not include
        return ignored

    def may_reinclude_under(self, rel_dir: str) -> bool:
        """Whether some ``!`` pattern could match below ``rel_dir`` (else an ignored dir is pruned)."""
        for include, text, _ in self.patterns:
            prefix = re.split(r"[*?\[\\]", text, maxsplit=1)[0]
            if include and (prefix.startswith(rel_dir + "/") or (rel_dir + "/").startswith(prefix)):
                return True
        return False


def _pattern_regex(pattern: str) -> str:
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise ValueError(f".dockerignore pattern {pattern!r}: unclosed [")
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body[0] in "!^" else body) + "]"
            i = end
        else:
            out += re.escape(ch)
        i += 1
    return out + "$"


def _context_tree(root: Path, rel: str, ignore: DockerIgnore) -> tuple[list[str], list[str]]:
    """The files and directories at or under ``rel`` that the filtered build context holds.

    A directory is held when it is not ignored or holds something that is not (Docker sends
    the parents of a re-included file).
    """
    start = root / rel
    if not start.is_dir():
        return ([rel] if start.exists() and not ignore.ignored(rel) else []), []
    files, dirs = [], set()
    for current, subdirs, names in os.walk(start):
        here = _rel(Path(current), root)
        subdirs[:] = [
            d
            for d in sorted(subdirs)
            if not ignore.ignored(_join(here, d)) or ignore.may_reinclude_under(_join(here, d))
        ]
        if not ignore.ignored(here):
            dirs.add(here)
        for name in sorted(names):
            if not ignore.ignored(_join(here, name)):
                files.append(_join(here, name))
    for held in [*files, *list(dirs)]:
        parent = posixpath.dirname(held)
        while parent and (rel == "." or parent == rel or parent.startswith(rel + "/")):
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    if rel == "." and (files or dirs):
        dirs.add(".")
    return files, sorted(dirs)


def _join(parent: str, name: str) -> str:
    return name if parent in ("", ".") else f"{parent}/{name}"


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comment lines dropped, continuation lines joined."""
    lines = dockerfile.read_text(encoding="utf-8").splitlines()
    for line in lines:
        if not line.startswith("#"):
            break
        if re.match(r"#\s*escape\s*=", line):
            raise NotImplementedError(f"{dockerfile}: escape directive")
    out, current = [], ""
    for line in [*lines, ""]:
        if line.strip().startswith("#") or (not line.strip() and current):
            continue  # comments, and blank lines inside a continuation, are dropped
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current = (current + line).strip()
        if current:
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
        current = ""
    return out


_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::-([^}]*))?\}|(\w+))")


def _expand(text: str, variables: dict[str, str], where: str) -> str:
    """``$NAME``, ``${NAME}`` and ``${NAME:-default}`` from the ARGs and ENVs seen so far."""

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1) or match.group(3), match.group(2)
        if name in variables:
            return variables[name]
        if default is not None:
            return default
        raise NotImplementedError(f"{where}: no value for ${name}")

    return _VARIABLE.sub(sub, text)


def _assignments(rest: str) -> dict[str, str]:
    return {k: v.strip("\"'") for k, v in re.findall(r"(\w+)=(\"[^\"]*\"|'[^']*'|\S*)", rest)}


def image_layout(dockerfile: Path, context: Path, dest: Path) -> Path:
    """Materialise the final stage's WORKDIR under ``dest``: what its COPYs from the context put there.

    Reads the Dockerfile's last stage (and the earlier stages it is built ``FROM``): ``WORKDIR``
    and ``COPY`` without ``--from=`` (``--chown=`` and the like ignored), with Docker's rules (a
    directory source copies its contents; a file goes into a destination that ends in ``/``, is
    ``.`` or an existing directory, else becomes it; several sources need a directory), every
    file filtered through ``<context>/.dockerignore``. ``RUN`` is not executed, ``ADD`` is
    refused, and files copied outside the final WORKDIR are left out. A source the filtered
    context lacks raises, as ``docker build`` fails. Returns ``dest`` (copies, not links).
    """
    ignore = DockerIgnore(context)
    root = context.resolve()
    stages: list[tuple[str | None, str, list[tuple[str, str]]]] = []  # (alias, base, body)
    global_args: dict[str, str] = {}
    for word, rest in _instructions(dockerfile):
        if word == "FROM":
            parts = [p for p in rest.split() if not p.startswith("--")]
            base = _expand(parts[0], global_args, f"{dockerfile}: FROM {rest}")
            alias = parts[2].lower() if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append((alias, base.lower(), []))
        elif stages:
            stages[-1][2].append((word, rest))
        elif word == "ARG":
            global_args.update(_assignments(rest))
    if not stages:
        raise ValueError(f"{dockerfile}: no FROM")

    def build(index: int) -> tuple[dict[PurePosixPath, Path | None], PurePosixPath]:
        """A stage's files from the context (image path -> source, None: a directory)."""
        _, base, body = stages[index]
        earlier = [i for i in range(index) if stages[i][0] == base]
        files, workdir = build(earlier[-1]) if earlier else ({}, PurePosixPath("/"))
        files = dict(files)
        variables = dict(global_args)
        for word, rest in body:
            where = f"{dockerfile}: {word} {rest}"
            if word in ("ARG", "ENV"):
                variables.update(_assignments(rest))
            elif word == "WORKDIR":
                workdir = _image_path(workdir, _expand(rest.strip("\"' "), variables, where))
                files[workdir] = None
            elif word == "ADD":
                raise NotImplementedError(f"{where}: ADD is not modelled (use COPY)")
            elif word == "COPY":
                words = _words(_expand(rest, variables, where))
                flags = [w for w in words if w.startswith("--")]
                if any(f.startswith("--from") for f in flags):
                    continue  # from another stage or image, not from the context
                if any(f.startswith(("--parents", "--exclude")) for f in flags):
                    raise NotImplementedError(f"{where}: {flags}")
                *sources, target = [w for w in words if not w.startswith("--")]
                _copy(sources, target, workdir, files, root, ignore, where)
        return files, workdir

    files, workdir = build(len(stages) - 1)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for path, source in sorted(files.items()):
        if workdir not in path.parents:
            continue  # the workdir itself is dest; elsewhere is out of the commands' reach
        local = dest / path.relative_to(workdir)
        if source is None:
            local.mkdir(parents=True, exist_ok=True)
        else:
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, local)
    return dest


def _words(rest: str) -> list[str]:
    return [str(w) for w in json.loads(rest)] if rest.startswith("[") else rest.split()


def _image_path(workdir: PurePosixPath, path: str) -> PurePosixPath:
    return PurePosixPath(posixpath.normpath(posixpath.join(str(workdir), path)))


def _copy(
    sources: list[str],
    target: str,
    workdir: PurePosixPath,
    files: dict[PurePosixPath, Path | None],
    root: Path,
    ignore: DockerIgnore,
    where: str,
) -> None:
    """One COPY from the filtered context into a stage's files."""
    if not sources:
        raise ValueError(f"{where}: no source")
    destination = _image_path(workdir, target)
    matched: list[tuple[str, list[str], list[str]]] = []  # (source, files, directories)
    for source in sources:
        normal = posixpath.normpath(source.lstrip("/") or ".")
        if normal == ".." or normal.startswith("../"):
            raise ValueError(f"{where}: {source} is outside the build context")
        hits = (
            sorted(_rel(p, root) for p in root.glob(normal))
            if re.search(r"[*?[]", normal)
            else [normal]
        )
        found = [(hit, *_context_tree(root, hit, ignore)) for hit in hits]
        found = [(hit, fs, ds) for hit, fs, ds in found if fs or ds]
        if not found:
            raise FileNotFoundError(f"{where}: {source} is not in the build context")
        matched += found
    into = target.endswith("/") or target in (".", "./") or files.get(destination, "") is None
    if len(matched) > 1 and not into:
        raise ValueError(f"{where}: several sources need a directory destination (ending in /)")

    def add(path: PurePosixPath, source: Path | None) -> None:
        for parent in path.parents:
            files.setdefault(parent, None)
        files[path] = source

    for hit, hit_files, hit_dirs in matched:
        if (root / hit).is_dir():  # its contents, not the directory itself
            for rel in hit_dirs:
                add(_image_path(destination, posixpath.relpath(rel, hit)), None)
            for rel in hit_files:
                add(_image_path(destination, posixpath.relpath(rel, hit)), root / rel)
        else:
            add(destination / posixpath.basename(hit) if into else destination, root / hit)
