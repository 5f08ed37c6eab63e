"""Train on several GPU nodes: submit a Kubeflow Trainer v2 TrainJob and follow it to the end.

    charlie train-job --run-id RUN --image ghcr.io/charlie-mlops/charlie-cuda:0.1.0 \\
        --config configs/sft_config_multigpu.yaml --base-model BASE --dataset-dir TOKENIZED \\
        --output-dir MODEL --num-nodes 2 --gpus-per-node 8

A pipeline step on the CPU image, with the cache PVC mounted at --cache-mount. It copies the
base model and tokenized dataset onto the PVC (<work dir>/inputs/, skipped when an earlier
attempt copied the same content), submits a TrainJob (ClusterTrainingRuntime --runtime) whose
nodes run `torchrun -m charlie.cli train` on them with checkpoints in
<cache mount>/checkpoints/<run id>, streams node 0's log here, and when it completes copies
<work dir>/model to --output-dir and publishes its final train metrics. The TrainJob's name
comes from --run-id, so a retried step attaches to the job its earlier attempt submitted. A
failed job, or one past --timeout, fails the step in one sentence and is deleted; so is a job
that completed.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from charlie.config import positive, switch
from charlie.errors import CharlieError
from charlie.kubeflow import executor as kfp_executor
from charlie.kubeflow import trainjob
from charlie.logs import setup_logging

log = logging.getLogger("charlie.train_job")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run, its artifacts, the nodes and their volumes, the cluster, the limits."""
    run = parser.add_argument_group("the run")
    run.add_argument("--run-id", required=True,
                     help="the pipeline run's id: names the TrainJob and its folders")  # fmt: skip
    run.add_argument("--config", required=True, metavar="PATH",
                     help="the training config's path inside --image (configs/sft_*.yaml)")  # fmt: skip
    run.add_argument("--base-model", required=True, type=Path, metavar="PATH",
                     help="the base model folder (an input artifact's local path)")  # fmt: skip
    run.add_argument("--dataset-dir", required=True, type=Path, metavar="PATH",
                     help="the tokenized DatasetDict folder (an input artifact's local path)")  # fmt: skip
    run.add_argument("--output-dir", required=True, type=Path, metavar="PATH",
                     help="where the trained model is copied (the step's Model output)")  # fmt: skip
    run.add_argument(
        "--smoke-test", nargs="?", const=True, default=False, type=switch,
        help="train the config's smoke_test_steps only (also --smoke-test=true|false)",
    )  # fmt: skip

    nodes = parser.add_argument_group("the nodes")
    nodes.add_argument("--image", required=True,
                       help="the CUDA image every node runs (components/images.py CUDA_IMAGE)")  # fmt: skip
    nodes.add_argument("--num-nodes", type=positive, default=2, metavar="N",
                       help="training nodes (default: 2)")  # fmt: skip
    nodes.add_argument("--gpus-per-node", type=int, default=1, metavar="N",
                       help="GPUs each node requests (default: 1; 0: CPU only)")  # fmt: skip
    nodes.add_argument("--nproc-per-node", type=positive, metavar="N",
                       help="processes per node (default: one per GPU, 1 without GPUs)")  # fmt: skip
    nodes.add_argument("--gpu-resource", default=trainjob.GPU_RESOURCE,
                       help=f"the GPUs' resource name (default: {trainjob.GPU_RESOURCE})")  # fmt: skip
    nodes.add_argument("--cpu-per-node", metavar="QUANTITY",
                       help="CPU each node requests and is limited to, e.g. 16 (default: none)")  # fmt: skip
    nodes.add_argument("--memory-per-node", metavar="QUANTITY",
                       help="memory each node requests and is limited to, e.g. 128Gi")  # fmt: skip
    nodes.add_argument("--node-selector", default="{}", metavar="JSON",
                       help='node labels the nodes must have, e.g. {"cloud.google.com/'
                       'gke-nodepool": "gpu-pool"} (default: none)')  # fmt: skip
    nodes.add_argument("--shm-size", metavar="QUANTITY",
                       help="size limit of the memory-backed /dev/shm (default: none)")  # fmt: skip
    nodes.add_argument("--runtime", default=trainjob.DEFAULT_RUNTIME,
                       help="the ClusterTrainingRuntime (default: "
                       f"{trainjob.DEFAULT_RUNTIME})")  # fmt: skip

    volumes = parser.add_argument_group("volumes and secrets")
    volumes.add_argument("--cache-pvc", default=trainjob.CACHE_PVC,
                         help="the ReadWriteMany PVC for inputs, checkpoints and HF_HOME "
                         f"(default: {trainjob.CACHE_PVC})")  # fmt: skip
    volumes.add_argument("--cache-mount", default=trainjob.CACHE_MOUNT, metavar="PATH",
                         help="where it is mounted, here and on the nodes (default: "
                         f"{trainjob.CACHE_MOUNT})")  # fmt: skip
    volumes.add_argument("--work-dir", metavar="PATH",
                         help="this run's folder on it (default: <cache-mount>/runs/<run-id>)")  # fmt: skip
    volumes.add_argument("--hf-secret", default=trainjob.HF_SECRET,
                         help="Secret whose key token becomes HF_TOKEN, if it exists "
                         f"('' for none; default: {trainjob.HF_SECRET})")  # fmt: skip
    volumes.add_argument("--s3-secret", default=trainjob.S3_SECRET,
                         help="Secret whose keys access_key_id, secret_access_key become AWS_*, "
                         f"if it exists ('' for none; default: {trainjob.S3_SECRET})")  # fmt: skip
    volumes.add_argument("--service-account",
                         help="the nodes' service account (default: the runtime's)")  # fmt: skip

    cluster = parser.add_argument_group("the cluster")
    cluster.add_argument("--namespace",
                         help="the TrainJob's namespace (default: this pod's, else the "
                         "kubeconfig context's, else default)")  # fmt: skip
    cluster.add_argument("--timeout", type=float, default=24 * 3600, metavar="SECONDS",
                         help="fail and delete the job after this long (default: 86400)")  # fmt: skip
    cluster.add_argument("--poll-interval", type=float, default=10, metavar="SECONDS",
                         help="how often the job's status is read (default: 10)")  # fmt: skip
    kfp_executor.add_argument(parser)


def _node_selector(text: str) -> dict[str, str]:
    try:
        selector = json.loads(text or "{}")
    except ValueError:
        selector = None
    if not isinstance(selector, dict) or not all(isinstance(v, str) for v in selector.values()):
        raise CharlieError(
            f"--node-selector {text!r} is not a JSON object of label values (strings)."
        )
    return selector


def run(args: argparse.Namespace) -> int:
    """Stage the inputs, run the TrainJob, copy the model back, publish its metrics."""
    setup_logging("train-job")
    if args.gpus_per_node < 0:
        raise CharlieError(f"--gpus-per-node is {args.gpus_per_node}: it must be 0 or more.")
    if args.timeout <= 0:
        raise CharlieError(f"--timeout is {args.timeout:g}: it must be positive.")
    nodes = trainjob.Nodes(
        image=args.image, count=args.num_nodes, gpus=args.gpus_per_node,
        nproc=args.nproc_per_node, gpu_resource=args.gpu_resource, runtime=args.runtime,
        cache_pvc=args.cache_pvc, cache_mount=args.cache_mount,
        hf_secret=args.hf_secret or None, s3_secret=args.s3_secret or None,
        node_selector=_node_selector(args.node_selector), cpu=args.cpu_per_node,
        memory=args.memory_per_node, shm_size=args.shm_size,
        service_account=args.service_account,
    )  # fmt: skip
    request = trainjob.Launch(
        run_id=args.run_id, config=args.config, base_model=args.base_model,
        dataset_dir=args.dataset_dir, output_dir=args.output_dir, nodes=nodes,
        smoke_test=args.smoke_test, namespace=args.namespace, work_dir=args.work_dir,
        timeout_s=args.timeout, poll_s=args.poll_interval,
    )  # fmt: skip
    metrics = trainjob.launch(request)
    log.info(
        "TrainJob %s: %d steps, train loss %s; model in %s",
        request.name, metrics.get("global_step", 0), metrics.get("train_loss", "n/a"),
        args.output_dir,
    )  # fmt: skip
    kfp_executor.publish(args.kfp_executor_input, metrics=metrics)
    return 0
