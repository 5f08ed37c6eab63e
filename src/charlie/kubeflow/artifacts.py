"""A finished run's artifacts in S3-compatible storage: its metrics files and its model.

The KFP launcher writes a run's outputs under ``<pipeline root>/<pipeline name>/<run id>/``,
one folder per task and output. :func:`fetch_metrics` downloads the metrics files dvc.yaml
declares from there into their workspace paths, so ``dvc metrics diff`` compares the run with
the committed metrics. :func:`fetch_model` downloads the trained model (the ``model`` output
of ``train``, or of ``train-job`` for multi-node runs) into a folder with ``kfp_run.json``
beside it, and :func:`dvc_track` puts that folder under DVC. boto3 (imported when fetching) reads the store: credentials from
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, the endpoint from AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from charlie import headlines
from charlie.errors import CharlieError
from charlie.headlines import headline_path, write_headline
from charlie.io import atomic_directory, atomic_outputs

log = logging.getLogger(__name__)

DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"  # KFP's, when a run names none
# A stage's detailed report, as dvc.yaml writes its path (${section.key} comes from
# params.yaml) ← (task, output artifact, file inside it; "" when the artifact is the file).
RUN_METRICS = {
    "${parse.report}": ("parse", "report", ""),
    "${dataset.card}": ("dataset", "card", "dataset_card.json"),
    "results/eval_metrics.json": ("evaluate", "results", "eval_metrics.json"),
    "backtests/baseline_metrics.json": ("backtest", "portfolio", "baseline_metrics.json"),
    # the GRPO model's, and the comparison: only a run_grpo=true run has them
    "results/grpo/eval_metrics.json": ("evaluate-2", "results", "eval_metrics.json"),
    "backtests/grpo/baseline_metrics.json": ("backtest-2", "portfolio", "baseline_metrics.json"),
    "results/compare/comparison.json": ("compare", "comparison", "comparison.json"),
}
OPTIONAL_METRICS = {"results/grpo/eval_metrics.json", "backtests/grpo/baseline_metrics.json",
                    "results/compare/comparison.json"}  # fmt: skip
"""Fetched when the run has them (Phase 2 ran), left alone otherwise."""
# Each report's headline (the `metrics:` file of dvc.yaml, beside it): its name and the
# charlie.headlines function that derives it, so a fetched run is compared as a local one is.
RUN_HEADLINES = {
    "${parse.report}": ("parse", headlines.parse),
    "${dataset.card}": ("dataset", headlines.dataset),
    "results/eval_metrics.json": ("eval", headlines.evaluate),
    "backtests/baseline_metrics.json": ("baseline", headlines.backtest),
    "results/grpo/eval_metrics.json": ("eval", headlines.evaluate),
    "backtests/grpo/baseline_metrics.json": ("baseline", headlines.backtest),
    "results/compare/comparison.json": ("compare", headlines.compare),
}


MODEL_TASKS = ("train", "train-job")  # tasks whose `model` output is the trained model
MODEL_OUTPUT = "model"
RUN_RECORD = "kfp_run.json"  # written into a fetched model's folder


def bucket_and_prefix(uri: str, flag: str = "--fetch-metrics") -> tuple[str, str]:
    """(bucket, key prefix) of an s3:// or minio:// pipeline root."""
    scheme, sep, rest = uri.split("?")[0].partition("://")  # a query is not part of the keys
    if not sep or scheme not in ("s3", "minio") or not rest.strip("/"):
        raise CharlieError(
            f"{flag} reads S3-compatible storage; pipeline root {uri!r} is not an "
            "s3:// or minio:// URI."
        )
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def run_metric_keys(keys: list[str], run_prefix: str) -> dict[str, str]:
    """Workspace path → object key, for the RUN_METRICS files among a run's artifact keys.

    The KFP launcher writes an output to <run prefix>/<task>/<output> (newer versions may put
    an execution folder between the two), so the match allows one extra folder.
    """
    found: dict[str, str] = {}
    for path, (task, output, file) in RUN_METRICS.items():
        inside = f"/{re.escape(file)}" if file else ""
        pattern = re.compile(
            rf"^{re.escape(run_prefix)}/{re.escape(task)}/(?:[^/]+/)?{re.escape(output)}{inside}$"
        )
        matches = sorted(k for k in keys if pattern.match(k))
        if matches:
            found[path] = matches[-1]
    return found


def workspace_path(template: str, params: Any) -> str:
    """A dvc.yaml path with its ``${section.key}`` references filled from params.yaml."""
    return re.sub(
        r"\$\{(\w+)\.(\w+)\}", lambda m: str(getattr(getattr(params, m[1]), m[2])), template
    )


def fetch_metrics(
    pipeline_root: str, pipeline_name: str, run_id: str, dest: Path, params: Any
) -> list[Path]:
    """Download a finished run's metrics files into their workspace paths under ``dest``.

    All or nothing: a CharlieError names the files the run lacks, and then none is written.
    """
    import boto3
    import botocore.exceptions

    bucket, root = bucket_and_prefix(pipeline_root)
    run_prefix = "/".join(p for p in (root, pipeline_name, run_id) if p)
    where = f"{pipeline_root.split('?')[0].rstrip('/')}/{pipeline_name}/{run_id}/"
    s3 = boto3.client("s3")
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=run_prefix + "/")
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        found = run_metric_keys(keys, run_prefix)
        missing = [m for m in RUN_METRICS if m not in found and m not in OPTIONAL_METRICS]
        if missing:
            wanted = ", ".join("/".join(x for x in RUN_METRICS[m] if x) for m in missing)
            raise CharlieError(f"the run's artifacts under {where} hold no {wanted}.")
        paths = [dest / workspace_path(path, params) for path in found]
        heads = [headline_path(p, RUN_HEADLINES[m][0]) for p, m in zip(paths, found, strict=True)]
        with atomic_outputs(*paths, *heads) as temps:
            for i, (path, key) in enumerate(found.items()):
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                temps[i].write_bytes(body)
                write_headline(temps[len(paths) + i], _headline(body, key, RUN_HEADLINES[path][1]))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        log.debug("fetch failed", exc_info=True)
        raise CharlieError(f"cannot read the run's artifacts under {where}: {exc}.") from None
    for path, key in zip(paths, found.values(), strict=True):
        log.info("fetched %s from %s", path, key)
    return paths + heads


def _headline(body: bytes, key: str, derive: Any) -> dict[str, Any]:
    """The headline ``derive`` reads from a fetched report, or one sentence when it cannot."""
    try:
        return derive(json.loads(body))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise CharlieError(
            f"the run's {key} is not the report a Charlie stage writes: no headline in it."
        ) from None


def model_prefix(objects: list[dict[str, Any]], run_prefix: str) -> tuple[str, str] | None:
    """(task, key prefix ending in /) of the run's trained model, or None when it has none.

    The ``model`` output of ``train`` or ``train-job`` (a pipeline holds both; a run produces
    one), at ``<run>/<task>/model/`` or, from newer launchers, ``<run>/<task>/<execution>/
    model/``. When several are there (a retried execution), the most recently written wins.
    """
    newest: dict[tuple[str, str], Any] = {}
    for obj in objects:
        key = obj["Key"]
        for task in MODEL_TASKS:
            base = f"{run_prefix}/{task}/"
            if not key.startswith(base):
                continue
            rest = key[len(base) :]
            if rest.startswith(f"{MODEL_OUTPUT}/"):
                prefix = f"{base}{MODEL_OUTPUT}/"
            else:
                execution, _, inner = rest.partition("/")
                if not inner.startswith(f"{MODEL_OUTPUT}/"):
                    continue
                prefix = f"{base}{execution}/{MODEL_OUTPUT}/"
            stamp = obj["LastModified"].timestamp() if obj.get("LastModified") else 0.0
            if (task, prefix) not in newest or stamp > newest[(task, prefix)]:
                newest[(task, prefix)] = stamp
    if not newest:
        return None
    return max(newest, key=lambda k: (newest[k], -len(k[1])))


def fetch_model(
    pipeline_root: str, pipeline_name: str, run_id: str, dest: Path, record: dict[str, Any]
) -> dict[str, Any]:
    """Download a finished run's trained model into ``dest`` with ``kfp_run.json`` in it.

    ``kfp_run.json`` is ``record`` plus ``task``, ``model_artifact`` (its URI) and ``data``:
    the parse report's ``source`` ({"kind", "uri", "version"}: which data the run read), or
    null when the report has none. All or nothing: ``dest`` is replaced once complete.

    Returns:
        What kfp_run.json holds.
    """
    import boto3
    import botocore.exceptions

    from charlie.sources import s3_download

    bucket, root = bucket_and_prefix(pipeline_root, "--fetch-model")
    run_prefix = "/".join(p for p in (root, pipeline_name, run_id) if p)
    scheme = pipeline_root.split("://")[0]
    where = f"{pipeline_root.split('?')[0].rstrip('/')}/{pipeline_name}/{run_id}/"
    s3 = boto3.client("s3")
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=run_prefix + "/")
        objects = [o for page in pages for o in page.get("Contents", [])]
        found = model_prefix(objects, run_prefix)
        if found is None:
            raise CharlieError(
                f"the run's artifacts under {where} hold no trained model (the {MODEL_OUTPUT} "
                f"output of {' or '.join(MODEL_TASKS)})."
            )
        task, prefix = found
        source = _parse_source(s3, bucket, [o["Key"] for o in objects], run_prefix)
        written = {**record, "task": task, "model_artifact": f"{scheme}://{bucket}/{prefix}",
                   "data": source}  # fmt: skip
        with atomic_directory(dest) as tmp:  # the same store: s3:// and minio:// alike
            copied = s3_download(f"s3://{bucket}/{prefix}", tmp, tree=False)
            (tmp / RUN_RECORD).write_text(json.dumps(written, indent=2) + "\n", encoding="utf-8")
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        log.debug("fetch failed", exc_info=True)
        raise CharlieError(f"cannot read the run's artifacts under {where}: {exc}.") from None
    log.info("fetched %d files of %s's model from %s into %s", copied.version["objects"], task,
             prefix, dest)  # fmt: skip
    return written


def _parse_source(s3: Any, bucket: str, keys: list[str], run_prefix: str) -> Any:
    """The parse report's ``source`` (which data the run read), or None."""
    key = run_metric_keys(keys, run_prefix).get("${parse.report}")
    if key is None:
        return None
    try:
        report = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ValueError:
        log.warning("the run's parse report %s is not JSON: no data version recorded", key)
        return None
    return report.get("source") if isinstance(report, dict) else None


def dvc_root(path: Path) -> Path:
    """The DVC workspace holding ``path`` (the nearest folder above it with .dvc/)."""
    start = Path(path).resolve().parent
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    raise CharlieError(
        f"DVC is not initialised in {start} or above it; run `dvc init` in the git checkout "
        "(or fetch the model into one)."
    )


def dvc_executable() -> str:
    """The ``dvc`` command: on PATH, else beside this Python."""
    found = shutil.which("dvc") or shutil.which("dvc", path=str(Path(sys.executable).parent))
    if found is None:
        raise CharlieError("the dvc command is not installed; install charlie's dvc extra.")
    return found


def dvc_track(dest: Path, push: bool = False) -> Path:
    """``dvc add dest`` (and ``dvc push dest.dvc``); returns the .dvc file."""
    root = dvc_root(dest)
    dvc = dvc_executable()
    dvc_file = dest.parent / f"{dest.name}.dvc"
    steps = [[dvc, "add", str(dest.resolve())]]
    if push:
        steps.append([dvc, "push", str(dvc_file.resolve())])
    for cmd in steps:
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True,
                              env={**os.environ, "DVC_NO_ANALYTICS": "1"})  # fmt: skip
        for line in (done.stdout + done.stderr).splitlines():
            log.debug("dvc: %s", line)
        if done.returncode != 0:
            lines = [x.strip() for x in (done.stderr + done.stdout).splitlines() if x.strip()]
            errors = [x for x in lines if x.startswith("ERROR")] or lines or ["no output"]
            why = errors[-1].removeprefix("ERROR:").strip().rstrip(".")
            raise CharlieError(f"`dvc {cmd[1]} {Path(cmd[2]).name}` failed: {why}.")
    return dvc_file
