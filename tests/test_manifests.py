"""manifests/ and .github/workflows/: valid YAML of the expected kinds, in step with the pipeline.

The Kubernetes manifests parse, carry no secret value, name what the compiled pipeline expects
(its Secrets, its ReadWriteMany PVC, the train-job step's RBAC) and render with kustomize; the Pipeline/PipelineVersion manifest is a
fresh `kfp dsl compile --kubernetes-manifest-format`. The workflows parse, trigger when they
should, and every `make`, `charlie` and `dvc` command they run exists.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
BASE = MANIFESTS / "base"
WORKFLOWS = REPO / ".github" / "workflows"
PIPELINE_MANIFEST = BASE / "pipeline.yaml"

# `kfp dsl compile` flags that produce manifests/base/pipeline.yaml (the Makefile's `manifests`).
KFP_MANIFEST_FLAGS = ["--kubernetes-manifest-format", "--include-pipeline-manifest"]
KFP_MANIFEST_FLAGS += ["--namespace", "charlie"]

EXPECTED_KINDS: dict[str, list[str]] = {
    "base/kustomization.yaml": ["Kustomization"],
    "base/namespace.yaml": ["Namespace"],
    "base/pvc.yaml": ["PersistentVolumeClaim"],
    "base/secrets.yaml": ["Secret", "Secret", "Secret"],
    "base/serviceaccount.yaml": ["ServiceAccount"],
    "base/pipeline.yaml": ["Pipeline", "PipelineVersion"],
    "base/rbac.yaml": ["Role", "RoleBinding"],
    "overlays/dev/kustomization.yaml": ["Kustomization"],
    "overlays/prod/kustomization.yaml": ["Kustomization"],
}
RENDERED_KINDS = Counter(
    {"Namespace": 1, "PersistentVolumeClaim": 1, "ServiceAccount": 1, "Secret": 3}
    | {"Role": 1, "RoleBinding": 1, "Pipeline": 1, "PipelineVersion": 1}
)
OVERLAY_NAMESPACES = {"dev": "charlie-dev", "prod": "charlie"}

# Programs a workflow `run:` may call besides make, charlie and dvc (shell syntax included).
SHELL_WORDS = {"echo", "if", "then", "else", "fi", "[", "{", "}", "true", "test"}


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _by_kind(kind: str) -> list[dict]:
    return [
        doc for path in sorted(BASE.glob("*.yaml")) for doc in _docs(path) if doc["kind"] == kind
    ]


# --------------------------------------------------------------------------- manifests


def test_every_manifest_file_is_expected_and_parses_to_its_kinds():
    found = {str(p.relative_to(MANIFESTS)) for p in MANIFESTS.rglob("*.yaml")}
    assert found == set(EXPECTED_KINDS), "a manifest was added or removed: update EXPECTED_KINDS"
    for rel, kinds in EXPECTED_KINDS.items():
        docs = _docs(MANIFESTS / rel)
        assert [doc.get("kind") for doc in docs] == kinds, rel
        for doc in docs:
            assert doc.get("apiVersion"), rel
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], rel


def test_kustomization_resources_exist_on_disk():
    for kustomization in MANIFESTS.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        assert spec["resources"], kustomization
        for resource in spec["resources"]:
            assert (kustomization.parent / resource).exists(), f"{kustomization}: {resource}"
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, "every base manifest is a kustomize resource"


def test_secrets_are_templates_without_values():
    secrets = [
        doc for p in MANIFESTS.rglob("*.yaml") for doc in _docs(p) if doc["kind"] == "Secret"
    ]
    assert secrets
    for secret in secrets:
        for field in ("data", "stringData"):
            values = secret.get(field) or {}
            assert not any(values.values()), f"{secret['metadata']['name']} holds a value"
        assert secret["metadata"]["annotations"]["charlie/keys"], "the keys to fill are named"
    for path in MANIFESTS.rglob("*.yaml"):
        text = path.read_text()
        assert not re.search(r"(?i)(hf_[a-z0-9]{20,}|AKIA[0-9A-Z]{16})", text), path


def test_the_cluster_provides_what_the_compiled_pipeline_uses():
    pipeline_text = (REPO / "pipelines" / "sft_pipeline.yaml").read_text()
    used_secrets = set(re.findall(r"^\s+secretName: (\S+)$", pipeline_text, re.M))
    assert used_secrets == {"charlie-hf", "charlie-eodhd", "charlie-s3"}
    assert used_secrets <= {doc["metadata"]["name"] for doc in _by_kind("Secret")}

    docs = list(yaml.safe_load_all(pipeline_text))
    cache_pvc = docs[0]["root"]["inputDefinitions"]["parameters"]["cache_pvc"]["defaultValue"]
    assert cache_pvc in {doc["metadata"]["name"] for doc in _by_kind("PersistentVolumeClaim")}

    (pvc,) = _by_kind("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # a TrainJob's nodes share it
    assert not _by_kind("CronJob")  # scheduled retraining: `charlie submit --schedule`


def test_the_train_job_step_may_do_what_it_does():
    """charlie train-job submits, follows and deletes TrainJobs and reads node 0's pod log."""
    from charlie.kubeflow import trainjob

    (account,) = _by_kind("ServiceAccount")
    assert account["metadata"]["name"] == "charlie-pipeline-runner"
    (role,) = _by_kind("Role")
    (binding,) = _by_kind("RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}  # fmt: skip
    (subject,) = binding["subjects"]
    assert (subject["kind"], subject["name"]) == ("ServiceAccount", account["metadata"]["name"])
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for verb in ("create", "get", "list", "watch", "delete"):
        assert (trainjob.GROUP, trainjob.PLURAL, verb) in granted
    for resource in ("pods", "pods/log"):
        for verb in ("get", "list", "watch"):
            assert ("", resource, verb) in granted
    (namespace,) = _by_kind("Namespace")
    assert namespace["metadata"]["name"] == "charlie"


def test_pipeline_manifest_is_a_fresh_kubernetes_manifest_compile(tmp_path):
    kfp = Path(sys.executable).with_name("kfp")
    if not kfp.exists():
        pytest.skip("the kfp CLI is not installed (pip install -e '.[kfp]')")
    out = tmp_path / "pipeline.yaml"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [str(kfp), "dsl", "compile", "--py", "pipelines/sft_pipeline.py", "--output", str(out)]
    subprocess.run(cmd + KFP_MANIFEST_FLAGS, cwd=REPO, env=env, check=True, capture_output=True)
    assert _docs(PIPELINE_MANIFEST) == _docs(out), "stale: run `make manifests` and commit it"

    pipeline, version = _docs(PIPELINE_MANIFEST)
    assert pipeline["metadata"]["name"] == version["spec"]["pipelineName"] == "charlie-sft"
    # The same spec as the committed pipelines/sft_pipeline.yaml.
    spec, platform = _docs(REPO / "pipelines" / "sft_pipeline.yaml")
    assert version["spec"]["pipelineSpec"] == spec
    assert version["spec"]["platformSpec"] == platform


@pytest.mark.parametrize("overlay", sorted(OVERLAY_NAMESPACES))
def test_overlays_render_with_kustomize(overlay):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert Counter(doc["kind"] for doc in docs) == RENDERED_KINDS
    namespace = OVERLAY_NAMESPACES[overlay]
    for doc in docs:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == namespace
        else:
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
    (binding,) = (doc for doc in docs if doc["kind"] == "RoleBinding")
    assert binding["subjects"][0]["namespace"] == namespace
    (pvc,) = (doc for doc in docs if doc["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["resources"]["requests"]["storage"].endswith("Gi")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


# --------------------------------------------------------------------------- workflows


def _workflow(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the bare key `on` as True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", text, re.M))


def _commands(script: str) -> list[list[str]]:
    """Each simple command in a `run:` script, as words (shell keywords and redirects dropped)."""
    commands = []
    for line in script.splitlines():
        for part in re.split(r";|&&|\|\||\|", line):
            words = shlex.split(part, comments=True)
            while words and words[0] in {"if", "then", "else", "{", "}", "!"}:
                words = words[1:]
            if ">>" in words:
                words = words[: words.index(">>")]
            if words:
                commands.append(words)
    return commands


def _check_charlie(args: list[str]) -> None:
    from charlie.cli import STAGES, build_parser

    sub = args[0]
    assert sub in STAGES, f"charlie {sub} is not a subcommand"
    build_parser(args).parse_args(args)  # exits (SystemExit) on an unknown flag


def _check_dvc(args: list[str]) -> None:
    parser = pytest.importorskip("dvc.cli.parser")
    parser.get_main_parser().parse_args(args)  # exits (SystemExit) on a bad subcommand or flag


def _check_run_steps(workflow: dict) -> list[str]:
    targets = _make_targets()
    programs = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            assert "uses" in step or "run" in step, step
            for words in _commands(step.get("run", "")):
                program, args = words[0], words[1:]
                programs.append(" ".join(words[:2]))
                if program == "make":
                    assert args and set(args) <= targets, f"make {args}: no such target"
                elif program == "charlie":
                    _check_charlie(args)
                elif program == "dvc":
                    _check_dvc(args)
                else:
                    assert program in SHELL_WORDS, f"unexpected program {program!r}"
    return programs


def test_ci_runs_make_test_on_push_and_pull_request():
    workflow = _workflow("ci.yml")
    assert {"push", "pull_request"} <= set(workflow["on"])
    (job,) = workflow["jobs"].values()
    uses = [step.get("uses", "") for step in job["steps"]]
    assert any(u.startswith("actions/checkout@") for u in uses)
    (setup,) = (s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@"))
    assert str(setup["with"]["python-version"]) == "3.11"
    assert "make test" in _check_run_steps(workflow)


def test_retrain_triggers_on_data_changes_schedule_and_by_hand():
    triggers = _workflow("retrain.yml")["on"]
    assert {"push", "schedule", "workflow_dispatch"} <= set(triggers)
    assert triggers["push"]["branches"] == ["main"]
    assert {"data/**", "params.yaml", "configs/**", "**/*.dvc"} <= set(triggers["push"]["paths"])
    (schedule,) = triggers["schedule"]
    assert len(schedule["cron"].split()) == 5


def test_retrain_pulls_compiles_submits_and_reports_metrics():
    workflow = _workflow("retrain.yml")
    programs = _check_run_steps(workflow)
    order = ["make install", "dvc pull", "make pipeline", "charlie submit", "dvc metrics"]
    positions = [programs.index(p) for p in order]
    assert positions == sorted(positions), programs

    (job,) = workflow["jobs"].values()
    steps = " ".join(step.get("run", "") for step in job["steps"])
    assert "--wait --fetch-metrics" in steps and "$GITHUB_STEP_SUMMARY" in steps
    # The model comes back as a DVC-tracked output and goes to the remote.
    assert "--fetch-model models/kfp" in steps and "dvc push models/kfp.dvc" in steps
    # Credentials only from the CI secret store.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KFP_HOST", "KFP_PIPELINE_ROOT"):
        assert job["env"][name] == f"${{{{ secrets.{name} }}}}"
