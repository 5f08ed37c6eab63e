"""Calls to a Kubeflow Pipelines server (the v2beta1 API) through ``kfp.Client``.

:class:`KfpClient` uploads a compiled package (a new pipeline, or a new version of an existing
one), gets or creates an experiment, starts a run and follows it to its end, or creates a
recurring run (a cron schedule of runs, shown in the KFP UI). Every call's
prints and warnings go to the debug log, and its errors become one :class:`CharlieError`
sentence. Needs the ``kfp`` extra (imported when a client is made).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from charlie.errors import CharlieError
from charlie.logs import redact, register_secret

log = logging.getLogger(__name__)

TOKEN_ENV = "KFP_TOKEN"  # a bearer token for the server, when set
SUCCESS_STATES = {"SUCCEEDED", "SKIPPED"}
FAILURE_STATES = {"FAILED", "CANCELED"}
TIMEOUT = "TIMEOUT"  # what KfpClient.wait returns when the run outlasts its timeout
CRON_FIELDS = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-LW#]+$")


class Uploaded(NamedTuple):
    """The pipeline and version that an upload made."""

    pipeline_id: str
    version_id: str
    version: str


def describe_error(exc: BaseException, host: str) -> str:
    """One sentence for a failed KFP call."""
    from kfp_server_api.exceptions import ApiException

    if isinstance(exc, ApiException):
        reason = (exc.reason or "").strip() or "error"
        detail = ""
        body = getattr(exc, "body", None)
        if body:
            try:
                payload = json.loads(body)
                detail = payload.get("message") or payload.get("error") or ""
            except (ValueError, AttributeError):
                detail = ""
        suffix = f": {redact(str(detail))}" if detail else ""
        return f"the KFP server at {host} answered HTTP {exc.status} {reason}{suffix}."
    if isinstance(exc, TimeoutError):
        return f"the KFP server at {host} did not answer its health check."
    return f"cannot reach the KFP server at {host} ({type(exc).__name__})."


def check_cron(expression: str) -> str:
    """A KFP cron schedule, normalised; one sentence for a wrong number of fields.

    KFP's scheduler reads cron with a seconds field (robfig/cron): six fields, ``second minute
    hour day-of-month month day-of-week`` (``0 0 3 * * *``: 03:00:00 every day), or a
    descriptor such as ``@daily`` or ``@every 24h``. A five-field Unix cron would be read with
    its minutes as seconds, so it is refused.
    """
    fields = expression.split()
    if len(fields) >= 1 and fields[0].startswith("@"):
        return " ".join(fields)
    if len(fields) != len(CRON_FIELDS):
        example = "0 " + " ".join(fields) if len(fields) == 5 else "0 0 3 * * *"
        raise CharlieError(
            f"--schedule {expression!r} has {len(fields)} field{'' if len(fields) == 1 else 's'}; "
            f"KFP's cron has 6 ({' '.join(CRON_FIELDS)}), e.g. {example!r}."
        )
    bad = [f for f in fields if not CRON_FIELD.match(f)]
    if bad:
        raise CharlieError(f"--schedule {expression!r}: {bad[0]!r} is not a cron field.")
    return " ".join(fields)


def run_state(run: Any) -> str:
    """A run's state in upper case; RUNTIME_STATE_UNSPECIFIED when the server gives none."""
    return str(run.state or "RUNTIME_STATE_UNSPECIFIED").upper()


class KfpClient:
    """kfp.Client calls with their prints and warnings captured and their errors translated."""

    def __init__(self, host: str, namespace: str | None = None, token: str | None = None) -> None:
        self.host = host.rstrip("/")
        self.namespace = namespace
        kwargs: dict[str, Any] = {"host": self.host}
        if namespace:
            kwargs["namespace"] = namespace
        if token:
            register_secret(token)
            kwargs["existing_token"] = token
        self.client = self.call("connect", _make_client, kwargs)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; a failure is a CharlieError naming ``what`` or the server."""
        import urllib3
        from kfp_server_api.exceptions import ApiException

        captured = io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
                warnings.simplefilter("ignore")
                return fn(*args, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, TimeoutError, OSError) as exc:
            log.debug("%s failed", what, exc_info=True)
            raise CharlieError(describe_error(exc, self.host)) from exc
        except ValueError as exc:  # kfp's own checks: several pipelines share a name, ...
            log.debug("%s failed", what, exc_info=True)
            raise CharlieError(f"{what} failed: {str(exc).rstrip('.')}.") from exc
        finally:
            for line in captured.getvalue().splitlines():
                log.debug("kfp: %s", line)

    def latest_version(self, pipeline_id: str) -> tuple[str, str]:
        """(id, name) of a pipeline's newest version."""
        listed = self.call(
            "list pipeline versions",
            self.client.list_pipeline_versions,
            pipeline_id=pipeline_id,
            page_size=1,
            sort_by="created_at desc",
        )
        versions = listed.pipeline_versions or []
        if not versions:
            raise CharlieError(
                f"the KFP server at {self.host} lists no version of the new pipeline."
            )
        return versions[0].pipeline_version_id, versions[0].display_name or ""

    def upload(self, package: Path, pipeline_name: str, version: str) -> Uploaded:
        """Upload ``package`` as pipeline ``pipeline_name``, or as its version ``version``."""
        pipeline_id = self.call("find pipeline", self.client.get_pipeline_id, pipeline_name)
        if pipeline_id is None:
            pipeline = self.call(
                "upload pipeline",
                self.client.upload_pipeline,
                pipeline_package_path=str(package),
                pipeline_name=pipeline_name,
                namespace=self.namespace,
            )
            version_id, uploaded = self.latest_version(pipeline.pipeline_id)
            log.info("uploaded pipeline %s (%s)", pipeline_name, pipeline.pipeline_id)
            return Uploaded(pipeline.pipeline_id, version_id, uploaded or version)
        made = self.call(
            "upload pipeline version",
            self.client.upload_pipeline_version,
            pipeline_package_path=str(package),
            pipeline_version_name=version,
            pipeline_id=pipeline_id,
        )
        log.info("uploaded version %s of pipeline %s", version, pipeline_name)
        return Uploaded(pipeline_id, made.pipeline_version_id, version)

    def experiment_id(self, name: str) -> str:
        """The id of the experiment named ``name``, created when there is none."""
        found = self.call("get experiment", _find_experiment, self.client, name, self.namespace)
        if found is not None:
            return found.experiment_id
        created = self.call(
            "create experiment",
            self.client.create_experiment,
            name=name,
            namespace=self.namespace,
        )
        log.info("created experiment %s", name)
        return created.experiment_id

    def start_run(
        self,
        uploaded: Uploaded,
        experiment_id: str,
        run_name: str,
        params: dict[str, Any],
        pipeline_root: str | None = None,
    ) -> str:
        """Start a run of an uploaded version; returns the run id."""
        started = self.call(
            "create run",
            self.client.run_pipeline,
            experiment_id=experiment_id,
            job_name=run_name,
            params=params,
            pipeline_id=uploaded.pipeline_id,
            version_id=uploaded.version_id,
            pipeline_root=pipeline_root,
        )
        return started.run_id

    def create_recurring_run(
        self,
        uploaded: Uploaded,
        experiment_id: str,
        name: str,
        cron: str,
        params: dict[str, Any],
        pipeline_root: str | None = None,
    ) -> str:
        """Schedule runs of an uploaded version on a cron; returns the recurring run's id.

        One run at a time (max_concurrency 1), and no backfill of times missed while the
        schedule was paused (no_catchup).
        """
        created = self.call(
            "create recurring run",
            self.client.create_recurring_run,
            experiment_id=experiment_id,
            job_name=name,
            cron_expression=check_cron(cron),
            pipeline_id=uploaded.pipeline_id,
            version_id=uploaded.version_id,
            params=params,
            pipeline_root=pipeline_root,
            max_concurrency=1,
            no_catchup=True,
            enabled=True,
        )
        return created.recurring_run_id

    def recurring_run_url(self, recurring_run_id: str) -> str:
        """The recurring run's page in the KFP UI."""
        return f"{self.host}/#/recurringrun/details/{recurring_run_id}"

    def run_url(self, run_id: str) -> str:
        """The run's page in the KFP UI."""
        return f"{self.host}/#/runs/details/{run_id}"

    def wait(self, run_id: str, timeout: float, interval: float) -> str:
        """Poll until the run ends; returns its terminal state, or TIMEOUT."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            state = run_state(self.call("get run", self.client.get_run, run_id))
            if state != last:
                log.info("run %s: %s", run_id, state)
                last = state
            if state in SUCCESS_STATES or state in FAILURE_STATES:
                return state
            if time.monotonic() >= deadline:
                return TIMEOUT
            time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


def _make_client(kwargs: dict[str, Any]) -> Any:
    import kfp

    return kfp.Client(**kwargs)


def _find_experiment(client: Any, name: str, namespace: str | None) -> Any:
    """The experiment named ``name``, or None (kfp raises ValueError when there is none)."""
    try:
        return client.get_experiment(experiment_name=name, namespace=namespace)
    except ValueError as exc:
        if "No experiment" in str(exc):
            return None
        raise
