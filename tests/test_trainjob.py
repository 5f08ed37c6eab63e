"""charlie train-job: the TrainJob it builds (checked against Trainer's CRD), and the launcher
against a fake Kubernetes API that runs each node as a local process (tests/k8s_server.py)."""

from __future__ import annotations

import argparse
import copy
import io
import json
import sys
import threading
from pathlib import Path

import pytest

from charlie.errors import CharlieError
from charlie.kubeflow import trainjob
from charlie.kubeflow.trainjob import (
    JobSpec,
    Nodes,
    build_trainjob,
    job_name,
    node_command,
    node_env,
)
from charlie.stages import train_job
from tests.k8s_server import FakeKube, validation_errors

RUN_ID = "3f2a9c1e-7b4d-4e8a-9f00-1234567890ab"
IMAGE = "ghcr.io/charlie-mlops/charlie-cuda:0.1.0"

# A stand-in for `torchrun -m charlie.cli train`: checks its inputs and env, prints a log,
# and (node 0) writes what charlie train writes: manifest.json with final_metrics, an adapter.
FAKE_NODE = r"""
import argparse, json, os, sys
from pathlib import Path
p = argparse.ArgumentParser()
for flag in ("--config", "--base-model", "--dataset-dir", "--output-dir", "--checkpoint-dir",
             "--smoke-test"):
    p.add_argument(flag)
p.add_argument("--merge", action="store_true")
a = p.parse_args()
rank = int(os.environ["PET_NODE_RANK"])
assert os.environ["PET_NNODES"] == "2" and os.environ["PET_NPROC_PER_NODE"] == "4"
assert (Path(a.base_model) / "config.json").is_file(), a.base_model
assert (Path(a.dataset_dir) / "dataset_dict.json").is_file(), a.dataset_dir
print(f"node {rank}: training on {os.environ['PET_MASTER_ADDR']}:{os.environ['PET_MASTER_PORT']}")
print(f"node {rank}: HF_HOME={os.environ['HF_HOME']} HF_TOKEN={os.environ.get('HF_TOKEN', '-')}")
print(f"node {rank}: smoke-test={a.smoke_test} merge={a.merge} config={a.config}", flush=True)
if os.environ.get("FAKE_FAIL_RANK") == str(rank):
    print(f"node {rank}: CUDA out of memory", flush=True)
    sys.exit(3)
if rank == 0:
    out = Path(a.output_dir)
    (out / "merged").mkdir(parents=True, exist_ok=True)
    (out / "adapter_model.safetensors").write_bytes(b"weights")
    (out / "adapter_config.json").write_text("{}")
    (out / "merged" / "model.safetensors").write_bytes(b"merged")
    metrics = {"train_loss": 1.25, "eval_loss": 1.5, "global_step": 10}
    (out / "manifest.json").write_text(json.dumps({"final_metrics": metrics}))
print(f"node {rank}: done", flush=True)
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """Artifacts, the PVC folder, a fake node script; KUBECONFIG set per FakeKube."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("FAKE_FAIL_RANK", raising=False)
    base = tmp_path / "artifacts" / "base_model"
    base.mkdir(parents=True)
    (base / "config.json").write_text('{"model_type": "llama"}')
    (base / "model.safetensors").write_bytes(b"\0" * 1024)
    tokenized = tmp_path / "artifacts" / "tokenized"
    (tokenized / "train").mkdir(parents=True)
    (tokenized / "dataset_dict.json").write_text('{"splits": ["train"]}')
    (tokenized / "train" / "data.arrow").write_bytes(b"rows")
    script = tmp_path / "fake_node.py"
    script.write_text(FAKE_NODE)
    pvc = tmp_path / "pvc"
    pvc.mkdir()

    def rewrite(command):
        assert command[:4] == node_command([])
        return [sys.executable, str(script), *command[4:]]

    def kube(**kwargs) -> FakeKube:
        kwargs.setdefault("rewrite", rewrite)
        kwargs.setdefault("cwd", tmp_path)
        kwargs.setdefault("secrets", {"charlie-hf": {"token": "hf_fake"}})
        server = FakeKube(**kwargs)
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path)))
        return server

    return argparse.Namespace(tmp=tmp_path, base=base, tokenized=tokenized, pvc=pvc, kube=kube)


def _argv(s, *extra: str) -> list[str]:
    out = s.tmp / "outputs"
    return [
        "--run-id", RUN_ID, "--image", IMAGE, "--config", "configs/sft_config_multigpu.yaml",
        "--base-model", str(s.base), "--dataset-dir", str(s.tokenized),
        "--output-dir", str(out / "model"), "--cache-mount", str(s.pvc),
        "--num-nodes", "2", "--gpus-per-node", "4", "--smoke-test=true",
        "--poll-interval", "0.1", "--timeout", "60",
        "--kfp-executor-input", json.dumps({"outputs": {
            "outputFile": str(out / "executor_output.json"),
            "artifacts": {"metrics": {"artifacts": [{"name": "metrics", "uri": str(out / "metrics"),
                                                     "type": {"schemaTitle": "system.Metrics"}}]}},
        }}),
        *extra,
    ]  # fmt: skip


def _run_stage(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=train_job.__doc__)
    train_job.add_arguments(parser)
    return train_job.run(parser.parse_args(argv))


def _spec(deadline_s: int | None = 3600, **nodes) -> JobSpec:
    """A TrainJob's spec: three 8-GPU nodes with every field set, but for ``nodes``' changes."""
    fields = dict(
        image=IMAGE, count=3, gpus=8, node_selector={"cloud.google.com/gke-nodepool": "gpu"},
        cpu="32", memory="256Gi", shm_size="64Gi", service_account="trainer",
    )  # fmt: skip
    return JobSpec(name=job_name(RUN_ID), run_id=RUN_ID, train_args=("--config", "c.yaml"),
                   nodes=Nodes(**(fields | nodes)), deadline_s=deadline_s)  # fmt: skip


# --------------------------------------------------------------------------- pure parts


def test_node_env_is_what_trainers_torch_plugin_sets():
    # kubeflow/trainer v2.3.0 pkg/constants: PET_* names, ContainerTrainerPort 29500, and the
    # master address <job>-node-0-0.<job> (pkg/runtime/framework/plugins/torch/torch.go).
    assert node_env(2, 1, 8, "10.0.0.1") == {
        "PET_NNODES": "2", "PET_NPROC_PER_NODE": "8", "PET_NODE_RANK": "1",
        "PET_MASTER_ADDR": "10.0.0.1", "PET_MASTER_PORT": "29500",
    }  # fmt: skip
    assert trainjob.master_addr("charlie-x") == "charlie-x-node-0-0.charlie-x"
    assert node_command(["--merge"]) == ["torchrun", "-m", "charlie.cli", "train", "--merge"]


def test_job_name_is_deterministic_and_a_dns_label():
    name = job_name(RUN_ID)
    assert name == job_name(RUN_ID) != job_name(RUN_ID + "x")
    assert name.startswith("charlie-3f2a9c1e-7b4d-4e8a") and len(name) <= 40
    assert job_name("Run_ID with spaces/and:colons" * 5).replace("-", "").isalnum()
    with pytest.raises(CharlieError, match="--run-id is empty"):
        job_name(" ")


def test_build_trainjob_sets_every_field_and_conforms_to_the_crd():
    job = build_trainjob(_spec())
    assert validation_errors(job) == []
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["metadata"]["name"] == job_name(RUN_ID)
    assert job["metadata"]["annotations"] == {"charlie.dev/run-id": RUN_ID}
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "charlie"
    spec = job["spec"]
    assert spec["runtimeRef"] == {
        "name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
    }  # fmt: skip
    assert spec["activeDeadlineSeconds"] == 3600
    trainer = spec["trainer"]
    assert trainer["image"] == IMAGE
    assert trainer["command"] == ["torchrun", "-m", "charlie.cli", "train", "--config", "c.yaml"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 8
    resources = {"nvidia.com/gpu": "8", "cpu": "32", "memory": "256Gi"}
    assert trainer["resourcesPerNode"] == {"requests": resources, "limits": resources}
    env = {e["name"]: e for e in trainer["env"]}
    assert env["HF_HOME"]["value"] == "/mnt/charlie-cache/huggingface"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "charlie-hf", "key": "token", "optional": True}  # fmt: skip
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["key"] == "access_key_id"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "charlie-s3", "key": "secret_access_key", "optional": True}  # fmt: skip
    assert not any(name.startswith("PET_") for name in env)  # Trainer rejects reserved names

    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == "charlie.dev/train-job"
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == "node"
    pod = replicated["template"]["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "charlie-cache", "persistentVolumeClaim": {"claimName": "charlie-cache"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    # the restricted Pod Security profile, with a read-only root and a writable /tmp ($HOME)
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001,
        "runAsGroup": 10001, "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
    (container,) = pod["containers"]
    assert container == {"name": "node", "volumeMounts": [
        {"name": "charlie-cache", "mountPath": "/mnt/charlie-cache"},
        {"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": True}}  # fmt: skip
    assert env["HOME"]["value"] == "/tmp"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-nodepool": "gpu"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]  # fmt: skip
    assert pod["serviceAccountName"] == "trainer"


def test_build_trainjob_minimal_cpu_job_conforms():
    job = build_trainjob(_spec(gpus=0, node_selector={}, cpu=None, memory=None,
                               shm_size=None, deadline_s=None, service_account=None,
                               hf_secret=None, s3_secret=None, gpu_resource="amd.com/gpu"))  # fmt: skip
    assert validation_errors(job) == []
    trainer = job["spec"]["trainer"]
    assert "resourcesPerNode" not in trainer and trainer["numProcPerNode"] == 1
    assert [e["name"] for e in trainer["env"]] == ["HF_HOME", "PYTHONUNBUFFERED", "HOME"]
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    pod = pod["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "nodeSelector" not in pod


def test_the_schema_rejects_what_the_api_server_would():
    job = build_trainjob(_spec())
    bad = copy.deepcopy(job)
    bad["spec"]["trainer"]["numNodes"] = "3"
    assert validation_errors(bad) == ["spec.trainer.numNodes: '3' is not of type 'integer'"]
    bad = copy.deepcopy(job)
    bad["spec"]["trainer"]["nodeSelector"] = {"a": "b"}  # belongs in runtimePatches
    assert "'nodeSelector' was unexpected" in validation_errors(bad)[0]
    bad = copy.deepcopy(job)
    bad["spec"]["runtimeRef"]["name"] = ""
    assert "spec.runtimeRef.name" in validation_errors(bad)[0]
    bad = copy.deepcopy(job)
    bad["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] = 2  # int-or-string
    assert validation_errors(bad) == []
    bad["metadata"]["name"] = "Charlie_Run"
    assert validation_errors(bad) == [
        "metadata.name: 'Charlie_Run' is not an RFC 1035 label of at most 63 chars"]  # fmt: skip

    with FakeKube() as kube:
        bad = copy.deepcopy(job)
        bad["spec"]["trainer"]["numNodes"] = "3"
        assert kube.submit(bad) == 422
        assert kube.jobs == {}
        assert kube.submit(job) == 201 and kube.submit(job) == 409


def test_stage_skips_a_copy_of_identical_content(setup):
    dest = setup.pvc / "runs" / "r" / "inputs" / "base_model"
    assert trainjob.stage(setup.base, dest) is True
    assert (dest / "config.json").read_text() == '{"model_type": "llama"}'
    assert trainjob.stage(setup.base, dest) is False
    (setup.base / "config.json").write_text('{"model_type": "qwen2"}')
    assert trainjob.stage(setup.base, dest) is True
    assert (dest / "config.json").read_text() == '{"model_type": "qwen2"}'
    with pytest.raises(CharlieError, match="is not a folder"):
        trainjob.stage(setup.tmp / "missing", dest)


# --------------------------------------------------------------------------- the launcher


def test_train_job_runs_the_nodes_streams_node_0_and_returns_the_model(setup, capsys):
    with setup.kube() as kube:
        assert _run_stage(_argv(setup, "--shm-size", "32Gi")) == 0
        name = job_name(RUN_ID)
        (create,) = kube.calls("POST", kube.trainjobs_path)
        assert validation_errors(create.body) == []
        assert create.query.get("fieldValidation") == "Strict"
        assert kube.calls("DELETE", f"{kube.trainjobs_path}/{name}")
        assert kube.jobs == {}

    work = setup.pvc / "runs" / RUN_ID
    assert (work / "inputs" / "base_model" / "model.safetensors").stat().st_size == 1024
    assert (work / "inputs" / "tokenized" / "train" / "data.arrow").read_bytes() == b"rows"
    command = create.body["spec"]["trainer"]["command"]
    assert command == node_command([
        "--config", "configs/sft_config_multigpu.yaml",
        "--base-model", str(work / "inputs" / "base_model"),
        "--dataset-dir", str(work / "inputs" / "tokenized"),
        "--output-dir", str(work / "model"),
        "--checkpoint-dir", f"{setup.pvc}/checkpoints/{RUN_ID}",
        "--smoke-test=true", "--merge",
    ])  # fmt: skip

    out = capsys.readouterr().out
    assert "node 0: training on 127.0.0.1:" in out and "node 0: done" in out
    assert f"HF_HOME={setup.pvc}/huggingface HF_TOKEN=hf_fake" in out
    assert "node 1:" not in out  # only node 0's log is streamed
    model = setup.tmp / "outputs" / "model"
    assert (model / "adapter_model.safetensors").read_bytes() == b"weights"
    assert (model / "merged" / "model.safetensors").read_bytes() == b"merged"
    executor = json.loads((setup.tmp / "outputs" / "executor_output.json").read_text())
    metadata = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metadata == {"train_loss": 1.25, "eval_loss": 1.5, "global_step": 10}

    # The step retried after it finished: nothing is submitted again, the model is copied again.
    with setup.kube() as kube:
        assert _run_stage(_argv(setup)) == 0
        assert kube.calls("POST", kube.trainjobs_path) == []


def test_a_failed_node_fails_the_step_in_one_sentence(setup, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_FAIL_RANK", "1")
    with setup.kube() as kube, pytest.raises(CharlieError) as raised:
        _run_stage(_argv(setup))
    message = str(raised.value)
    name = job_name(RUN_ID)
    assert message.startswith(f"TrainJob {name} failed (FailedJobs): jobset failed: node 1's pod")
    assert message.endswith("exited with code 3; node 0's log is above.")
    assert "\n" not in message and message.count(". ") == 0
    assert kube.jobs == {}  # deleted, so a retried step submits a fresh one
    assert "node 0: training" in capsys.readouterr().out


def test_a_job_that_never_starts_times_out_and_is_deleted(setup):
    with setup.kube(mode="pending") as kube, pytest.raises(CharlieError) as raised:
        _run_stage(_argv(setup, "--timeout", "1"))
    name = job_name(RUN_ID)
    message = str(raised.value)
    assert message.startswith(f"TrainJob {name} did not finish within 1s (node 0's pod {name}-")
    assert "is Pending), so it was deleted: raise --timeout" in message
    assert kube.calls("DELETE", f"{kube.trainjobs_path}/{name}") and kube.jobs == {}


def test_a_retried_step_attaches_to_its_running_job(setup, capsys):
    launch = train_job_request(setup)
    with setup.kube(mode="hold") as kube:
        # The first attempt submitted the job (its inputs staged), then its pod was lost.
        trainjob.stage(setup.base, launch.work / "inputs" / "base_model")
        trainjob.stage(setup.tokenized, launch.work / "inputs" / "tokenized")
        assert kube.submit(build_trainjob(launch.job_spec())) == 201
        threading.Timer(0.5, kube.release, [launch.name]).start()
        assert _run_stage(_argv(setup)) == 0
        assert len(kube.calls("POST", kube.trainjobs_path)) == 1  # the first attempt's only
    captured = capsys.readouterr()
    assert "attaching to TrainJob" in captured.err and "node 0: done" in captured.out
    assert (setup.tmp / "outputs" / "model" / "manifest.json").is_file()


def test_a_completed_job_is_not_resubmitted(setup):
    launch = train_job_request(setup)
    with setup.kube() as kube:
        trainjob.stage(setup.base, launch.work / "inputs" / "base_model")
        trainjob.stage(setup.tokenized, launch.work / "inputs" / "tokenized")
        assert kube.submit(build_trainjob(launch.job_spec())) == 201
        assert kube.wait_finished(launch.name)["status"]["conditions"][0]["type"] == "Complete"
        metrics = trainjob.launch(launch, out=io.StringIO())
        assert len(kube.calls("POST", kube.trainjobs_path)) == 1
        assert kube.jobs == {}
    assert metrics["train_loss"] == 1.25
    assert (setup.tmp / "outputs" / "model" / "adapter_config.json").is_file()


def train_job_request(setup) -> trainjob.Launch:
    return trainjob.Launch(
        run_id=RUN_ID, config="configs/sft_config_multigpu.yaml", base_model=setup.base,
        dataset_dir=setup.tokenized, output_dir=setup.tmp / "outputs" / "model",
        nodes=Nodes(image=IMAGE, count=2, gpus=4, cache_mount=str(setup.pvc)),
        smoke_test=True, timeout_s=60, poll_s=0.1,
    )  # fmt: skip


# --------------------------------------------------------------------------- the cluster says no


def test_missing_rbac_is_one_sentence_naming_the_role(setup):
    with setup.kube(forbid=[("create", "trainjobs")]), pytest.raises(CharlieError) as raised:
        _run_stage(_argv(setup))
    message = str(raised.value)
    assert message.startswith(
        f"the Kubernetes API forbids this step to create trainjobs/{job_name(RUN_ID)} in "
        "namespace charlie (trainjobs.trainer.kubeflow.org is forbidden: User "
    )
    assert message.endswith("the charlie-train-job Role (manifests/base/rbac.yaml).")
    assert "\n" not in message


def test_a_cluster_without_trainer_is_told_what_to_install(setup):
    with setup.kube(crd_installed=False), pytest.raises(CharlieError) as raised:
        _run_stage(_argv(setup))
    assert str(raised.value) == (
        "the TrainJob CRD (trainer.kubeflow.org/v1alpha1 trainjobs) is not installed in this "
        "cluster: install Kubeflow Trainer v2, see manifests/README.md."
    )


def test_an_object_the_api_rejects_is_one_sentence(setup):
    with setup.kube() as kube, pytest.raises(CharlieError) as raised:
        _run_stage(_argv(setup, "--runtime", ""))
    assert str(raised.value).startswith(
        f"the cluster rejected trainjobs/{job_name(RUN_ID)} (422): TrainJob.trainer.kubeflow.org "
    )
    assert "spec.runtimeRef.name" in str(raised.value) and kube.jobs == {}


def test_bad_flags_are_one_sentence(setup, monkeypatch):
    with pytest.raises(CharlieError, match="--node-selector '\\[1\\]' is not a JSON object"):
        _run_stage(_argv(setup, "--node-selector", "[1]"))
    with setup.kube(), pytest.raises(CharlieError, match="no usable KUBECONFIG"):
        monkeypatch.setenv("KUBECONFIG", str(setup.tmp / "missing"))
        _run_stage(_argv(setup))


def test_namespace_flag_then_pod_then_kubeconfig(tmp_path, monkeypatch):
    monkeypatch.setattr(trainjob, "SA_NAMESPACE_FILE", tmp_path / "none")
    assert trainjob._namespace("mine", "ctx") == "mine"
    assert trainjob._namespace(None, "ctx") == "ctx"
    assert trainjob._namespace(None, None) == "default"
    (tmp_path / "ns").write_text("pods-ns\n")
    monkeypatch.setattr(trainjob, "SA_NAMESPACE_FILE", tmp_path / "ns")
    assert trainjob._namespace(None, "ctx") == "pods-ns"


def test_help_is_the_module_docstring():
    parser = argparse.ArgumentParser(description=train_job.__doc__)
    train_job.add_arguments(parser)
    assert "TrainJob" in parser.format_help()
    assert Path(train_job.__file__).name == "train_job.py"
