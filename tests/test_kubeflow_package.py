"""charlie.kubeflow.package: when the pipeline is recompiled, its parameters and their values."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from charlie.errors import CharlieError
from charlie.kubeflow import package

REPO = Path(__file__).resolve().parents[1]
COMPILED = REPO / package.PIPELINE_YAML


def test_parameters_are_read_from_the_compiled_yaml():
    params = package.pipeline_parameters(COMPILED)
    spec = next(yaml.safe_load_all(COMPILED.read_text()))
    assert set(params) == set(spec["root"]["inputDefinitions"]["parameters"])
    assert params["smoke_test"] == "BOOLEAN" and params["eval_limit"] == "NUMBER_INTEGER"


def test_the_pipeline_name_is_the_compiled_one():
    spec = next(yaml.safe_load_all(COMPILED.read_text()))
    assert package.pipeline_name(COMPILED) == spec["pipelineInfo"]["name"] == "charlie-sft"


def test_needs_compile_follows_mtimes(tmp_path: Path):
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "components" / "train").mkdir(parents=True)
    source = tmp_path / "pipelines" / "sft_pipeline.py"
    component = tmp_path / "components" / "train" / "component.py"
    target = tmp_path / "pipelines" / "sft_pipeline.yaml"
    source.write_text("")
    component.write_text("")
    assert package.needs_compile(tmp_path)  # missing
    target.write_text("")
    old = time.time() - 100
    os.utime(source, (old, old))
    os.utime(component, (old, old))
    assert not package.needs_compile(tmp_path)
    os.utime(component, None)
    os.utime(target, (old + 1, old + 1))
    assert package.needs_compile(tmp_path)  # a component is newer


def test_params_are_typed_by_the_pipeline():
    known = {"name": "STRING", "flag": "BOOLEAN", "n": "NUMBER_INTEGER", "x": "NUMBER_DOUBLE"}
    items = ["name=123", "flag=true", "n=5", "x=2"]
    assert package.parse_params(items, known) == {"name": "123", "flag": True, "n": 5, "x": 2}
    with pytest.raises(CharlieError, match="not a valid NUMBER_INTEGER value"):
        package.parse_params(["n=true"], known)
    with pytest.raises(CharlieError, match="is not NAME=VALUE; parameters: flag, n, name, x"):
        package.parse_params(["n"], known)


def test_the_kubeflow_library_imports_no_sdk_until_it_calls_one():
    """kfp, its API client, boto3 and PyYAML are imported by the calls that need them."""
    heavy = ["kfp", "kfp_server_api", "urllib3", "boto3", "botocore", "yaml", "pydantic"]
    code = (
        "import sys; import charlie.kubeflow.package, charlie.kubeflow.client, "
        "charlie.kubeflow.artifacts; "
        f"print(sorted(set({heavy!r}) & {{m.split('.')[0] for m in sys.modules}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
