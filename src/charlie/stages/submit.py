"""Submit the SFT pipeline to a Kubeflow Pipelines server and, optionally, follow the run.

Compiles pipelines/sft_pipeline.yaml first when it is missing or older than
pipelines/sft_pipeline.py or any components/**/*.py (unless --package names a compiled file),
uploads it (a new pipeline, or a new version of --pipeline-name when that exists; the version
is named <git short hash>[-dirty]-<UTC timestamp>), gets or creates --experiment and starts a
run with the --param values. Prints the run id and its URL.

With --wait --fetch-metrics, a run that succeeds has its metrics files (the ones dvc.yaml
declares: parse report, dataset card, evaluation and backtest metrics) downloaded from the run's
artifacts in S3-compatible storage into their workspace paths, so `dvc metrics diff` compares
the run with the last committed metrics. The artifacts are found under
<pipeline root>/<pipeline name>/<run id>/ (--pipeline-root, else KFP's default
minio://mlpipeline/v2/artifacts), read with boto3: credentials from AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, the endpoint from AWS_ENDPOINT_URL (MinIO, or any S3-compatible store).

--param NAME=VALUE must name a parameter of the pipeline; a STRING parameter takes VALUE as
written, the others JSON-decode it (true/false, numbers). A bearer token is read from
$KFP_TOKEN when set (never printed). --dry-run prints what would be submitted and calls no
server.

exit codes:
  0  submitted (with --wait: the run SUCCEEDED or was SKIPPED)
  1  with --wait: the run FAILED, was CANCELED, or --timeout passed first
  2  bad --param, no pipeline to compile, the server unreachable or refusing a call, or
     --fetch-metrics finding no metrics file of the run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from charlie.config import load_params
from charlie.errors import CharlieError
from charlie.kubeflow.artifacts import DEFAULT_PIPELINE_ROOT, bucket_and_prefix, fetch_metrics
from charlie.kubeflow.client import SUCCESS_STATES, TIMEOUT, TOKEN_ENV, KfpClient
from charlie.kubeflow.package import (
    PIPELINE_YAML,
    compile_pipeline,
    needs_compile,
    parse_params,
    pipeline_name,
    pipeline_parameters,
    repo_root,
    version_name,
)
from charlie.logs import setup_logging

log = logging.getLogger("charlie.submit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `charlie submit`."""
    parser.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://kfp:8888")
    parser.add_argument(
        "--experiment", default="charlie", help="experiment name (default: %(default)s)"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pipeline parameter, repeatable (e.g. --param smoke_test=true)",
    )
    parser.add_argument(
        "--pipeline-name", default="charlie-sft", help="pipeline name (default: %(default)s)"
    )
    parser.add_argument(
        "--package",
        type=Path,
        help="compiled pipeline YAML to submit as is (default: pipelines/sft_pipeline.yaml, "
        "recompiled when stale)",
    )
    parser.add_argument("--run-name", help="run name (default: <pipeline-name> <version>)")
    parser.add_argument(
        "--namespace", help="Kubernetes namespace (multi-user deployments; default: none)"
    )
    parser.add_argument(
        "--wait", action="store_true", help="follow the run to its end; exit 1 unless it succeeds"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=24 * 3600,
        help="with --wait: seconds to wait before giving up (default: %(default)s)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=10.0,
        help="with --wait: seconds between status checks (default: %(default)s)",
    )
    parser.add_argument(
        "--pipeline-root",
        help="where the run writes its artifacts, e.g. s3://bucket/kfp (default: the server's, "
        f"normally {DEFAULT_PIPELINE_ROOT})",
    )
    parser.add_argument(
        "--fetch-metrics",
        action="store_true",
        help="with --wait: download the run's metrics files into their dvc.yaml paths "
        "(then `dvc metrics diff` shows what the run changed)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be submitted; call no server"
    )


def _package(args: argparse.Namespace) -> tuple[Path | None, Path]:
    """(repository root or None, compiled YAML): --package as is, else the checkout's, fresh."""
    if args.package is not None:
        package = Path(args.package)
        if not package.is_file():
            raise CharlieError(f"--package {package} does not exist.")
        return None, package
    root = repo_root()
    package = root / PIPELINE_YAML
    if needs_compile(root):
        if args.dry_run:
            log.info("%s is stale; a real submit would recompile it", package)
        else:
            log.info("compiling %s", package)
            compile_pipeline(root)
    return root, package


def _print_plan(args: argparse.Namespace, host: str, package: Path, version: str,
                run_name: str, params: dict[str, Any]) -> None:  # fmt: skip
    print("dry run: nothing was submitted")
    print(f"host:       {host}")
    print(f"pipeline:   {args.pipeline_name} ({package})")
    print(f"version:    {version}")
    print(f"experiment: {args.experiment}")
    print(f"run:        {run_name}")
    print(f"parameters: {json.dumps(params, sort_keys=True)}")
    if args.pipeline_root:
        print(f"root:       {args.pipeline_root}")
    if args.wait:
        print(f"wait:       up to {args.timeout:g} s")


def run(args: argparse.Namespace) -> int:
    """Compile if stale, upload, start a run; with --wait follow it. Returns the exit code."""
    setup_logging("submit")
    host = args.host.rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise CharlieError(f"--host {args.host} must be an http:// or https:// URL.")
    if args.fetch_metrics and not args.wait:
        raise CharlieError("--fetch-metrics needs --wait: metrics exist once the run has ended.")
    artifacts_root = args.pipeline_root or DEFAULT_PIPELINE_ROOT
    if args.fetch_metrics:
        bucket_and_prefix(artifacts_root)  # fail before submitting

    root, package = _package(args)
    params = parse_params(list(args.param or []), pipeline_parameters(package))
    version = version_name(root or Path.cwd())
    run_name = args.run_name or f"{args.pipeline_name} {version}"
    if args.dry_run:
        _print_plan(args, host, package, version, run_name, params)
        return 0

    kfp = KfpClient(host, args.namespace, os.environ.get(TOKEN_ENV) or None)
    uploaded = kfp.upload(package, args.pipeline_name, version)
    experiment_id = kfp.experiment_id(args.experiment)
    run_id = kfp.start_run(uploaded, experiment_id, run_name, params, args.pipeline_root)
    print(f"run id:  {run_id}")
    print(f"run url: {kfp.run_url(run_id)}")
    if not args.wait:
        return 0

    state = kfp.wait(run_id, float(args.timeout), float(args.poll_interval))
    if state in SUCCESS_STATES:
        print(f"run {run_id} {state.lower()}")
        if args.fetch_metrics:
            paths = fetch_metrics(artifacts_root, pipeline_name(package), run_id,
                                  root or Path.cwd(), load_params(args.params))  # fmt: skip
            print(f"fetched {len(paths)} metrics files; see them with: dvc metrics diff")
        return 0
    if state == TIMEOUT:
        message = f"run {run_id} did not finish within {args.timeout:g} seconds."
    else:
        message = f"run {run_id} ended {state}; see {kfp.run_url(run_id)}."
    print(f"charlie submit: {message}", file=sys.stderr)
    return 1
