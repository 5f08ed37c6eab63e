"""`charlie parse` as a KFP container component (interface only; the runtime is the library)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Metrics, Output

from components.images import CPU_IMAGE


@dsl.container_component
def parse(
    input_dir: str,
    records: Output[Dataset],
    rejects: Output[Dataset],
    report: Output[Artifact],
    metrics: Output[Metrics],
):
    """Parse XML theses into JSONL records, accounting for every thesis.

    Args:
        input_dir: Directory of *.xml theses inside the container (the image embeds the sample
            at data/samples/xml).
        records: records.jsonl, one valid thesis per line.
        rejects: rejects.jsonl, every rejected thesis or file with its reason.
        report: parse_report.json, theses seen = records + rejects + collapsed duplicates.
        metrics: The report's totals (files, theses seen, records, rejects, duplicates).
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["charlie", "parse"],
        args=[
            "--input-dir", input_dir,
            "--out", records.path,
            "--rejects", rejects.path,
            "--report", report.path,
            "--kfp-executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER,
        ],
    )  # fmt: skip
