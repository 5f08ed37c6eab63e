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
import logging
from pathlib import Path
from typing import Any

HELP = "upload the compiled pipeline to Kubeflow Pipelines and start (and follow) a run"
log = logging.getLogger("charlie.submit")

TOKEN_ENV = "KFP_TOKEN"
PIPELINE_SOURCE = Path("pipelines") / "sft_pipeline.py"
PIPELINE_YAML = Path("pipelines") / "sft_pipeline.yaml"
COMPONENTS = Path("components")
DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"  # KFP's, when a run names none
# A `metrics:` file of dvc.yaml, as written there (${section.key} comes from params.yaml) ←
# (task, output artifact, file inside it; "" when the artifact is the file itself).
RUN_METRICS = {
    "${parse.report}": ("parse", "report", ""),
    "${dataset.card}": ("dataset", "card", "dataset_card.json"),
    "results/eval_metrics.json": ("evaluate", "results", "eval_metrics.json"),
    "backtests/baseline_metrics.json": ("backtest", "portfolio", "baseline_metrics.json"),
}
SUCCESS_STATES = {"SUCCEEDED", "SKIPPED"}
FAILURE_STATES = {"FAILED", "CANCELED"}


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


# --- compiling ----------------------------------------------------------------------------


def repo_root() -> Path:
    """The directory holding pipelines/sft_pipeline.py: the working directory, else the checkout."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (candidate / PIPELINE_SOURCE).is_file():
            return candidate
    from charlie.errors import CharlieError

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


def compile_pipeline(root: Path) -> Path:
    """Compile pipelines.sft_pipeline into pipelines/sft_pipeline.yaml under ``root``."""
    import importlib
    import sys

    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module("pipelines.sft_pipeline")
    from kfp import compiler

    target = root / PIPELINE_YAML
    compiler.Compiler().compile(pipeline_func=module.sft_pipeline, package_path=str(target))
    return target


def pipeline_parameters(package: Path) -> dict[str, str]:
    """Parameter name → KFP type (STRING, BOOLEAN, NUMBER_INTEGER, ...) from a compiled YAML."""
    import yaml

    from charlie.errors import CharlieError

    try:
        docs = list(yaml.safe_load_all(package.read_text(encoding="utf-8")))
    except yaml.YAMLError as exc:
        raise CharlieError(f"{package} is not a compiled pipeline YAML ({exc}).") from exc
    spec = docs[0] if docs and isinstance(docs[0], dict) else {}
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}) or {}
    return {name: str(d.get("parameterType", "STRING")) for name, d in params.items()}


# --- parameters ---------------------------------------------------------------------------


def parse_params(items: list[str], known: dict[str, str]) -> dict[str, Any]:
    """Turn NAME=VALUE strings into typed values checked against the pipeline's parameters."""
    import json

    from charlie.errors import CharlieError

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
    import datetime as dt

    from charlie.gitinfo import git_state

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    state = git_state(root)
    commit = state["commit"][:7] if state["commit"] else "nogit"
    return f"{commit}{'-dirty' if state['dirty'] else ''}-{stamp}"


# --- talking to KFP -----------------------------------------------------------------------


def _describe(exc: BaseException, host: str) -> str:
    """One sentence for a failed KFP call."""
    from kfp_server_api.exceptions import ApiException

    if isinstance(exc, ApiException):
        reason = (exc.reason or "").strip() or "error"
        detail = ""
        body = getattr(exc, "body", None)
        if body:
            import json

            try:
                payload = json.loads(body)
                detail = payload.get("message") or payload.get("error") or ""
            except (ValueError, AttributeError):
                detail = ""
        suffix = f": {detail}" if detail else ""
        return f"the KFP server at {host} answered HTTP {exc.status} {reason}{suffix}."
    if isinstance(exc, TimeoutError):
        return f"the KFP server at {host} did not answer its health check."
    return f"cannot reach the KFP server at {host} ({type(exc).__name__})."


class _Kfp:
    """kfp.Client calls with their prints and warnings captured and their errors translated."""

    def __init__(self, host: str, namespace: str | None, token: str | None) -> None:
        self.host = host.rstrip("/")
        self.namespace = namespace
        kwargs: dict[str, Any] = {"host": self.host}
        if namespace:
            kwargs["namespace"] = namespace
        if token:
            kwargs["existing_token"] = token
        self.client = self.call("connect", _make_client, kwargs)

    def call(self, what: str, fn, *args, **kwargs):
        import contextlib
        import io
        import warnings

        import urllib3
        from kfp_server_api.exceptions import ApiException

        from charlie.errors import CharlieError

        captured = io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
                warnings.simplefilter("ignore")
                return fn(*args, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, TimeoutError, OSError) as exc:
            log.debug("%s failed", what, exc_info=True)
            raise CharlieError(_describe(exc, self.host)) from exc
        except ValueError as exc:  # kfp's own checks: several pipelines share a name, ...
            log.debug("%s failed", what, exc_info=True)
            raise CharlieError(f"{what} failed: {str(exc).rstrip('.')}.") from exc
        finally:
            for line in captured.getvalue().splitlines():
                log.debug("kfp: %s", line)


def _make_client(kwargs: dict[str, Any]):
    import kfp

    return kfp.Client(**kwargs)


def _latest_version_id(kfp: _Kfp, pipeline_id: str) -> tuple[str, str]:
    """(id, name) of a pipeline's newest version."""
    from charlie.errors import CharlieError

    listed = kfp.call(
        "list pipeline versions",
        kfp.client.list_pipeline_versions,
        pipeline_id=pipeline_id,
        page_size=1,
        sort_by="created_at desc",
    )
    versions = listed.pipeline_versions or []
    if not versions:
        raise CharlieError(f"the KFP server at {kfp.host} lists no version of the new pipeline.")
    return versions[0].pipeline_version_id, versions[0].display_name or ""


def _find_experiment(client, name: str, namespace: str | None):
    """The experiment named ``name``, or None (kfp raises ValueError when there is none)."""
    try:
        return client.get_experiment(experiment_name=name, namespace=namespace)
    except ValueError as exc:
        if "No experiment" in str(exc):
            return None
        raise


def _experiment_id(kfp: _Kfp, name: str) -> str:
    found = kfp.call("get experiment", _find_experiment, kfp.client, name, kfp.namespace)
    if found is not None:
        return found.experiment_id
    created = kfp.call(
        "create experiment", kfp.client.create_experiment, name=name, namespace=kfp.namespace
    )
    log.info("created experiment %s", name)
    return created.experiment_id


def _state(run) -> str:
    return str(run.state or "RUNTIME_STATE_UNSPECIFIED").upper()


def _wait(kfp: _Kfp, run_id: str, timeout: float, interval: float) -> str:
    """Poll until the run ends; returns its terminal state, or 'TIMEOUT'."""
    import time

    deadline = time.monotonic() + timeout
    last = None
    while True:
        state = _state(kfp.call("get run", kfp.client.get_run, run_id))
        if state != last:
            log.info("run %s: %s", run_id, state)
            last = state
        if state in SUCCESS_STATES or state in FAILURE_STATES:
            return state
        if time.monotonic() >= deadline:
            return "TIMEOUT"
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


# --- the run's metrics ---------------------------------------------------------------------


def _bucket_and_prefix(uri: str) -> tuple[str, str]:
    """(bucket, key prefix) of an s3:// or minio:// pipeline root."""
    from charlie.errors import CharlieError

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
    import re

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
    import re

    return re.sub(
        r"\$\{(\w+)\.(\w+)\}", lambda m: str(getattr(getattr(params, m[1]), m[2])), template
    )


def fetch_metrics(
    pipeline_root: str, pipeline_name: str, run_id: str, dest: Path, params: Any
) -> list[Path]:
    """Download a finished run's metrics files into their workspace paths under ``dest``."""
    import boto3
    import botocore.exceptions

    from charlie.errors import CharlieError
    from charlie.io import atomic_outputs

    bucket, root = _bucket_and_prefix(pipeline_root)
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


def _pipeline_name(package: Path) -> str:
    """The compiled pipeline's own name (pipelineInfo.name): the launcher's folder for runs."""
    import yaml

    return next(yaml.safe_load_all(package.read_text(encoding="utf-8")))["pipelineInfo"]["name"]


def run(args: argparse.Namespace) -> int:
    """Compile if stale, upload, start a run; with --wait follow it. Returns the exit code."""
    import json
    import os
    import sys

    from charlie.errors import CharlieError
    from charlie.logs import setup_logging

    setup_logging("submit")
    host = args.host.rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise CharlieError(f"--host {args.host} must be an http:// or https:// URL.")
    if args.fetch_metrics and not args.wait:
        raise CharlieError("--fetch-metrics needs --wait: metrics exist once the run has ended.")
    if args.fetch_metrics:
        _bucket_and_prefix(args.pipeline_root or DEFAULT_PIPELINE_ROOT)  # fail before submitting

    root: Path | None = None
    if args.package is not None:
        package = Path(args.package)
        if not package.is_file():
            raise CharlieError(f"--package {package} does not exist.")
    else:
        root = repo_root()
        package = root / PIPELINE_YAML
        if needs_compile(root):
            if args.dry_run:
                log.info("%s is stale; a real submit would recompile it", package)
            else:
                log.info("compiling %s", package)
                compile_pipeline(root)
    params = parse_params(list(args.param or []), pipeline_parameters(package))
    version = version_name(root or Path.cwd())
    run_name = args.run_name or f"{args.pipeline_name} {version}"

    if args.dry_run:
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
        return 0

    kfp = _Kfp(host, args.namespace, os.environ.get(TOKEN_ENV) or None)
    client = kfp.client
    pipeline_id = kfp.call("find pipeline", client.get_pipeline_id, args.pipeline_name)
    if pipeline_id is None:
        pipeline = kfp.call(
            "upload pipeline",
            client.upload_pipeline,
            pipeline_package_path=str(package),
            pipeline_name=args.pipeline_name,
            namespace=args.namespace,
        )
        pipeline_id = pipeline.pipeline_id
        version_id, uploaded = _latest_version_id(kfp, pipeline_id)
        version = uploaded or version
        log.info("uploaded pipeline %s (%s)", args.pipeline_name, pipeline_id)
    else:
        made = kfp.call(
            "upload pipeline version",
            client.upload_pipeline_version,
            pipeline_package_path=str(package),
            pipeline_version_name=version,
            pipeline_id=pipeline_id,
        )
        version_id = made.pipeline_version_id
        log.info("uploaded version %s of pipeline %s", version, args.pipeline_name)

    experiment_id = _experiment_id(kfp, args.experiment)
    started = kfp.call(
        "create run",
        client.run_pipeline,
        experiment_id=experiment_id,
        job_name=run_name,
        params=params,
        pipeline_id=pipeline_id,
        version_id=version_id,
        pipeline_root=args.pipeline_root,
    )
    run_id = started.run_id
    print(f"run id:  {run_id}")
    print(f"run url: {host}/#/runs/details/{run_id}")
    if not args.wait:
        return 0

    state = _wait(kfp, run_id, float(args.timeout), float(args.poll_interval))
    if state in SUCCESS_STATES:
        print(f"run {run_id} {state.lower()}")
        if args.fetch_metrics:
            root_uri = args.pipeline_root or DEFAULT_PIPELINE_ROOT
            from charlie.config import load_params

            paths = fetch_metrics(root_uri, _pipeline_name(package), run_id, root or Path.cwd(),
                                  load_params(args.params))  # fmt: skip
            print(f"fetched {len(paths)} metrics files; see them with: dvc metrics diff")
        return 0
    if state == "TIMEOUT":
        message = f"run {run_id} did not finish within {args.timeout:g} seconds."
    else:
        message = f"run {run_id} ended {state}; see {host}/#/runs/details/{run_id}."
    print(f"charlie submit: {message}", file=sys.stderr)
    return 1
