"""Executor output for Kubeflow Pipelines: a stage's metrics and reports in the KFP UI.

A container component passes KFP's executor input (the ``{{$}}`` placeholder: JSON naming every
input and output artifact with its URI and type, and ``outputs.outputFile``) to its stage as
``--kfp-executor-input``. Once the stage has written its own outputs, :func:`publish` fills the
UI artifacts the component declares, by type:

  system.Metrics                metadata = the stage's scalar metrics (the run's metrics table,
                                the columns runs are compared on)
  system.ClassificationMetrics  metadata.confusionMatrix, which the UI draws
  system.HTML, system.Markdown  the stage's report copied to the artifact's path (the UI
                                renders the file itself)

It then writes the ExecutorOutput JSON to ``outputs.outputFile``; the KFP launcher merges each
artifact's metadata into ML Metadata after the container exits. (Metrics and confusion-matrix
metadata is also saved as JSON at the artifact's path, for downloads.) This is the JSON that
``kfp.dsl.executor.Executor.write_executor_output`` writes for Python components (the tests
compare the two), written with the standard library so that images need not carry the KFP SDK.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from charlie.errors import CharlieError

METRICS = "system.Metrics"
CLASSIFICATION = "system.ClassificationMetrics"
HTML = "system.HTML"
MARKDOWN = "system.Markdown"

# Where the KFP launcher mounts each object store inside the container (kfp's Artifact.path).
_MOUNTS = {"gs://": "/gcs/", "minio://": "/minio/", "s3://": "/s3/"}


def local_path(uri: str) -> Path:
    """The container path of an artifact URI, as the KFP launcher maps it (local URIs as is)."""
    for prefix, mount in _MOUNTS.items():
        if uri.startswith(prefix):
            return Path(mount + uri[len(prefix) :])
    return Path(uri)


def scalars(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numbers of a nested mapping, flattened to ``a_b_c`` keys (lists, text, NaN dropped)."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}".replace(" ", "_")
        if isinstance(value, Mapping):
            out.update(scalars(value, f"{name}_"))
        elif (
            isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        ):
            out[name] = int(value) if isinstance(value, numbers.Integral) else float(value)
    return out


def confusion_matrix(labels: list[str], matrix: list[list[int]]) -> dict[str, Any]:
    """ClassificationMetrics metadata: ``kfp.dsl.ClassificationMetrics.log_confusion_matrix``'s."""
    if len(matrix) != len(labels) or any(len(row) != len(labels) for row in matrix):
        raise ValueError(f"a {len(labels)}-label confusion matrix needs {len(labels)}² cells")
    return {
        "confusionMatrix": {
            "annotationSpecs": [{"displayName": label} for label in labels],
            "rows": [{"row": [int(n) for n in row]} for row in matrix],
        }
    }


def publish(
    executor_input: str | None,
    *,
    metrics: Mapping[str, Any] | None = None,
    confusion: tuple[list[str], list[list[int]]] | None = None,
    html: Path | None = None,
    markdown: Path | None = None,
) -> Path | None:
    """Fill the component's UI artifacts and write the executor output; no-op without input.

    Args:
        executor_input: The ``{{$}}`` JSON, or None when the stage runs outside Kubeflow.
        metrics: Numbers for every ``system.Metrics`` output (nested mappings are flattened
            and everything but finite numbers dropped, by :func:`scalars`).
        confusion: (labels, rows) for every ``system.ClassificationMetrics`` output.
        html: Report copied to every ``system.HTML`` output.
        markdown: Report copied to every ``system.Markdown`` output.

    Returns:
        The executor output file written, or None (no executor input, or not rank 0).

    Raises:
        CharlieError: The input is not executor-input JSON, or the component declares an
            artifact type this stage has nothing for.
    """
    if executor_input is None or int(os.environ.get("RANK", "0")) != 0:
        return None
    try:
        spec = json.loads(executor_input)
        outputs = spec["outputs"]
        output_file = Path(outputs["outputFile"])
    except (ValueError, KeyError, TypeError):
        raise CharlieError(
            "--kfp-executor-input is not KFP executor input (JSON with outputs.outputFile); "
            "pass the {{$}} placeholder."
        ) from None

    written: dict[str, Any] = {}
    for name, listed in outputs.get("artifacts", {}).items():
        artifact = listed["artifacts"][0]
        kind = artifact.get("type", {}).get("schemaTitle", "")
        path = local_path(artifact["uri"])
        if kind in (METRICS, CLASSIFICATION):
            if kind == METRICS:
                metadata = scalars(_needs(metrics, name, kind))
            else:
                metadata = confusion_matrix(*_needs(confusion, name, kind))
            path.parent.mkdir(parents=True, exist_ok=True)  # the same JSON, for downloads
            path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        elif kind in (HTML, MARKDOWN):
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(_needs(html if kind == HTML else markdown, name, kind), path)
            metadata = {}
        else:
            continue  # the stage's own outputs: it wrote them where the placeholders said
        written[name] = {
            "artifacts": [{"name": artifact.get("name", ""), "uri": artifact["uri"],
                           "metadata": metadata}]
        }  # fmt: skip

    output_file.parent.mkdir(parents=True, exist_ok=True)
    output_file.write_text(json.dumps({"artifacts": written}), encoding="utf-8")
    return output_file


def _needs(value: Any, name: str, kind: str) -> Any:
    if value is None:
        raise CharlieError(f"the component declares output {name!r} ({kind}); this stage has none.")
    return value


def add_argument(parser) -> None:
    """The ``--kfp-executor-input`` flag, for stages whose components show results in the UI."""
    parser.add_argument(
        "--kfp-executor-input",
        metavar="JSON",
        help="Kubeflow's executor input (the {{$}} placeholder): also fill the component's "
        "Metrics, ClassificationMetrics, HTML and Markdown outputs for the KFP UI",
    )
