"""charlie.kubeflow.executor writes the executor output KFP's own Executor writes, without the SDK."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from charlie.cli import main
from charlie.errors import CharlieError
from charlie.kubeflow.executor import confusion_matrix, local_path, publish, scalars

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["BUY", "HOLD", "SELL"]
MATRIX = [[5, 1, 0], [2, 3, 1], [0, 0, 4]]
METRICS = {"accuracy": 0.6, "n": 16, "sharpe_like_1d": -0.25}


def _executor_input(tmp_path: Path, outputs: dict[str, str]) -> dict:
    """Executor input as the KFP driver builds it, with local URIs (path == URI)."""
    return {
        "inputs": {"parameterValues": {}},
        "outputs": {
            "artifacts": {
                name: {
                    "artifacts": [
                        {
                            "name": name,
                            "uri": str(tmp_path / "out" / name),
                            "type": {"schemaTitle": kind, "schemaVersion": "0.0.1"},
                            "metadata": {},
                        }
                    ]
                }
                for name, kind in outputs.items()
            },
            "outputFile": str(tmp_path / "tmp" / "executor_output.json"),
        },
    }


def test_the_executor_output_is_the_one_kfp_writes_for_python_components(tmp_path):
    kfp_executor = pytest.importorskip("kfp.dsl.executor")
    from kfp.dsl import ClassificationMetrics, Metrics, Output

    spec = {"metrics": "system.Metrics", "confusion": "system.ClassificationMetrics"}

    def component(metrics: Output[Metrics], confusion: Output[ClassificationMetrics]):
        for key, value in METRICS.items():
            metrics.log_metric(key, value)
        confusion.log_confusion_matrix(LABELS, MATRIX)

    theirs = _executor_input(tmp_path / "kfp", spec)
    kfp_executor.Executor(theirs, component).execute()
    ours = _executor_input(tmp_path / "charlie", spec)
    written = publish(json.dumps(ours), metrics=METRICS, confusion=(LABELS, MATRIX))

    def normal(path: Path, root: Path) -> dict:
        return json.loads(path.read_text().replace(str(root), "<root>"))

    assert normal(written, tmp_path / "charlie") == normal(
        Path(theirs["outputs"]["outputFile"]), tmp_path / "kfp"
    )
    # The metrics are also a file at the artifact's path, for people downloading it.
    assert json.loads((tmp_path / "charlie" / "out" / "metrics").read_text()) == METRICS


@pytest.mark.parametrize(
    "uri", ["gs://bucket/run/task/metrics", "minio://mlpipeline/v2/artifacts/x/report",
            "s3://bucket/a/b", "/tmp/local/path"],
)  # fmt: skip
def test_artifact_uris_map_to_the_paths_the_launcher_mounts(uri):
    dsl = pytest.importorskip("kfp.dsl")
    assert local_path(uri) == Path(dsl.Artifact(uri=uri).path)


def test_reports_are_copied_and_other_outputs_left_to_the_stage(tmp_path):
    html, md = tmp_path / "report.html", tmp_path / "summary.md"
    html.write_text("<!DOCTYPE html><p>equity</p>")
    md.write_text("# Evaluation\n")
    spec = _executor_input(tmp_path, {"report": "system.HTML", "summary": "system.Markdown",
                                      "portfolio": "system.Dataset"})  # fmt: skip
    written = json.loads(publish(json.dumps(spec), html=html, markdown=md).read_text())
    assert (tmp_path / "out" / "report").read_text() == html.read_text()
    assert (tmp_path / "out" / "summary").read_text() == md.read_text()
    assert sorted(written["artifacts"]) == ["report", "summary"]
    assert not (tmp_path / "out" / "portfolio").exists()


def test_nothing_without_executor_input_or_off_rank_zero(tmp_path, monkeypatch):
    assert publish(None, metrics=METRICS) is None
    monkeypatch.setenv("RANK", "1")
    spec = _executor_input(tmp_path, {"metrics": "system.Metrics"})
    assert publish(json.dumps(spec), metrics=METRICS) is None
    assert not (tmp_path / "tmp").exists()


def test_wrong_input_or_a_missing_report_is_one_sentence(tmp_path):
    with pytest.raises(CharlieError, match="not KFP executor input"):
        publish('{"inputs": {}}', metrics=METRICS)
    with pytest.raises(CharlieError, match="not KFP executor input"):
        publish("{{$}}", metrics=METRICS)  # an unresolved placeholder
    spec = _executor_input(tmp_path, {"report": "system.HTML"})
    with pytest.raises(CharlieError, match=r"declares output 'report' \(system.HTML\); this stage"):
        publish(json.dumps(spec), metrics=METRICS)
    with pytest.raises(ValueError, match="3-label"):
        confusion_matrix(LABELS, [[1, 2, 3]])


def test_scalars_flatten_finite_numbers_only():
    import numpy as np

    tree = {"records": {"train": np.int64(3), "test": 2}, "loss": float("nan"), "ok": True,
            "name": "x", "curve": [1, 2], "sharpe": np.float64(0.5), "a b": {"c": 1.0}}  # fmt: skip
    assert scalars(tree) == {"records_train": 3, "records_test": 2, "sharpe": 0.5, "a_b_c": 1.0}
    assert json.dumps(scalars(tree))  # plain Python numbers


def test_parse_fills_its_metrics_for_the_kfp_ui(tmp_path):
    spec = _executor_input(tmp_path, {"metrics": "system.Metrics"})
    out = tmp_path / "jsonl"
    code = main(["parse", "--input-dir", str(ROOT / "data/samples/xml"),
                 "--out", str(out / "records.jsonl"), "--rejects", str(out / "rejects.jsonl"),
                 "--report", str(out / "report.json"), "--kfp-executor-input", json.dumps(spec)])  # fmt: skip
    assert code == 0
    written = json.loads(Path(spec["outputs"]["outputFile"]).read_text())
    totals = json.loads((out / "report.json").read_text())["totals"]
    assert written["artifacts"]["metrics"]["artifacts"][0]["metadata"] == totals
    assert (
        totals["theses_seen"]
        == totals["records"] + totals["rejects"] + totals["duplicates_collapsed"]
    )


def test_the_executor_module_is_standard_library_only():
    """Every stage imports it, in images that need not carry the KFP SDK."""
    code = (
        "import sys; before = set(sys.modules); import charlie.kubeflow.executor; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new - set(sys.stdlib_module_names)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "['charlie']"
