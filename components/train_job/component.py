"""`charlie train-job` as a KFP container component (interface only; a CPU pod that launches)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.container_component
def train_job(
    config: str,
    base_model: Input[Model],
    tokenized: Input[Dataset],
    smoke_test: bool,
    num_nodes: int,
    gpus_per_node: int,
    gpu_resource: str,
    node_selector: dict,
    runtime: str,
    image: str,
    cache_pvc: str,
    cache_mount: str,
    run_id: str,
    timeout_s: int,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Train on num_nodes nodes as a Kubeflow Trainer v2 TrainJob; hand the model back.

    Stages the base model and tokenized dataset onto the shared volume, submits a TrainJob
    named after the run (a retried step attaches to it instead of submitting a second) whose
    every node runs `torchrun -m charlie.cli train` on the CUDA image, streams rank 0's log
    into this step's log, fails with the job's reason, and copies the trained model (adapter,
    manifest, merged/) from the volume into this step's output.

    Args:
        config: Training config path inside the image (configs/sft_*.yaml).
        base_model: Base model folder (init-model's model, or fetch-model's reference).
        tokenized: Tokenized DatasetDict from tokenize (with tokenizer/).
        smoke_test: Run 10 steps only.
        num_nodes: Nodes of the TrainJob (2 or more).
        gpus_per_node: GPUs each node requests; one training process per GPU.
        gpu_resource: The device plugin's resource name (nvidia.com/gpu).
        node_selector: Node labels the nodes must carry (the GPU pool or GPU product).
        runtime: The ClusterTrainingRuntime the TrainJob names (torch-distributed).
        image: The CUDA image the nodes run.
        cache_pvc: The ReadWriteMany volume every node mounts (checkpoints, HF cache, inputs).
        cache_mount: Where it is mounted, in this pod and in the nodes.
        run_id: The pipeline run's ID: the TrainJob's name and its folders derive from it.
        timeout_s: Seconds before the step gives up and deletes the job.
        model: Adapter, tokenizer, manifest.json, loss.csv, runs/ (TensorBoard) and merged/.
        metrics: Final train and eval loss, steps, runtime and throughput.
    """
    return dsl.ContainerSpec(
        image=CPU_IMAGE,
        command=["charlie", "train-job"],
        args=[
            "--config", config,
            "--base-model", base_model.path,
            "--dataset-dir", tokenized.path,
            "--output-dir", model.path,
            f"--smoke-test={smoke_test}",
            "--num-nodes", num_nodes,
            "--gpus-per-node", gpus_per_node,
            "--gpu-resource", gpu_resource,
            "--node-selector", node_selector,
            "--runtime", runtime,
            "--image", image,
            "--cache-pvc", cache_pvc,
            "--cache-mount", cache_mount,
            "--run-id", run_id,
            "--timeout", timeout_s,
            "--kfp-executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER,
        ],
    )  # fmt: skip
