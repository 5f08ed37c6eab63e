"""The compiled SFT pipeline package: compiling it when stale, its parameters, version names.

The pipeline is wired in ``pipelines/sft_pipeline.py`` (its components in ``components/``) and
compiled, by :func:`compile_pipeline` only, to the committed ``pipelines/sft_pipeline.yaml``;
both paths are relative to the repository root. Needs the ``kfp`` extra to compile and PyYAML
to read a package; both are imported when used, so importing this module stays light.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from charlie.errors import CharlieError
from charlie.gitinfo import git_state

PIPELINE_MODULE = "pipelines.sft_pipeline"
PIPELINE_SOURCE = Path("pipelines") / "sft_pipeline.py"
PIPELINE_YAML = Path("pipelines") / "sft_pipeline.yaml"
COMPONENTS = Path("components")


def repo_root() -> Path:
    """The directory holding pipelines/sft_pipeline.py: the working directory, else the checkout."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (candidate / PIPELINE_SOURCE).is_file():
            return candidate
    raise CharlieError(
        f"no {PIPELINE_SOURCE} here or in the charlie checkout; run from the repository root "
        "or pass --package."
    )


def needs_compile(root: Path) -> bool:
    """True when the compiled YAML is missing or older than its pipeline or any component."""
    target = root / PIPELINE_YAML
    if not target.is_file():
        return True
    built = target.stat().st_mtime
    sources = [root / PIPELINE_SOURCE, *sorted((root / COMPONENTS).rglob("*.py"))]
    return any(p.is_file() and p.stat().st_mtime > built for p in sources)


def compile_pipeline(root: Path, target: Path | None = None) -> Path:
    """Compile pipelines.sft_pipeline (under ``root``) to ``target``; returns ``target``.

    ``target`` defaults to the committed ``root/pipelines/sft_pipeline.yaml``.
    """
    from kfp import compiler

    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module(PIPELINE_MODULE)
    target = root / PIPELINE_YAML if target is None else Path(target)
    compiler.Compiler().compile(pipeline_func=module.sft_pipeline, package_path=str(target))
    return target


def _spec(package: Path) -> dict[str, Any]:
    """The pipeline spec: the first YAML document of a compiled package."""
    import yaml

    try:
        docs = list(yaml.safe_load_all(package.read_text(encoding="utf-8")))
    except yaml.YAMLError as exc:
        raise CharlieError(f"{package} is not a compiled pipeline YAML ({exc}).") from exc
    return docs[0] if docs and isinstance(docs[0], dict) else {}


def pipeline_parameters(package: Path) -> dict[str, str]:
    """Parameter name → KFP type (STRING, BOOLEAN, NUMBER_INTEGER, ...) from a compiled YAML."""
    params = _spec(package).get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {name: str(d.get("parameterType", "STRING")) for name, d in (params or {}).items()}


def pipeline_name(package: Path) -> str:
    """The compiled pipeline's own name (pipelineInfo.name): the launcher's folder for runs."""
    return _spec(package)["pipelineInfo"]["name"]


def parse_params(items: list[str], known: dict[str, str]) -> dict[str, Any]:
    """Turn NAME=VALUE strings into typed values checked against the pipeline's parameters.

    A STRING parameter takes VALUE as written; the others JSON-decode it (true/false, numbers).
    """
    allowed = ", ".join(sorted(known)) or "none"
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CharlieError(f"--param {item!r} is not NAME=VALUE; parameters: {allowed}.")
        if name not in known:
            raise CharlieError(
                f"--param {name} is not a parameter of the pipeline; parameters: {allowed}."
            )
        kind = known[name]
        if kind == "STRING":
            out[name] = raw
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        ok = {
            "BOOLEAN": isinstance(value, bool),
            "NUMBER_INTEGER": isinstance(value, int) and not isinstance(value, bool),
            "NUMBER_DOUBLE": isinstance(value, (int, float)) and not isinstance(value, bool),
            "LIST": isinstance(value, list),
            "STRUCT": isinstance(value, dict),
        }.get(kind, True)
        if not ok:
            raise CharlieError(f"--param {name}={raw} is not a valid {kind} value.")
        out[name] = value
    return out


def version_name(root: Path | None) -> str:
    """<git short hash>[-dirty]-<UTC timestamp>; 'nogit' when there is no git checkout."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    state = git_state(root)
    commit = state["commit"][:7] if state["commit"] else "nogit"
    return f"{commit}{'-dirty' if state['dirty'] else ''}-{stamp}"
