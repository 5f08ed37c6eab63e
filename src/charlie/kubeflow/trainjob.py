"""Multi-node training on Kubeflow Trainer v2: the TrainJob each node runs, and its launcher.

Every node of a TrainJob runs the same command; Trainer's torch plugin gives each one the
torchrun settings as ``PET_*`` environment variables (torchrun reads ``PET_<FLAG>`` for each
of its flags), so the command names none of them.

The launcher (``charlie train-job``, a pipeline step on the CPU image) stages the step's input
artifacts onto the shared cache PVC, submits the TrainJob (or attaches to the one an earlier
attempt of the same run submitted), streams node 0's log into its own, and copies the trained
model back into its output artifact. Written against Kubeflow Trainer v2.3.0
(``trainer.kubeflow.org/v1alpha1``; the CRD the tests validate against is vendored under
tests/fixtures/trainer/). The ``kubernetes`` client is imported by the calls that use it.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from charlie.errors import CharlieError

log = logging.getLogger("charlie.train_job")

TRAINER_VERSION = "v2.3.0"  # the Kubeflow Trainer release whose TrainJob CRD this targets
GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
API_VERSION = f"{GROUP}/{VERSION}"
RUNTIME_KIND = "ClusterTrainingRuntime"
DEFAULT_RUNTIME = "torch-distributed"  # Trainer's built-in torch runtime

TRAIN_MODULE = "charlie.cli"
MASTER_PORT = 29500  # Trainer's torch plugin's PET_MASTER_PORT (constants.ContainerTrainerPort)
NODE = "node"  # the replicated job and container name in Trainer's runtimes

# Labels JobSet puts on every pod; the Job controller adds the completion index (= node rank).
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # label and annotation

PATCH_MANAGER = "charlie.dev/train-job"  # the runtimePatches entry this launcher owns
RUN_ID_ANNOTATION = "charlie.dev/run-id"
MANAGED_BY = {"app.kubernetes.io/managed-by": "charlie", "app.kubernetes.io/part-of": "charlie"}

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = "nvidia.com/gpu"
CACHE_PVC = "charlie-cache"
CACHE_MOUNT = "/mnt/charlie-cache"
TMP_VOLUME, TMP_MOUNT = "tmp", "/tmp"
IMAGE_UID = 10001  # the images' `charlie` user (images/*/Dockerfile: USER 10001:10001)
CACHE_VOLUME = "charlie-cache"
SHM_MOUNT = "/dev/shm"  # NCCL's shared memory: the container runtime's default is 64 MiB
SHM_VOLUME = "dshm"
HF_SECRET = "charlie-hf"  # key token → HF_TOKEN
S3_SECRET = "charlie-s3"  # keys access_key_id, secret_access_key, endpoint_url → AWS_*
S3_ENV = (  # (variable, the S3 secret's key)
    ("AWS_ACCESS_KEY_ID", "access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
    ("AWS_ENDPOINT_URL", "endpoint_url"),  # MinIO
)
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DONE_MARKER = "trainjob-complete.json"
INSTALL_HINT = "install Kubeflow Trainer v2, see manifests/README.md"
RBAC_HINT = (
    "bind the step's service account to the charlie-train-job Role (manifests/base/rbac.yaml)"
)


def node_command(train_args: Sequence[str]) -> list[str]:
    """What every node runs: ``torchrun -m charlie.cli train <train_args>``."""
    return ["torchrun", "-m", TRAIN_MODULE, "train", *train_args]


def node_env(
    num_nodes: int, node_rank: int, nproc_per_node: int, master_addr: str,
    master_port: int = MASTER_PORT,
) -> dict[str, str]:  # fmt: skip
    """The torchrun settings Trainer's torch plugin gives node ``node_rank`` of a TrainJob."""
    return {
        "PET_NNODES": str(num_nodes),
        "PET_NPROC_PER_NODE": str(nproc_per_node),
        "PET_NODE_RANK": str(node_rank),
        "PET_MASTER_ADDR": master_addr,
        "PET_MASTER_PORT": str(master_port),
    }


def master_addr(job_name: str) -> str:
    """Node 0's address Trainer gives every node: ``<job>-node-0-0.<job>`` (JobSet's service)."""
    return f"{job_name}-{NODE}-0-0.{job_name}"


def job_name(run_id: str) -> str:
    """The TrainJob's name for a pipeline run: the same on every attempt, an RFC 1035 label."""
    if not run_id.strip():
        raise CharlieError("--run-id is empty: pass the pipeline run's id.")
    slug = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")[:20].strip("-")
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return f"charlie-{slug}-{digest}" if slug else f"charlie-{digest}"


# --------------------------------------------------------------------------- the TrainJob


@dataclass(frozen=True)
class Nodes:
    """What each node of a TrainJob is: its image, how many there are, GPUs and processes per
    node, resources, runtime, the cache volume, the secrets, and where it is scheduled."""

    image: str
    count: int = 2
    gpus: int = 1  # per node; 0: CPU only
    nproc: int | None = None  # processes per node; default: one per GPU (1 without GPUs)
    gpu_resource: str = GPU_RESOURCE
    runtime: str = DEFAULT_RUNTIME
    cache_pvc: str = CACHE_PVC
    cache_mount: str = CACHE_MOUNT
    hf_secret: str | None = HF_SECRET
    s3_secret: str | None = S3_SECRET
    node_selector: Mapping[str, str] = field(default_factory=dict)
    cpu: str | None = None
    memory: str | None = None
    shm_size: str | None = None
    service_account: str | None = None

    @property
    def procs(self) -> int:
        return self.nproc or max(1, self.gpus)


@dataclass(frozen=True)
class JobSpec:
    """Everything the TrainJob says: its name and run, what the nodes run, the nodes, a limit."""

    name: str
    run_id: str
    train_args: tuple[str, ...]
    nodes: Nodes
    deadline_s: int | None = None


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    ref = {"name": secret, "key": key, "optional": True}
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def build_trainjob(spec: JobSpec) -> dict[str, Any]:
    """The TrainJob object (a plain dict) for ``spec``; pure, so tests check every field."""
    nodes = spec.nodes
    env = [
        {"name": "HF_HOME", "value": f"{nodes.cache_mount}/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},  # node 0's log streams as it is written
        {"name": "HOME", "value": TMP_MOUNT},  # caches under ~ on the writable /tmp
    ]
    if nodes.hf_secret:
        env.append(_secret_env("HF_TOKEN", nodes.hf_secret, "token"))
    if nodes.s3_secret:
        env += [_secret_env(name, nodes.s3_secret, key) for name, key in S3_ENV]

    resources: dict[str, str] = {}
    if nodes.gpus:
        resources[nodes.gpu_resource] = str(nodes.gpus)
    if nodes.cpu:
        resources["cpu"] = nodes.cpu
    if nodes.memory:
        resources["memory"] = nodes.memory

    shm: dict[str, Any] = {"medium": "Memory"}
    if nodes.shm_size:
        shm["sizeLimit"] = nodes.shm_size
    pod: dict[str, Any] = {
        # The restricted Pod Security profile; the root filesystem is read-only, so what
        # Python, torch and Triton write outside the cache goes to an emptyDir at /tmp ($HOME).
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [
            {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": nodes.cache_pvc}},
            {"name": SHM_VOLUME, "emptyDir": shm},
            {"name": TMP_VOLUME, "emptyDir": {}},
        ],
        "containers": [
            {
                "name": NODE,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": True,
                },
                "volumeMounts": [
                    {"name": CACHE_VOLUME, "mountPath": nodes.cache_mount},
                    {"name": SHM_VOLUME, "mountPath": SHM_MOUNT},
                    {"name": TMP_VOLUME, "mountPath": TMP_MOUNT},
                ],
            }
        ],
    }
    if nodes.node_selector:
        pod["nodeSelector"] = dict(nodes.node_selector)
    if nodes.gpus:
        pod["tolerations"] = [{"key": GPU_TAINT, "operator": "Exists", "effect": "NoSchedule"}]
    if nodes.service_account:
        pod["serviceAccountName"] = nodes.service_account
    replicated = {"name": NODE, "template": {"spec": {"template": {"spec": pod}}}}

    trainer: dict[str, Any] = {
        "image": nodes.image,
        "command": node_command(spec.train_args),
        "env": env,
        "numNodes": nodes.count,
        "numProcPerNode": nodes.procs,
    }
    if resources:
        trainer["resourcesPerNode"] = {"requests": resources, "limits": dict(resources)}
    job_spec: dict[str, Any] = {
        "runtimeRef": {"name": nodes.runtime, "apiGroup": GROUP, "kind": RUNTIME_KIND},
        "trainer": trainer,
        "runtimePatches": [
            {
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {
                    "template": {"spec": {"replicatedJobs": [replicated]}}
                },
            }
        ],
    }  # fmt: skip
    if spec.deadline_s:
        job_spec["activeDeadlineSeconds"] = int(spec.deadline_s)
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainJob",
        "metadata": {
            "name": spec.name,
            "labels": dict(MANAGED_BY),
            "annotations": {RUN_ID_ANNOTATION: spec.run_id},
        },
        "spec": job_spec,
    }


def job_state(job: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """("Complete" | "Failed", reason, message) once the TrainJob has finished, else None."""
    for condition in job.get("status", {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"], condition.get("reason", ""), condition.get("message", "")
    return None


# --------------------------------------------------------------------------- the cluster


def _sentence(text: str) -> str:
    return " ".join(str(text).split()).rstrip(".")


def _api_error(exc: Any, verb: str, what: str, namespace: str) -> CharlieError:
    """One sentence for a kubernetes ApiException: what failed and what to install or grant."""
    status = getattr(exc, "status", None)
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = _sentence(body.get("message") or getattr(exc, "reason", "") or "no message")
    if status == 401:
        return CharlieError(
            f"the Kubernetes API rejected this step's credentials (401 {message}) trying to "
            f"{verb} {what}: check the service account token or KUBECONFIG."
        )
    if status == 403:
        return CharlieError(
            f"the Kubernetes API forbids this step to {verb} {what} in namespace {namespace} "
            f"({message}): {RBAC_HINT}."
        )
    if status == 404 and what.startswith("trainjob"):
        return CharlieError(
            f"the TrainJob CRD ({API_VERSION} {PLURAL}) is not installed in this cluster: "
            f"{INSTALL_HINT}."
        )
    if status in (400, 422):
        hint = ""
        if "TrainingRuntime" in message and "not found" in message:
            hint = f": install Trainer's runtimes or pass --runtime ({INSTALL_HINT})"
        return CharlieError(f"the cluster rejected {what} ({status}): {message}{hint}.")
    return CharlieError(f"the Kubernetes API failed to {verb} {what} ({status}): {message}.")


def _namespace(flag: str | None, kube_namespace: str | None) -> str:
    if flag:
        return flag
    try:
        return SA_NAMESPACE_FILE.read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return kube_namespace or "default"


@dataclass
class Pod:
    name: str
    uid: str
    phase: str
    reason: str = ""


class Cluster:
    """TrainJobs, their pods and pod logs through the ``kubernetes`` client, errors as sentences."""

    def __init__(self, namespace: str | None = None) -> None:
        from kubernetes import client, config

        kube_namespace = None
        try:
            config.load_incluster_config()
        except config.ConfigException:
            kubeconfig = os.environ.get("KUBECONFIG")  # the client reads it only at import
            try:
                config.load_kube_config(config_file=kubeconfig)
                _, active = config.list_kube_config_contexts(config_file=kubeconfig)
                kube_namespace = (active or {}).get("context", {}).get("namespace")
            except (config.ConfigException, OSError) as exc:
                raise CharlieError(
                    "found no Kubernetes configuration (not in a pod with a service account, "
                    f"and no usable KUBECONFIG: {_sentence(exc)}): run this step in the cluster "
                    "or set KUBECONFIG."
                ) from None
        self.namespace = _namespace(namespace, kube_namespace)
        api = client.ApiClient()
        self.host = api.configuration.host
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def _call(
        self, verb: str, what: str, fn: Callable[..., Any], *args,
        none_if: Callable[[Any], bool] | None = None, **kwargs,
    ) -> Any:  # fmt: skip
        """``fn(*args, **kwargs)``; None for an ApiException ``none_if`` accepts."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if none_if is not None and none_if(exc):
                return None
            raise _api_error(exc, verb, what, self.namespace) from None
        except HTTPError as exc:
            raise CharlieError(
                f"cannot reach the Kubernetes API at {self.host} to {verb} {what}: "
                f"{_sentence(getattr(exc, 'reason', None) or exc)}."
            ) from None

    def _trainjob_args(self) -> tuple[str, str, str, str]:
        return GROUP, VERSION, self.namespace, PLURAL

    def get_job(self, name: str) -> dict | None:
        """The TrainJob, or None when there is none of that name."""
        return self._call(
            "get", f"trainjobs/{name}", self.custom.get_namespaced_custom_object,
            *self._trainjob_args(), name,
            none_if=lambda exc: exc.status == 404 and _names(exc, name),  # a missing CRD names none
        )  # fmt: skip

    def create_job(self, body: dict) -> dict | None:
        """Submit the TrainJob; None when one of that name exists already (a racing attempt)."""
        return self._call(
            "create", f"trainjobs/{body['metadata']['name']}",
            self.custom.create_namespaced_custom_object, *self._trainjob_args(), body,
            field_validation="Strict", none_if=lambda exc: exc.status == 409,
        )  # fmt: skip

    def delete_job(self, name: str) -> None:
        """Delete the TrainJob and, in the background, its JobSet and pods (gone: no error)."""
        self._call(
            "delete", f"trainjobs/{name}", self.custom.delete_namespaced_custom_object,
            *self._trainjob_args(), name, propagation_policy="Background",
            none_if=lambda exc: exc.status == 404,
        )  # fmt: skip

    def wait_deleted(self, name: str, timeout_s: float = 120, poll_s: float = 1) -> None:
        """Wait until the TrainJob is gone (finalizers done), so its name can be reused."""
        deadline = time.monotonic() + timeout_s
        while self.get_job(name) is not None:
            if time.monotonic() > deadline:
                raise CharlieError(
                    f"TrainJob {name} was deleted but still exists after {timeout_s:.0f}s: "
                    "check its finalizers (kubectl describe trainjob)."
                )
            time.sleep(poll_s)

    def rank0_pod(self, name: str) -> Pod | None:
        """Node 0's pod of the TrainJob (the newest, if it was restarted), or None yet."""
        selector = f"{JOBSET_NAME_LABEL}={name},{REPLICATED_JOB_LABEL}={NODE}"
        pods = self._call(
            "list", "pods", self.core.list_namespaced_pod, self.namespace, label_selector=selector
        ).items
        rank0 = [
            p
            for p in pods
            if (p.metadata.labels or {}).get(COMPLETION_INDEX, "0") == "0"
            and (p.metadata.annotations or {}).get(COMPLETION_INDEX, "0") == "0"
        ]
        if not rank0:
            return None
        newest = max(rank0, key=lambda p: (p.metadata.creation_timestamp or 0, p.metadata.name))
        status = newest.status
        reason = ""
        for cs in (status.container_statuses or []) if status else []:
            waiting = cs.state.waiting if cs.state else None
            if waiting and waiting.reason:
                reason = waiting.reason
        return Pod(newest.metadata.name, newest.metadata.uid or newest.metadata.name,
                   (status.phase if status else None) or "Pending", reason)  # fmt: skip

    def log_stream(self, pod: str) -> Any:
        """The pod's log, followed: an HTTP response to read in chunks (close it to stop)."""
        return self._call(
            "get", "pods/log", self.core.read_namespaced_pod_log, pod, self.namespace,
            container=NODE, follow=True, _preload_content=False,
        )  # fmt: skip


def _names(exc: Any, name: str) -> bool:
    try:
        details = json.loads(exc.body or "{}").get("details") or {}
    except (TypeError, ValueError):
        return False
    return details.get("name") == name


def _chunks(response: Any) -> Iterator[bytes]:
    """The body as it arrives (a followed log is chunked; otherwise read what is there)."""
    if getattr(response, "chunked", False) and hasattr(response, "read_chunked"):
        yield from response.read_chunked(decode_content=False)
        return
    while chunk := response.read1(1 << 16):
        yield chunk


class LogFollower(threading.Thread):
    """Copies node 0's pod log into ``out`` as it is written, each pod (restart) once."""

    def __init__(self, cluster: Cluster, name: str, out: TextIO, poll_s: float) -> None:
        super().__init__(name=f"log-{name}", daemon=True)
        self.cluster, self.job, self.out, self.poll_s = cluster, name, out, poll_s
        self.pod: Pod | None = None  # the latest pod seen
        self._seen: set[str] = set()
        self._final = threading.Event()
        self._response: Any = None

    def run(self) -> None:
        while True:
            final = self._final.is_set()
            try:
                self.pod = pod = self.cluster.rank0_pod(self.job)
                if pod and pod.uid not in self._seen and pod.phase != "Pending":
                    self._seen.add(pod.uid)
                    self._copy(pod)
                    continue
            except CharlieError as exc:
                log.warning("cannot stream node 0's log: %s", exc)
                return
            except Exception as exc:  # a dropped stream: the job's status still decides
                if self._final.is_set():
                    return
                log.debug("log stream of %s ended: %s", self.job, exc)
            if final:
                return
            self._final.wait(self.poll_s)

    def _copy(self, pod: Pod) -> None:
        log.info("streaming the log of node 0 (pod %s)", pod.name)
        self._response = response = self.cluster.log_stream(pod.name)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            for chunk in _chunks(response):
                self.out.write(decoder.decode(chunk))
                self.out.flush()
        finally:
            self._response = None
            response.release_conn()

    def finish(self, grace_s: float) -> None:
        """Let the stream drain (the pod has ended), then stop."""
        self._final.set()
        self.join(grace_s)
        response = self._response
        if response is not None:
            response.close()  # a stream that does not end: stop reading it
        self.join(5)


# --------------------------------------------------------------------------- staging


def tree_digest(root: Path) -> str:
    """sha256 over a folder's relative paths and file contents (identical trees, same digest)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def stage(src: Path, dest: Path) -> bool:
    """Copy folder ``src`` to ``dest`` unless an earlier attempt copied identical content there.

    Returns whether it copied. ``<dest>.sha256`` records what a finished copy holds.
    """
    if not src.is_dir():
        raise CharlieError(f"{src} is not a folder: pass the input artifact's local path.")
    stamp = dest.with_name(dest.name + ".sha256")
    digest = tree_digest(src)
    if dest.is_dir() and stamp.is_file() and stamp.read_text().strip() == digest:
        log.info("%s is already on the volume at %s", src, dest)
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    stamp.write_text(digest + "\n")
    log.info("staged %s at %s", src, dest)
    return True


# --------------------------------------------------------------------------- the launcher


@dataclass(frozen=True)
class Launch:
    """One ``charlie train-job`` call: the run, its artifacts, the nodes, the limits."""

    run_id: str
    config: str  # the training config's path inside the image
    base_model: Path
    dataset_dir: Path
    output_dir: Path
    nodes: Nodes
    smoke_test: bool = False
    namespace: str | None = None
    work_dir: str | None = None  # default <cache_mount>/runs/<run_id>
    timeout_s: float = 24 * 3600
    poll_s: float = 10

    @property
    def name(self) -> str:
        return job_name(self.run_id)

    @property
    def work(self) -> Path:
        return Path(self.work_dir or f"{self.nodes.cache_mount}/runs/{self.run_id}")

    def train_args(self) -> list[str]:
        """The ``charlie train`` flags every node gets: inputs, outputs and checkpoints on the PVC."""
        inputs = self.work / "inputs"
        return [
            "--config", self.config,
            "--base-model", str(inputs / "base_model"),
            "--dataset-dir", str(inputs / "tokenized"),
            "--output-dir", str(self.work / "model"),
            "--checkpoint-dir", f"{self.nodes.cache_mount}/checkpoints/{self.run_id}",
            f"--smoke-test={str(self.smoke_test).lower()}",
            "--merge",
        ]  # fmt: skip

    def job_spec(self) -> JobSpec:
        deadline_s = int(self.timeout_s) or None
        return JobSpec(self.name, self.run_id, tuple(self.train_args()), self.nodes, deadline_s)


def launch(
    request: Launch, *, cluster: Cluster | None = None, out: TextIO | None = None
) -> dict[str, Any]:
    """Run the TrainJob for ``request`` to the end; returns the model's final train metrics.

    Attaches to the run's TrainJob when an earlier attempt submitted it (running or complete),
    resubmits one that failed, deletes it once finished.

    Raises:
        CharlieError: The job failed or timed out (it is deleted), or the cluster refused.
    """
    started = time.monotonic()
    out = out if out is not None else sys.stdout
    name, work = request.name, request.work
    marker = work / DONE_MARKER
    cluster = cluster or Cluster(request.namespace)

    if marker.is_file():
        log.info("an earlier attempt finished TrainJob %s: collecting its model", name)
    else:
        _submit_or_attach(request, cluster)

    if not marker.is_file():
        remaining = request.timeout_s - (time.monotonic() - started)
        state = follow(cluster, name, timeout_s=remaining, poll_s=request.poll_s, out=out)
        kind, reason, message = state
        if kind == "Failed":
            cluster.delete_job(name)
            raise CharlieError(
                f"TrainJob {name} failed ({reason or 'no reason given'}): "
                f"{_sentence(message) or 'no message'}; node 0's log is above."
            )
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"trainjob": name, "reason": reason}) + "\n")
    cluster.delete_job(name)
    return collect(work / "model", request.output_dir, name)


def _submit_or_attach(request: Launch, cluster: Cluster) -> None:
    """Attach to the run's TrainJob, or (none, or a failed one) stage the inputs and submit it."""
    name, work = request.name, request.work
    job = cluster.get_job(name)
    if job is not None and _owner(job) not in (request.run_id, None):
        raise CharlieError(
            f"TrainJob {name} in namespace {cluster.namespace} belongs to run {_owner(job)}, "
            f"not {request.run_id}: delete it or pass another --run-id."
        )
    if job is not None and (job_state(job) or ("",))[0] == "Failed":
        log.info("an earlier attempt's TrainJob %s failed: deleting it to submit again", name)
        cluster.delete_job(name)
        cluster.wait_deleted(name)
        job = None
    if job is not None:
        log.info("attaching to TrainJob %s, which an earlier attempt of this run submitted", name)
        return
    stage(request.base_model, work / "inputs" / "base_model")
    stage(request.dataset_dir, work / "inputs" / "tokenized")
    nodes = request.nodes
    if cluster.create_job(build_trainjob(request.job_spec())) is None:
        log.info("TrainJob %s exists already (another attempt submitted it): attaching", name)
    else:
        log.info(
            "submitted TrainJob %s in namespace %s: %d nodes x %d processes, runtime %s",
            name, cluster.namespace, nodes.count, nodes.procs, nodes.runtime,
        )  # fmt: skip


def _owner(job: Mapping[str, Any]) -> str | None:
    return (job.get("metadata", {}).get("annotations") or {}).get(RUN_ID_ANNOTATION)


def follow(
    cluster: Cluster, name: str, *, timeout_s: float, poll_s: float, out: TextIO
) -> tuple[str, str, str]:
    """Poll the TrainJob until it finishes, streaming node 0's log; delete it on timeout."""
    deadline = time.monotonic() + timeout_s
    follower = LogFollower(cluster, name, out, poll_s)
    follower.start()
    try:
        while True:
            job = cluster.get_job(name)
            if job is None:
                raise CharlieError(
                    f"TrainJob {name} was deleted before it finished (by something other than "
                    "this step): run the step again."
                )
            state = job_state(job)
            if state is not None:
                log.info("TrainJob %s: %s (%s)", name, state[0], state[1] or "no reason")
                return state
            if time.monotonic() >= deadline:
                pod = follower.pod
                where = (
                    f"node 0's pod {pod.name} is {pod.phase}{f' ({pod.reason})' if pod.reason else ''}"
                    if pod else "no pod of node 0 was created"
                )  # fmt: skip
                cluster.delete_job(name)
                raise CharlieError(
                    f"TrainJob {name} did not finish within {timeout_s:.0f}s ({where}), so it "
                    "was deleted: raise --timeout or check the cluster's GPU capacity."
                )
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())) or 0.05)
    finally:
        follower.finish(grace_s=max(poll_s * 3, 10))


def collect(model_dir: Path, output_dir: Path, name: str) -> dict[str, Any]:
    """Copy the trained model into the step's output; returns manifest.json's final metrics."""
    manifest = model_dir / "manifest.json"
    if not manifest.is_file():
        raise CharlieError(
            f"TrainJob {name} completed but left no {manifest}: check node 0's log above."
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_dir, output_dir, dirs_exist_ok=True)
    log.info("copied the model from %s to %s", model_dir, output_dir)
    return json.loads(manifest.read_text(encoding="utf-8")).get("final_metrics") or {}
