"""A fake Kubernetes API on 127.0.0.1 for tests: TrainJobs, their pods and pod logs.

It answers what the ``kubernetes`` client (30.1) calls for ``charlie train-job``:

* ``POST|GET /apis/trainer.kubeflow.org/v1alpha1/namespaces/<ns>/trainjobs``     create, list
* ``GET|DELETE /apis/trainer.kubeflow.org/v1alpha1/namespaces/<ns>/trainjobs/<name>``
* ``GET /api/v1/namespaces/<ns>/pods?labelSelector=k=v,…``
* ``GET /api/v1/namespaces/<ns>/pods/<name>/log[?follow=true]``                 (chunked)

Every submitted TrainJob is validated against the OpenAPI v3 schema of the TrainJob CRD
vendored from Kubeflow Trainer (tests/fixtures/trainer/), strictly (unknown fields are errors,
as with ``fieldValidation=Strict``), and answered 422 with the error when it does not conform.
Errors are Kubernetes Status bodies (404 NotFound with details.name, 409 AlreadyExists, 403
Forbidden, 422 Invalid; without the CRD, 404 naming nothing).

It "runs" a TrainJob as local processes, one per node: env = os.environ + the trainer's plain
env values + its secretKeyRef values from ``secrets`` + ``node_env(numNodes, rank,
numProcPerNode, "127.0.0.1", a free port)``; command = ``rewrite(trainer.command +
trainer.args)``; cwd = ``cwd``. Its pods carry JobSet's labels; each serves its process's
output as its log. Conditions end Complete (every node exited 0) or Failed (the first node
that did not; the others are killed). Modes: ``run`` (processes), ``pending`` (pods stay
Pending, nothing runs), ``hold`` (pods Running, nothing runs until ``release(name)``).

Usage::

    with FakeKube(cwd=tmp_path, rewrite=fake_node) as kube:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path)))
        ... charlie train-job ...
        assert len(kube.calls("POST", kube.trainjobs_path)) == 1
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import jsonschema
import yaml

from charlie.kubeflow.trainjob import (
    COMPLETION_INDEX,
    JOBSET_NAME_LABEL,
    NODE,
    REPLICATED_JOB_LABEL,
    node_env,
)

CRD_FILE = Path(__file__).parent / "fixtures" / "trainer" / "trainer.kubeflow.org_trainjobs.yaml"
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class Request(NamedTuple):
    method: str
    path: str
    query: dict[str, str]
    body: Any  # decoded JSON body, or None


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- the schema


def _structural(node: Any) -> Any:
    """An OpenAPI v3 CRD schema as JSON Schema, with Kubernetes' structural extensions.

    Objects with ``properties`` admit no other keys (unless x-kubernetes-preserve-unknown-
    fields); ``nullable`` admits null; ``x-kubernetes-int-or-string`` admits an int or a string.
    """
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: _structural(value)
        for key, value in node.items()
        if key not in ("description", "properties")
    }
    if "properties" in node:  # field names, each a schema (a field may be named "description")
        out["properties"] = {name: _structural(sub) for name, sub in node["properties"].items()}
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    strict = not out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and strict:
        out["additionalProperties"] = False
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _list_type(validator, list_type, instance, schema):
    """x-kubernetes-list-type: map (unique by its keys) and set (unique items)."""
    if not isinstance(instance, list):
        return
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = [tuple(item.get(k) for k in keys) for item in instance if isinstance(item, dict)]
    elif list_type == "set":
        seen = [json.dumps(item, sort_keys=True) for item in instance]
    else:
        return
    if len(seen) != len(set(seen)):
        yield jsonschema.ValidationError(f"duplicate entries in a list of type {list_type}")


@cache
def trainjob_validator() -> jsonschema.protocols.Validator:
    """A validator for TrainJob objects: the vendored CRD's v1alpha1 schema."""
    crd = yaml.load(CRD_FILE.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    (version,) = (v for v in crd["spec"]["versions"] if v["name"] == VERSION)
    schema = _structural(version["schema"]["openAPIV3Schema"])
    cls = jsonschema.validators.extend(
        jsonschema.Draft202012Validator, {"x-kubernetes-list-type": _list_type}
    )
    return cls(schema)


def validation_errors(obj: Mapping[str, Any]) -> list[str]:
    """What the API server would reject in a TrainJob ("path: error"), schema and name rules."""
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in sorted(trainjob_validator().iter_errors(obj), key=lambda e: list(e.path))
    ]
    name = (obj.get("metadata") or {}).get("name") or ""
    if not RFC1035.match(name) or len(name) > 63:
        errors.append(f"metadata.name: {name!r} is not an RFC 1035 label of at most 63 chars")
    return errors


# --------------------------------------------------------------------------- the server


class _Pod:
    def __init__(self, job: str, namespace: str, rank: int, image: str) -> None:
        self.name = f"{job}-{NODE}-0-{rank}-{uuid.uuid4().hex[:5]}"
        self.job, self.rank, self.phase = job, rank, "Pending"
        index = {COMPLETION_INDEX: str(rank)}
        self.obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name, "namespace": namespace, "uid": str(uuid.uuid4()),
                "creationTimestamp": _now(), "annotations": dict(index),
                "labels": {JOBSET_NAME_LABEL: job, REPLICATED_JOB_LABEL: NODE,
                           "jobset.sigs.k8s.io/job-index": "0", **index},
            },
            "spec": {"containers": [{"name": NODE, "image": image}]},
        }  # fmt: skip
        self.log = bytearray()
        self.done = False  # no more output
        self.changed = threading.Condition()

    def json(self) -> dict:
        return {**self.obj, "status": {"phase": self.phase}}

    def write(self, data: bytes, done: bool = False) -> None:
        with self.changed:
            self.log += data
            self.done = self.done or done
            self.changed.notify_all()


class FakeKube:
    """The fake API server; a context manager that serves on a thread."""

    def __init__(
        self,
        *,
        mode: str = "run",
        cwd: Path | None = None,
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        rewrite: Callable[[list[str]], list[str]] | None = None,
        crd_installed: bool = True,
        forbid: Iterable[tuple[str, str]] = (),
        start_delay: float = 0.1,
        namespace: str = "charlie",
    ) -> None:
        assert mode in ("run", "pending", "hold"), mode
        self.mode, self.cwd, self.rewrite = mode, cwd, rewrite
        self.secrets = {k: dict(v) for k, v in (secrets or {}).items()}
        self.crd_installed, self.forbid = crd_installed, set(forbid)  # {(verb, resource)}
        self.start_delay, self.namespace = start_delay, namespace
        self.requests: list[Request] = []
        self.jobs: dict[str, dict] = {}
        self.pods: dict[str, _Pod] = {}
        self.procs: list[subprocess.Popen] = []
        self._released: dict[str, threading.Event] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def trainjobs_path(self) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}"

    def __enter__(self) -> FakeKube:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for event in self._released.values():
            event.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def kubeconfig(self, folder: Path) -> Path:
        """Write a kubeconfig for this server (context namespace: ``namespace``); its path."""
        path = folder / "kubeconfig"
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": self.namespace}}],
        }  # fmt: skip
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    def calls(self, method: str, path: str) -> list[Request]:
        """Recorded requests with that method and path (path without the query)."""
        return [r for r in self.requests if r.method == method and r.path == path]

    def submit(self, body: dict) -> int:
        """POST a TrainJob through the API, as an earlier attempt of a step would; the status."""
        request = urllib.request.Request(
            self.url + self.trainjobs_path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def release(self, name: str) -> None:
        """Let a held TrainJob's nodes start."""
        with self._lock:
            self._released.setdefault(name, threading.Event()).set()

    def wait_finished(self, name: str, timeout: float = 30) -> dict:
        """Block until the TrainJob has a Complete or Failed condition; the job."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                job = copy.deepcopy(self.jobs.get(name))
            if job and any(c["type"] in ("Complete", "Failed") for c in _conditions(job)):
                return job
            time.sleep(0.05)
        raise TimeoutError(f"TrainJob {name} did not finish")

    # --- routing ------------------------------------------------------------------------

    def _route(self, req: Request) -> tuple[int, Any]:
        parts = [p for p in req.path.split("/") if p]
        if parts[:3] == ["apis", GROUP, VERSION] and len(parts) >= 6 and parts[5] == PLURAL:
            namespace, name = parts[4], (parts[6] if len(parts) > 6 else None)
            verb = {"POST": "create", "DELETE": "delete"}.get(req.method, "get" if name else "list")
            if (verb, PLURAL) in self.forbid:
                return _forbidden(verb, PLURAL, GROUP, namespace)
            if not self.crd_installed:
                return 404, _status(
                    404, "NotFound", "the server could not find the requested resource"
                )
            if req.method == "POST" and name is None:
                return self._create(namespace, req.body or {})
            if req.method == "GET" and name is None:
                with self._lock:
                    items = [copy.deepcopy(j) for j in self.jobs.values()]
                return 200, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainJobList",
                             "metadata": {}, "items": items}  # fmt: skip
            with self._lock:
                job = self.jobs.get(name)
                if job is None:
                    return 404, _not_found(name)
                if req.method == "DELETE":
                    self._delete(name)
                    return 200, _status(200, "", "", name, success=True)
                return 200, copy.deepcopy(job)
        if parts[:2] == ["api", "v1"] and len(parts) >= 5 and parts[4] == "pods":
            namespace = parts[3]
            if len(parts) == 5:
                if ("list", "pods") in self.forbid:
                    return _forbidden("list", "pods", "", namespace)
                selector = _selector(req.query.get("labelSelector", ""))
                with self._lock:
                    items = [p.json() for p in self.pods.values() if _matches(p, selector)]
                return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {},
                             "items": items}  # fmt: skip
            with self._lock:
                pod = self.pods.get(parts[5])
            if pod is None:
                return 404, _not_found(parts[5], kind="pods")
            if len(parts) == 7 and parts[6] == "log":
                if ("get", "pods/log") in self.forbid:
                    return _forbidden("get", "pods/log", "", namespace)
                if pod.phase == "Pending":
                    message = f'container "{NODE}" in pod "{pod.name}" is waiting to start'
                    return 400, _status(400, "BadRequest", message)
                return 200, pod  # the handler writes the log
            return 200, pod.json()
        return 404, _status(404, "NotFound", "the server could not find the requested resource")

    def _create(self, namespace: str, body: dict) -> tuple[int, dict]:
        name = (body.get("metadata") or {}).get("name", "")
        errors = validation_errors(body)
        if errors:
            message = f'TrainJob.{GROUP} "{name}" is invalid: ' + "; ".join(errors)
            return 422, _status(422, "Invalid", message, name)
        with self._lock:
            if name in self.jobs:
                message = f'trainjobs.{GROUP} "{name}" already exists'
                return 409, _status(409, "AlreadyExists", message, name)
            job = copy.deepcopy(body)
            job["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()),
                                   creationTimestamp=_now(), resourceVersion="1")  # fmt: skip
            job["status"] = {}
            self.jobs[name] = job
            trainer = job["spec"].get("trainer") or {}
            image = trainer.get("image", "")
            pods = [_Pod(name, namespace, r, image) for r in range(trainer.get("numNodes", 1))]
            for pod in pods:
                self.pods[pod.name] = pod
        threading.Thread(target=self._run, args=(name, job, pods), daemon=True).start()
        return 201, copy.deepcopy(job)

    def _delete(self, name: str) -> None:
        self.jobs.pop(name, None)
        for pod_name in [n for n, p in self.pods.items() if p.job == name]:
            self.pods.pop(pod_name).write(b"", done=True)

    # --- running a job ------------------------------------------------------------------

    def _run(self, name: str, job: dict, pods: list[_Pod]) -> None:
        if self.mode == "pending" or self._stop.wait(self.start_delay):
            return
        with self._lock:
            for pod in pods:
                pod.phase = "Running"
            self._set_status(name, active=1)
            released = self._released.setdefault(name, threading.Event())
        if self.mode == "hold":
            released.wait()
            if self._stop.is_set():
                return
        trainer = job["spec"]["trainer"]
        nodes, nproc = len(pods), int(trainer.get("numProcPerNode", 1))
        port = _free_port()
        procs = []
        for pod in pods:
            env = {**os.environ, **self._env(trainer.get("env", []))}
            env.update(node_env(nodes, pod.rank, nproc, "127.0.0.1", port))
            command = [*trainer.get("command", []), *trainer.get("args", [])]
            command = self.rewrite(command) if self.rewrite else command
            proc = subprocess.Popen(command, cwd=self.cwd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)  # fmt: skip
            self.procs.append(proc)
            procs.append(proc)
            threading.Thread(target=_pump, args=(proc, pod), daemon=True).start()
        failed = None  # the first node that exited non-zero
        while True:
            with self._lock:
                deleted = name not in self.jobs
            codes = [proc.poll() for proc in procs]
            failed = next((i for i, code in enumerate(codes) if code not in (None, 0)), None)
            if deleted or failed is not None or all(code == 0 for code in codes):
                break
            time.sleep(0.05)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        time.sleep(0.1)  # let the pumps drain
        with self._lock:
            if name not in self.jobs:
                return
            for pod, proc in zip(pods, procs, strict=True):
                pod.phase = "Succeeded" if proc.returncode == 0 else "Failed"
            if failed is None:
                condition = ("Complete", "AllJobsCompleted", "jobset completed successfully")
            else:
                message = (f"jobset failed: node {failed}'s pod {pods[failed].name} exited with "
                           f"code {procs[failed].returncode}")  # fmt: skip
                condition = ("Failed", "FailedJobs", message)
            self._set_status(name, active=0, condition=condition)

    def _env(self, env: list[dict]) -> dict[str, str]:
        out = {}
        for var in env:
            if "value" in var:
                out[var["name"]] = var["value"]
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref["key"] in self.secrets.get(ref["name"], {}):
                out[var["name"]] = self.secrets[ref["name"]][ref["key"]]
        return out

    def _set_status(self, name: str, active: int, condition: tuple | None = None) -> None:
        job = self.jobs[name]
        done = condition is not None
        counts = {"active": active, "ready": active, "succeeded": int(done and condition[0] == "Complete"),
                  "failed": int(done and condition[0] == "Failed"), "suspended": 0}  # fmt: skip
        job["status"]["jobsStatus"] = [{"name": NODE, **counts}]
        if condition:
            kind, reason, message = condition
            job["status"]["conditions"] = [{"type": kind, "status": "True", "reason": reason,
                                            "message": message, "lastTransitionTime": _now()}]  # fmt: skip

    # --- HTTP ---------------------------------------------------------------------------

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _serve(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                req = Request(self.command, split.path, dict(parse_qsl(split.query)), body)
                with server._lock:
                    server.requests.append(req)
                code, payload = server._route(req)
                if isinstance(payload, _Pod):
                    return self._log(payload, req.query.get("follow", "").lower() == "true")
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _log(self, pod: _Pod, follow: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                if not follow:
                    with pod.changed:
                        data = bytes(pod.log)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sent = 0
                while True:
                    with pod.changed:
                        while len(pod.log) == sent and not pod.done and not server._stop.is_set():
                            pod.changed.wait(0.2)
                        data, done = bytes(pod.log[sent:]), pod.done or server._stop.is_set()
                    if data:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                        sent += len(data)
                    elif done:
                        break
                self.wfile.write(b"0\r\n\r\n")

            do_GET = do_POST = do_DELETE = _serve

        return Handler


def _pump(proc: subprocess.Popen, pod: _Pod) -> None:
    for line in iter(proc.stdout.readline, b""):
        pod.write(line)
    pod.write(b"", done=True)


def _conditions(job: dict) -> list[dict]:
    return (job.get("status") or {}).get("conditions") or []


def _selector(text: str) -> dict[str, str]:
    pairs = [part.split("=", 1) for part in text.split(",") if part]
    return {key: value for key, value in pairs}


def _matches(pod: _Pod, selector: Mapping[str, str]) -> bool:
    labels = pod.obj["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


def _status(code: int, reason: str, message: str, name: str | None = None,
            kind: str = PLURAL, success: bool = False) -> dict:  # fmt: skip
    details = {"name": name, "group": GROUP, "kind": kind} if name else {}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "code": code,
            "status": "Success" if success else "Failure", "message": message,
            "reason": reason, "details": details}  # fmt: skip


def _not_found(name: str, kind: str = PLURAL) -> dict:
    group = f".{GROUP}" if kind == PLURAL else ""
    return _status(404, "NotFound", f'{kind}{group} "{name}" not found', name, kind)


def _forbidden(verb: str, resource: str, group: str, namespace: str) -> tuple[int, dict]:
    user = "system:serviceaccount:charlie:charlie-pipeline-runner"
    message = (f'{resource}{"." + group if group else ""} is forbidden: User "{user}" cannot '
               f'{verb} resource "{resource}" in API group "{group}" in the namespace '
               f'"{namespace}"')  # fmt: skip
    return 403, _status(403, "Forbidden", message)
