"""The container images every component runs: the one place their tags are pinned.

Built from images/<image>/Dockerfile; bump the tag here and recompile (`make pipeline`).
"""

REGISTRY = "ghcr.io/charlie-mlops"
VERSION = "0.1.0"

CPU_IMAGE = (
    f"{REGISTRY}/charlie-cpu:{VERSION}"  # parse, dataset, init-model, tokenize, evaluate, backtest
)
CUDA_IMAGE = f"{REGISTRY}/charlie-cuda:{VERSION}"  # train
