"""`charlie parse` as a KFP container component (interface only; the runtime is the library)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Metrics, Output

from components.images import CPU_IMAGE


@dsl.container_component
def parse(
    input_dir: str,
    dvc_repo: str,
    dvc_rev: str,
    records: Output[Dataset],
    rejects: Output[Dataset],
    report: Output[Artifact],
    metrics: Output[Metrics],
):
    """Parse XML theses into JSONL records, accounting for every thesis.

    Args:
        input_dir: Where the *.xml theses are: a folder inside the container (the image embeds
            the sample at data/samples/xml), an s3:// prefix (credentials and endpoint from the
            charlie-s3 Secret), or, with dvc_repo, the DVC-tracked path in that repository.
        dvc_repo: A git repository URL whose DVC-tracked input_dir to read ("": none).
        dvc_rev: The git revision of dvc_repo ("": its default branch).
        records: records.jsonl, one valid thesis per line.
        rejects: rejects.jsonl, every rejected thesis or file with its reason.
        report: parse_report.json, theses seen = records + rejects + collapsed duplicates, and
            the source read with its version.
        metrics: The report's totals (files, theses seen, records, rejects, duplicates).
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["charlie", "parse"],
        args=[
            "--input-dir", input_dir,
            "--dvc-repo", dvc_repo,
            "--dvc-rev", dvc_rev,
            "--out", records.path,
            "--rejects", rejects.path,
            "--report", report.path,
            "--kfp-executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER,
        ],
    )  # fmt: skip
