"""A finished run's artifacts in S3-compatible storage, and its metrics files among them.

The KFP launcher writes a run's outputs under ``<pipeline root>/<pipeline name>/<run id>/``,
one folder per task and output. :func:`fetch_metrics` downloads the metrics files dvc.yaml
declares from there into their workspace paths, so ``dvc metrics diff`` compares the run with
the committed metrics. boto3 (imported when fetching) reads the store: credentials from
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, the endpoint from AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from charlie.errors import CharlieError
from charlie.io import atomic_outputs

log = logging.getLogger(__name__)

DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"  # KFP's, when a run names none
# A `metrics:` file of dvc.yaml, as written there (${section.key} comes from params.yaml) ←
# (task, output artifact, file inside it; "" when the artifact is the file itself).
RUN_METRICS = {
    "${parse.report}": ("parse", "report", ""),
    "${dataset.card}": ("dataset", "card", "dataset_card.json"),
    "results/eval_metrics.json": ("evaluate", "results", "eval_metrics.json"),
    "backtests/baseline_metrics.json": ("backtest", "portfolio", "baseline_metrics.json"),
}


def bucket_and_prefix(uri: str) -> tuple[str, str]:
    """(bucket, key prefix) of an s3:// or minio:// pipeline root."""
    scheme, sep, rest = uri.split("?")[0].partition("://")  # a query is not part of the keys
    if not sep or scheme not in ("s3", "minio") or not rest.strip("/"):
        raise CharlieError(
            f"--fetch-metrics reads S3-compatible storage; pipeline root {uri!r} is not an "
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
        missing = [m for m in RUN_METRICS if m not in found]  # pipeline order
        if missing:
            wanted = ", ".join("/".join(x for x in RUN_METRICS[m] if x) for m in missing)
            raise CharlieError(f"the run's artifacts under {where} hold no {wanted}.")
        paths = [dest / workspace_path(path, params) for path in found]
        with atomic_outputs(*paths) as temps:
            for temp, key in zip(temps, found.values(), strict=True):
                temp.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        log.debug("fetch failed", exc_info=True)
        raise CharlieError(f"cannot read the run's artifacts under {where}: {exc}.") from None
    for path, key in zip(paths, found.values(), strict=True):
        log.info("fetched %s from %s", path, key)
    return paths
