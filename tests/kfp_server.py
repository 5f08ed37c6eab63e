"""A fake Kubeflow Pipelines v2beta1 REST API on 127.0.0.1 for tests.

It answers the calls ``kfp.Client`` (kfp 2.17) makes to upload a pipeline and start a run:

* ``GET  /apis/v2beta1/healthz``                       (the client's constructor)
* ``GET  /apis/v2beta1/pipelines?filter=…``             (``get_pipeline_id``: display_name EQUALS)
* ``POST /apis/v2beta1/pipelines/upload?name=…``        (multipart ``uploadfile``)
* ``POST /apis/v2beta1/pipelines/upload_version?name=…&pipelineid=…``
* ``GET  /apis/v2beta1/pipelines/<id>/versions``        (newest first)
* ``GET  /apis/v2beta1/experiments?filter=…`` / ``POST /apis/v2beta1/experiments``
* ``GET  /apis/v2beta1/experiments/<id>``
* ``POST /apis/v2beta1/runs`` / ``GET /apis/v2beta1/runs/<id>``
* ``POST /apis/v2beta1/recurringruns`` / ``GET /apis/v2beta1/recurringruns[/<id>]``
  (``create_recurring_run``: a 6-field cron, status ENABLED when mode is ENABLE)

``GET /runs/<id>`` walks ``states`` (one per call, the last one repeats). Every request is
recorded in ``server.requests`` as a ``Request`` (method, path, query, headers, json body,
uploaded file bytes). Anything else is answered 404 and recorded too.

Usage::

    with FakeKfp(states=["RUNNING", "SUCCEEDED"]) as server:
        ... charlie submit --host server.url ...
        assert server.calls("POST", "/apis/v2beta1/runs")
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

API = "/apis/v2beta1"


class Request(NamedTuple):
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # decoded JSON body, or None
    files: dict[str, bytes]  # multipart file fields


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _filter_name(query: dict[str, str]) -> str | None:
    raw = query.get("filter")
    if not raw:
        return None
    for predicate in json.loads(raw).get("predicates", []):
        if predicate.get("key") in ("display_name", "name"):
            return predicate.get("stringValue") or predicate.get("string_value")
    return None


class FakeKfp:
    """The fake server; a context manager that serves on a thread."""

    def __init__(
        self, states: list[str] | None = None, multi_user: bool = False, run_id: str | None = None
    ) -> None:
        self.states = list(states or ["RUNNING", "SUCCEEDED"])
        self.run_id = run_id  # the id of created runs (default: a new UUID each)
        self.multi_user = multi_user
        self.requests: list[Request] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}  # pipeline id → versions, oldest first
        self.packages: dict[str, bytes] = {}  # version id → uploaded bytes
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self._polls: dict[str, int] = {}
        # (status, message) for every request: the message formatted with the request's
        # headers, as a misconfigured proxy echoes them ("{authorization}")
        self.fail_with: tuple[int, str] | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeKfp:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def calls(self, method: str, path: str) -> list[Request]:
        """Recorded requests with that method and path (path without the query)."""
        return [r for r in self.requests if r.method == method and r.path == path]

    # --- routing ------------------------------------------------------------------------

    def handle(self, req: Request) -> tuple[int, dict]:
        with self._lock:
            self.requests.append(req)
            return self._route(req)

    def _route(self, req: Request) -> tuple[int, dict]:
        m, p, q = req.method, req.path, req.query
        if self.fail_with is not None and not p.endswith("/healthz"):
            status, message = self.fail_with
            return status, {"error": message.format(**req.headers), "code": 13,
                            "message": message.format(**req.headers)}  # fmt: skip
        if not p.startswith(API):
            return 404, {"error": "not found", "message": "not found", "code": 5}
        p = p[len(API) :]
        parts = [x for x in p.split("/") if x]
        if m == "GET" and p == "/healthz":
            return 200, {"multi_user": self.multi_user, "pipeline_store": "database"}
        if m == "GET" and p == "/pipelines":
            name = _filter_name(q)
            found = [
                x for x in self.pipelines.values() if name is None or x["display_name"] == name
            ]
            return 200, ({"pipelines": found, "total_size": len(found)} if found else {})
        if m == "POST" and p == "/pipelines/upload":
            return self._upload(req, None)
        if m == "POST" and p == "/pipelines/upload_version":
            pid = q.get("pipelineid", "")
            if pid not in self.pipelines:
                return 404, {"message": f"pipeline {pid} not found", "code": 5}
            return self._upload(req, pid)
        if m == "GET" and len(parts) == 3 and parts[0] == "pipelines" and parts[2] == "versions":
            versions = list(reversed(self.versions.get(parts[1], [])))
            if "page_size" in q:
                versions = versions[: int(q["page_size"])]
            return 200, (
                {"pipeline_versions": versions, "total_size": len(versions)} if versions else {}
            )
        if m == "GET" and p == "/experiments":
            name = _filter_name(q)
            found = [
                x for x in self.experiments.values() if name is None or x["display_name"] == name
            ]
            return 200, ({"experiments": found, "total_size": len(found)} if found else {})
        if m == "POST" and p == "/experiments":
            body = req.body or {}
            exp = {
                "experiment_id": str(uuid.uuid4()),
                "display_name": body.get("display_name"),
                "namespace": body.get("namespace") or "",
                "created_at": _now(),
                "storage_state": "AVAILABLE",
            }
            self.experiments[exp["experiment_id"]] = exp
            return 200, exp
        if m == "GET" and len(parts) == 2 and parts[0] == "experiments":
            exp = self.experiments.get(parts[1])
            return (200, exp) if exp else (404, {"message": "experiment not found", "code": 5})
        if m == "POST" and p == "/runs":
            body = dict(req.body or {})
            body.update(run_id=self.run_id or str(uuid.uuid4()), state="PENDING",
                        created_at=_now())  # fmt: skip
            self.runs[body["run_id"]] = body
            self._polls[body["run_id"]] = 0
            return 200, body
        if m == "POST" and p == "/recurringruns":
            return self._create_recurring_run(req.body or {})
        if m == "GET" and p == "/recurringruns":
            found = list(self.recurring_runs.values())
            return 200, ({"recurringRuns": found, "total_size": len(found)} if found else {})
        if m == "GET" and len(parts) == 2 and parts[0] == "recurringruns":
            job = self.recurring_runs.get(parts[1])
            return (200, job) if job else (404, {"message": "recurring run not found", "code": 5})
        if m == "GET" and len(parts) == 2 and parts[0] == "runs":
            run = self.runs.get(parts[1])
            if run is None:
                return 404, {"message": "run not found", "code": 5}
            i = self._polls[parts[1]]
            self._polls[parts[1]] = i + 1
            run["state"] = self.states[min(i, len(self.states) - 1)]
            return 200, run
        return 404, {"message": f"no route for {m} {p}", "code": 5}

    def _create_recurring_run(self, body: dict) -> tuple[int, dict]:
        """What the v2beta1 server answers: the body, with an id, times, a status, and
        max_concurrency as a string (an int64 in proto JSON)."""
        cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron")
        periodic = (body.get("trigger") or {}).get("periodic_schedule")
        if not cron and not periodic:
            return 400, {"message": "a recurring run needs a trigger", "code": 3}
        if cron and len(cron.split()) != 6 and not cron.startswith("@"):
            return 400, {"message": f"invalid cron schedule {cron!r}", "code": 3}
        if body.get("experiment_id") not in self.experiments:
            return 404, {"message": "experiment not found", "code": 5}
        now = _now()
        job = {
            **body,
            "recurring_run_id": str(uuid.uuid4()),
            "max_concurrency": str(body.get("max_concurrency") or 1),
            "created_at": now,
            "updated_at": now,
            "status": "ENABLED" if body.get("mode") == "ENABLE" else "DISABLED",
            "namespace": body.get("namespace") or "",
        }
        self.recurring_runs[job["recurring_run_id"]] = job
        return 200, job

    def _upload(self, req: Request, pipeline_id: str | None) -> tuple[int, dict]:
        content = req.files.get("uploadfile")
        if content is None:
            return 400, {"message": "uploadfile is missing", "code": 3}
        name = req.query.get("name") or req.query.get("display_name") or ""
        if pipeline_id is None:
            if any(x["display_name"] == name for x in self.pipelines.values()):
                return 409, {"message": f"pipeline {name} already exists", "code": 6}
            pipeline_id = str(uuid.uuid4())
            pipeline = {
                "pipeline_id": pipeline_id,
                "display_name": name,
                "name": name,
                "created_at": _now(),
            }
            self.pipelines[pipeline_id] = pipeline
            self._add_version(pipeline_id, name, content)
            return 200, pipeline
        return 200, self._add_version(pipeline_id, name, content)

    def _add_version(self, pipeline_id: str, name: str, content: bytes) -> dict:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": str(uuid.uuid4()),
            "display_name": name,
            "name": name,
            "created_at": _now(),
        }
        self.versions.setdefault(pipeline_id, []).append(version)
        self.packages[version["pipeline_version_id"]] = content
        return version

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                ctype = self.headers.get("Content-Type", "")
                body, files = None, {}
                if ctype.startswith("multipart/form-data"):
                    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        f"Content-Type: {ctype}\r\n\r\n".encode() + raw
                    )
                    for part in msg.iter_parts():
                        field = part.get_param("name", header="content-disposition")
                        files[field] = part.get_payload(decode=True) or b""
                elif raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = raw.decode("utf-8", "replace")
                req = Request(
                    self.command,
                    parts.path,
                    dict(parse_qsl(parts.query)),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    files,
                )
                status, payload = fake.handle(req)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _serve

        return Handler
