# Charlie: `make demo` runs the pipeline on the bundled sample; `make test` runs the suite.
# Both create .venv and install pinned dependencies (constraints.txt) on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help install browser demo test lint format sample bench gpu-wheels lock pipeline manifests images clean

REGISTRY ?= ghcr.io/charlie-mlops
TAG      ?= 0.1.0
IMAGES   := charlie-cpu charlie-cuda

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Charlie needs Python 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dvc,dev,train,deepspeed,kfp]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install Charlie with pinned dependencies

demo: install  ## run the whole pipeline on the bundled sample (dvc repro)
	dvc repro
	@echo
	@echo "Done. Outputs:"
	@echo "  data/jsonl/records.jsonl       parsed theses, one JSON record per line"
	@echo "  data/jsonl/rejects.jsonl       what was rejected, with the reason and source line"
	@echo "  data/jsonl/parse_report.json   the accounting (each stage's *_headline.json: dvc metrics show)"
	@echo "  data/hf_datasets/sft_dataset   the train/validation/test DatasetDict (datasets.load_from_disk)"
	@echo "  data/hf_datasets/dataset_card.md   counts, label balance, lengths, split settings"
	@echo "  models/tiny                    the tiny local base model and tokenizer (charlie init-model)"
	@echo "  data/hf_datasets/tokenized     token ids + completion masks, tokenize_report.json"
	@echo "  checkpoints/sft                LoRA adapter + model card, merged/, manifest.json, loss.png, runs/ (tensorboard --logdir)"
	@echo "  checkpoints/grpo               Phase 2: the GRPO adapter on the SFT model, rewards.csv, grpo_headline.json"
	@echo "  results/eval_summary.md        accuracy, trades and baselines (+ eval_metrics.json, confusion_matrix.png)"
	@echo "  backtests/baseline_report.html the tear sheet: model vs baselines, portfolio vs benchmarks, after costs"
	@echo "  results/grpo/, backtests/grpo/ the same for the GRPO model, on the same test rows"
	@echo "  results/compare/comparison.md  GRPO against SFT: paired intervals and tests, one verdict (+ comparison.png)"
	@echo "  charlie card                   copies checkpoints/sft to dist/sft with a complete model card (for the hub)"
	@echo "  logs/                          one log file per stage run"

browser:  ## Debian's chromium, for the report's browser test (installed when missing and possible)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    { apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }; } \
	    && echo "installed Debian's chromium (tests/test_report_browser.py)"; \
	  else echo "no chromium, and no root apt-get to install it: the browser test will be skipped"; fi; }

test: install browser  ## lint, then run the test suite
	ruff check .
	ruff format --check .
	pytest

lint: install  ## ruff check and format check
	ruff check .
	ruff format --check .

format: install  ## apply ruff's fixes and formatting
	ruff check --fix .
	ruff format .

sample: install  ## regenerate the bundled sample in data/samples/
	charlie sample

pipeline: install  ## compile pipelines/sft_pipeline.yaml (commit it; tests fail when it is stale)
	python -m pipelines.sft_pipeline

manifests: install  ## regenerate manifests/base/pipeline.yaml (KFP Pipeline + PipelineVersion)
	PYTHONPATH=$(CURDIR) kfp dsl compile --py pipelines/sft_pipeline.py --output manifests/base/pipeline.yaml --kubernetes-manifest-format --include-pipeline-manifest --namespace charlie

images:  ## build and push the container images (make images REGISTRY=... TAG=...; needs Docker)
	@for image in $(IMAGES); do \
	  docker build --platform linux/amd64 -f images/$$image/Dockerfile -t $(REGISTRY)/$$image:$(TAG) . && \
	  docker push $(REGISTRY)/$$image:$(TAG) || exit 1; \
	done

bench: install  ## run the benchmarks (figures and ratios on stdout)
	python benchmarks/bench_parse.py
	python benchmarks/bench_scaling.py   # parse and dataset at 20, 100 and 500 tickers
	python benchmarks/bench_dataset.py
	python benchmarks/bench_train.py
	python benchmarks/bench_generate.py   # the demo's model and test split: run `make demo` first
	python benchmarks/bench_grpo.py   # one GRPO step's generation against plain generate: `make demo` first
	python benchmarks/bench_backtest.py   # vectorbt side by side when installed: pip install -e '.[bench]'

# The wheels benchmarks/gpu_check.sh installs on a lent GPU machine (its Python 3.12 has torch,
# transformers, peft and accelerate, and no registry): the packages bench_gpu.py --pins names,
# at constraints.txt's pins, and a DeepSpeed wheel built here (PyPI has its source only).
# bitsandbytes is slimmed to its CPU and CUDA $(GPU_BNB_CUDA).x libraries; the total is printed
# against the 64 MiB a device run carries. Carry the folder: `bash benchmarks/gpu_check.sh`.
GPU_WHEELS   := .gpu-wheels
GPU_BNB_CUDA ?= 13
gpu-wheels: install  ## wheels for benchmarks/gpu_check.sh on a lent GPU machine (.gpu-wheels/)
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
	  --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 \
	  --platform manylinux_2_28_x86_64 -d $(GPU_WHEELS) $$($(BIN)/python benchmarks/bench_gpu.py --pins)
	$(BIN)/pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
	  -w $(GPU_WHEELS) $$(grep '^deepspeed==' constraints.txt)
	$(BIN)/python benchmarks/bench_gpu.py --wheels $(GPU_WHEELS) --bnb-cuda $(GPU_BNB_CUDA)

lock:  ## re-resolve the newest allowed versions into constraints.txt
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --disable-pip-version-check -e '.[dvc,dev,train,deepspeed,kfp]'
	echo '# Every installed package, pinned: generated by `make lock`; `make install` uses it.' > constraints.txt
	# a local-version label (torch 2.13.0+cpu) would pin the CPU build on GPU machines too
	.venv-lock/bin/pip freeze --exclude-editable --disable-pip-version-check | sed -E 's/^([^=]+==[^+]+)\+.*$$/\1/' >> constraints.txt
	rm -rf .venv-lock

clean:  ## remove the venv, caches and pipeline outputs
	rm -rf $(VENV) .pytest_cache .ruff_cache logs data/jsonl/*.jsonl data/hf_datasets/sft_dataset data/price_cache
