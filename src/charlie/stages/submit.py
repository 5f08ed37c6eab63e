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

With --wait --fetch-model DIR, a run that succeeds has its trained model (the `model` output of
the `train` task, or of `train-job` for multi-node runs) downloaded from the same artifacts
into DIR, with DIR/kfp_run.json: run id and URL, pipeline and version, the code version
(<git short hash>[-dirty]-<timestamp>), the --param values, the model's artifact URI, and
`data`, the parse report's `source` (which data the run read; null when the report has none).
Then `dvc add DIR` makes DIR.dvc (and gitignores DIR) and, with --push, `dvc push DIR.dvc`
uploads the model to the DVC remote; commit DIR.dvc and .gitignore to version the model with
the code. DIR must be inside an initialised DVC workspace.

With --schedule CRON, no run starts now: a KFP recurring run is created (shown under Recurring
Runs in the KFP UI), which starts a run of the uploaded version on CRON, one at a time
(max concurrency 1) and without backfilling missed times (no catchup). CRON has KFP's six
fields, seconds first: `second minute hour day-of-month month day-of-week`, e.g. '0 0 3 * * *'
for 03:00:00 every day (the scheduler's clock is normally UTC), or a descriptor such as @daily
or '@every 24h'; a five-field Unix cron is refused. --schedule excludes --wait. Prints the
recurring run's id and URL.

--param NAME=VALUE must name a parameter of the pipeline; a STRING parameter takes VALUE as
written, the others JSON-decode it (true/false, numbers). A bearer token is read from
$KFP_TOKEN when set (never printed). --dry-run prints what would be submitted and calls no
server.

exit codes:
  0  submitted or scheduled (with --wait: the run SUCCEEDED or was SKIPPED)
  1  with --wait: the run FAILED, was CANCELED, or --timeout passed first
  2  bad --param or --schedule, no pipeline to compile, the server unreachable or refusing a
     call, --fetch-metrics finding no metrics file of the run, --fetch-model finding no model
     in it or no DVC workspace, or dvc failing
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
from charlie.kubeflow.artifacts import (
    DEFAULT_PIPELINE_ROOT,
    bucket_and_prefix,
    dvc_executable,
    dvc_root,
    dvc_track,
    fetch_metrics,
    fetch_model,
)
from charlie.kubeflow.client import SUCCESS_STATES, TIMEOUT, TOKEN_ENV, KfpClient, check_cron
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
        "--fetch-model",
        type=Path,
        metavar="DIR",
        help="with --wait: download the run's trained model into DIR (with kfp_run.json) and "
        "`dvc add` it",
    )
    parser.add_argument(
        "--push",
        action="store_true",
        help="with --fetch-model: also `dvc push DIR.dvc` to the DVC remote",
    )
    parser.add_argument(
        "--schedule",
        metavar="CRON",
        help="create a recurring run on this 6-field cron (second minute hour day-of-month "
        "month day-of-week, e.g. '0 0 3 * * *') instead of one run; excludes --wait",
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
    if args.schedule:
        print(f"schedule:   {args.schedule} (a recurring run, max concurrency 1, no catchup)")
    if args.wait:
        print(f"wait:       up to {args.timeout:g} s")
    if args.fetch_model:
        print(
            f"model:      into {args.fetch_model}, then dvc add" + (" + push" if args.push else "")
        )


def _check_flags(args: argparse.Namespace, artifacts_root: str) -> None:
    """One sentence for flags that cannot work together, before anything is submitted."""
    if args.schedule:
        if args.wait or args.fetch_metrics or args.fetch_model:
            raise CharlieError(
                "--schedule creates a recurring run, which has no single end to wait for; "
                "drop --wait (and --fetch-metrics, --fetch-model)."
            )
        check_cron(args.schedule)
    if args.fetch_metrics and not args.wait:
        raise CharlieError("--fetch-metrics needs --wait: metrics exist once the run has ended.")
    if args.fetch_model and not args.wait:
        raise CharlieError("--fetch-model needs --wait: the model exists once the run succeeded.")
    if args.push and not args.fetch_model:
        raise CharlieError("--push pushes the model --fetch-model fetches; add --fetch-model DIR.")
    if args.fetch_metrics:
        bucket_and_prefix(artifacts_root)
    if args.fetch_model:
        bucket_and_prefix(artifacts_root, "--fetch-model")
        dvc_root(Path(args.fetch_model))
        dvc_executable()


def _fetch_model(args: argparse.Namespace, artifacts_root: str, name: str, record: dict) -> None:
    """Download the run's model into --fetch-model, dvc add (and push) it, say what is next."""
    dest = Path(args.fetch_model)
    written = fetch_model(artifacts_root, name, record["run_id"], dest, record)
    dvc_file = dvc_track(dest, push=args.push)
    data = written.get("data") or {}
    version = data.get("version") if isinstance(data, dict) else None
    print(f"fetched the {written['task']} model into {dest} (data version: {version or 'unknown'})")
    if args.push:
        print(f"pushed {dvc_file} to the DVC remote")
    gitignore = dest.parent / ".gitignore"
    print(f"next: git add {dvc_file} {gitignore} && git commit -m 'model of KFP run "
          f"{record['run_id']}'")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Compile if stale, upload, start a run; with --wait follow it. Returns the exit code."""
    setup_logging("submit")
    host = args.host.rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise CharlieError(f"--host {args.host} must be an http:// or https:// URL.")
    artifacts_root = args.pipeline_root or DEFAULT_PIPELINE_ROOT
    _check_flags(args, artifacts_root)  # fail before submitting

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
    if args.schedule:
        job_id = kfp.create_recurring_run(uploaded, experiment_id, run_name, args.schedule,
                                          params, args.pipeline_root)  # fmt: skip
        print(f"recurring run id:  {job_id}")
        print(f"recurring run url: {kfp.recurring_run_url(job_id)}")
        return 0
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
        if args.fetch_model:
            record = {"run_id": run_id, "run_url": kfp.run_url(run_id), "host": host,
                      "experiment": args.experiment, "pipeline": args.pipeline_name,
                      "pipeline_id": uploaded.pipeline_id, "pipeline_version": uploaded.version,
                      "pipeline_version_id": uploaded.version_id, "code_version": version,
                      "parameters": params}  # fmt: skip
            _fetch_model(args, artifacts_root, pipeline_name(package), record)
        return 0
    if state == TIMEOUT:
        message = f"run {run_id} did not finish within {args.timeout:g} seconds."
    else:
        message = f"run {run_id} ended {state}; see {kfp.run_url(run_id)}."
    print(f"charlie submit: {message}", file=sys.stderr)
    return 1
