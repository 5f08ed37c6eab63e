"""Training throughput and padding waste of the tiny model, per batching strategy.

    .venv/bin/python benchmarks/bench_train.py [--steps 10] [--warmup 2] [--batches 50] [--repeat 2]

The data is the bundled sample's train split (data/samples, real prompts and full
completions), built as ``charlie dataset`` builds it from params.yaml; the tokenizer and the
tiny Llama are built as ``charlie init-model`` builds them (params.yaml's ``init_model``
section), and the rows are tokenized as ``charlie tokenize`` does (chat template, thesis
tokens, completion mask). Every trainer is the pipeline's (``charlie.training.trainer``:
TRL's SFTTrainer, with the model's own loss off CUDA) with the arguments from
``charlie.training.sft.sft_arguments`` for configs/sft_tiny_lora_cpu.yaml (batch 8, max_length
auto, LoRA r16 on all linear layers with trainable embeddings and head, fp32 on the CPU), with
only the keys named changed per strategy:

* pipeline: the config as it is — random sampler, padding to the longest example in each
  batch (TRL's default collator).
* group_by_length: ``train_sampling_strategy="group_by_length"`` (the transformers 5 name of
  the old ``group_by_length=True``), padding to the longest.
* packing (``packing=True``, TRL's default ``packing_strategy="bfd"``: padding-free rows,
  sequence boundaries from ``position_ids``) is not measured here, and the output says why: it
  needs a varlen attention kernel (FlashAttention, CUDA only), and ``charlie train`` turns it
  off without one. On the CPU's sdpa, transformers rebuilt each packed row's boundaries as a
  dense row x row block mask, so the 0.40x once measured here was the cost of that mask (every
  example attending over the whole row, masked), not of packing.
* TRL's fused LM head: ``fused_lm_head: true``, the loss TRL computes itself (tiled LM head,
  entropy and top-1 per token, logits recomputed in the backward pass), as on CUDA.
* raw PyTorch loop: the outside reference, on the pipeline trainer's own first batches: the
  same LoRA model, forward with labels, backward, AdamW step, nothing else. Target: the
  pipeline's trainer at >= 0.9x its tokens/s (issue 16; TRL's path measured 0.52x).

Reported per strategy: the share of real (non-padding) tokens per batch, mean and minimum over
the first --batches batches of the trainer's train dataloader, and real tokens per second over
--steps optimizer steps after --warmup warm-up steps (the median step's rate, best of
--repeat), with its ratio against the pipeline's configuration. Target: at least 90% real
tokens per batch (mean) in the configuration the pipeline uses.

The GPU half of the issue (a 1-8B Llama with LoRA in bf16: tokens/s and MFU) runs only where a
CUDA device is present, and is skipped otherwise: a randomly initialised ~1.2B Llama (the
Llama-3.2-1B shape, from config, no download), LoRA r16 on all linear layers, bf16, sequence
--gpu-seq, batch --gpu-batch; MFU = 6 * N * tokens/s / the device's peak dense bf16 FLOP/s
(looked up from its name, or --peak-tflops), N the model's parameters. 6N is the usual
convention; LoRA skips the frozen weights' gradients (about 4N of real work), so this MFU is
the figure comparable with full fine-tuning reports, not the hardware's true utilisation.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from datasets import Dataset, disable_progress_bars
from transformers import PrinterCallback, TrainerCallback
from transformers.utils import logging as hf_logging

from charlie import dataset as core
from charlie.config import load_params
from charlie.parsing import parse_files
from charlie.stages.dataset import split_spec
from charlie.training.config import TrainConfig, load_train_config
from charlie.training.sft import get_peft_config, sft_arguments
from charlie.training.tokenize import choose_max_length, tokenize_batch
from charlie.training.tokens import add_thesis_tokens, build_tiny_model, train_tokenizer
from charlie.training.trainer import SFTTrainer, use_fused_lm_head
from common import met

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
TARGET_SHARE = 0.90
STRATEGIES: dict[str, dict[str, Any]] = {
    "pipeline (random, pad longest)": {},
    "group_by_length, pad longest": {"train_sampling_strategy": "group_by_length"},
    "TRL's fused LM head": {"fused_lm_head": True},
}
TARGET_RAW = 0.90
PACKING_SKIPPED = (
    "its rows need a varlen (flash) attention kernel, CUDA only; on the CPU's sdpa transformers "
    "builds a dense block mask per packed row, which is what a CPU figure would measure"
)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0}  # fmt: skip


# ------------------------------------------------------------------ the pipeline's inputs


def build_inputs() -> tuple[Any, Dataset, Any]:
    """Tokenizer, tokenized train split and base model, as the stages build them."""
    params = load_params(REPO / "params.yaml", env={})
    ds, im = params.dataset, params.init_model
    spec, _ = split_spec(params)
    records = parse_files(sorted((SAMPLES / "xml").glob("*.xml"))).records
    frames = {
        p.stem: pd.read_csv(p, parse_dates=["date"])
        for p in sorted((SAMPLES / "prices").glob("*.csv"))
    }
    rows, _, _ = core.build_rows(records, frames, spec, drop_outside=ds.outside_splits == "drop")
    train = rows["train"]
    # charlie init-model: the tokenizer from the train split, the model sized from init_model
    tokenizer = train_tokenizer((f"{r['prompt']}\n{r['completion']}" for r in train), im.vocab_size)
    model = build_tiny_model(tokenizer, hidden_size=im.hidden_size, num_layers=im.num_layers,
                             num_heads=im.num_heads, num_kv_heads=im.num_kv_heads,
                             intermediate_size=im.intermediate_size,
                             max_positions=im.max_positions, seed=im.seed)  # fmt: skip
    # charlie tokenize: thesis tokens, chat template, completion mask, over-length policy
    cfg = load_train_config(REPO / params.train.config)
    add_thesis_tokens(tokenizer)
    data = Dataset.from_list(
        [{"prompt": r["prompt"], "completion": r["completion"]} for r in train]
    )
    measured = data.map(tokenize_batch, batched=True, remove_columns=["prompt", "completion"],
                        fn_kwargs={"tokenizer": tokenizer, "max_length": None,
                                   "policy": cfg.over_length})  # fmt: skip
    max_length = choose_max_length(cfg.max_length, max(measured["full_length"]), im.max_positions)
    data = data.map(tokenize_batch, batched=True, remove_columns=["prompt", "completion"],
                    fn_kwargs={"tokenizer": tokenizer, "max_length": max_length,
                               "policy": cfg.over_length})  # fmt: skip
    data = data.filter(lambda o: [x != "dropped" for x in o], input_columns="outcome", batched=True)
    # charlie train: the base model resized for the added tokens, without mean resizing
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, data.select_columns(["input_ids", "completion_mask"]), model


# ------------------------------------------------------------------ measuring


class StepClock(TrainerCallback):
    """The wall-clock time at the end of every optimizer step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


class CountingTrainer(SFTTrainer):
    """SFTTrainer that records the real tokens of every batch it trains on."""

    def __init__(self, *args: Any, pad_id: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pad_id = pad_id
        self.real_tokens: list[int] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.real_tokens.append(batch_stats(inputs, self.pad_id)[0])
        return super().training_step(model, inputs, num_items_in_batch)


def batch_stats(batch: dict[str, Any], pad_id: int) -> tuple[int, int, int]:
    """(real tokens, tokens in the batch tensor, examples) of one collated batch."""
    ids = batch["input_ids"]
    if "attention_mask" in batch:  # padded to the longest: one row per example
        return int(batch["attention_mask"].sum()), ids.numel(), ids.shape[0]
    # padding-free: one flattened row, each example restarting its position_ids at 0
    real = int((ids != pad_id).sum())
    return real, ids.numel(), int((batch["position_ids"][:, :real] == 0).sum())


def make_trainer(cfg: TrainConfig, overrides: dict[str, Any], out: Path, steps: int,
                 tokenizer: Any, data: Dataset, model: Any) -> CountingTrainer:  # fmt: skip
    keys = {**cfg.model_dump(), **cfg.sft_args}
    keys.update(output_dir=out, max_steps=steps, eval_strategy="no", save_strategy="no",
                logging_strategy="no", disable_tqdm=True, **overrides)  # fmt: skip
    variant = TrainConfig(**keys)
    args = sft_arguments(variant, cuda=False, smoke_test=False, report_to=["none"])
    return CountingTrainer(model=model, args=args, train_dataset=data,
                           processing_class=tokenizer, peft_config=get_peft_config(variant),
                           fused_lm_head=use_fused_lm_head(variant.fused_lm_head, cuda=False),
                           pad_id=tokenizer.pad_token_id)  # fmt: skip


def measure(name: str, overrides: dict[str, Any], cfg: TrainConfig, ctx: dict[str, Any],
            a: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    out = ctx["work"] / name.split()[0]
    steps = a.warmup + a.steps
    best = 0.0
    shares: list[float] = []
    shapes: list[tuple[int, int]] = []
    examples: list[int] = []
    for attempt in range(a.repeat):
        model = copy.deepcopy(ctx["model"])  # LoRA wraps the model in place
        trainer = make_trainer(cfg, overrides, out, steps, ctx["tokenizer"], ctx["data"], model)
        if attempt == 0:
            for i, batch in enumerate(trainer.get_train_dataloader()):
                if i >= a.batches:
                    break
                real, total, n = batch_stats(batch, ctx["tokenizer"].pad_token_id)
                shares.append(real / total)
                shapes.append(tuple(batch["input_ids"].shape))
                examples.append(n)
        clock = StepClock()
        trainer.add_callback(clock)
        trainer.remove_callback(PrinterCallback)  # the end-of-training metrics line
        trainer.train()
        ends = clock.ends[a.warmup - 1 :]
        times = [b - e for e, b in itertools.pairwise(ends)]
        tokens = trainer.real_tokens[a.warmup : steps]
        # the median step, so that a neighbour's burst on a shared CPU does not decide it
        best = max(best, statistics.median(n / t for n, t in zip(tokens, times, strict=True)))
        shutil.rmtree(out, ignore_errors=True)
    return {
        "name": name,
        "share_mean": statistics.fmean(shares),
        "share_min": min(shares),
        "rows": statistics.fmean(r for r, _ in shapes),
        "width": statistics.fmean(w for _, w in shapes),
        "examples": statistics.fmean(examples),
        "tokens_per_s": best,
        "n_batches": len(shares),
    }


def raw_loop(cfg: TrainConfig, ctx: dict[str, Any], a: argparse.Namespace) -> float:
    """Real tokens/s of a minimal PyTorch loop on the pipeline trainer's own batches.

    The outside reference: the same LoRA model, the same collated batches (the pipeline
    trainer's dataloader, prompt masked in the labels), AdamW at the same learning rate, and
    nothing else per step (forward with labels, backward, step, zero_grad).
    """
    from peft import get_peft_model

    out = ctx["work"] / "raw"
    steps = a.warmup + a.steps
    trainer = make_trainer(cfg, {}, out, steps, ctx["tokenizer"], ctx["data"],
                           copy.deepcopy(ctx["model"]))  # fmt: skip
    batches = list(itertools.islice(trainer.get_train_dataloader(), steps))
    best = 0.0
    for _ in range(a.repeat):
        model = get_peft_model(copy.deepcopy(ctx["model"]), get_peft_config(cfg))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.sft_args["learning_rate"])
        rates = []
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"], use_cache=False).loss  # fmt: skip
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= a.warmup:
                rates.append(int(batch["attention_mask"].sum()) / (time.perf_counter() - start))
        best = max(best, statistics.median(rates))
    shutil.rmtree(out, ignore_errors=True)
    return best


# ------------------------------------------------------------------ the GPU half


def gpu_benchmark(a: argparse.Namespace) -> None:
    """Tokens/s and MFU of a ~1.2B Llama with LoRA in bf16 on random tokens."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    config = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=max(a.gpu_seq, 2048), tie_word_embeddings=True,
                         rope_theta=500000.0, attn_implementation="sdpa")  # fmt: skip
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))  # fmt: skip
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (a.gpu_batch, a.gpu_seq), device=device)

    def step() -> None:
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(a.steps):
        step()
    torch.cuda.synchronize()
    tokens_per_s = a.steps * ids.numel() / (time.perf_counter() - start)
    peak = a.peak_tflops or next(
        (v for k, v in PEAK_BF16_TFLOPS.items() if k.lower() in name.lower()), None
    )
    mfu = f"{6 * n_params * tokens_per_s / (peak * 1e12):.1%}" if peak else "n/a (--peak-tflops)"
    print(f"\nGPU: {name}; Llama {n_params / 1e9:.2f}B params, LoRA r16 all-linear, bf16, "
          f"batch {a.gpu_batch} x seq {a.gpu_seq}, {a.steps} steps after {a.warmup}")  # fmt: skip
    print(f"{'tokens/s':<28}{tokens_per_s:>10,.0f}")
    print(
        f"{'MFU (6N / peak bf16)':<28}{mfu:>10}" + (f"  (peak {peak:.0f} TFLOP/s)" if peak else "")
    )
    print(f"{'peak memory (GiB)':<28}{torch.cuda.max_memory_allocated(device) / 2**30:>10.1f}")


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    parser.add_argument("--batches", type=int, default=50, help="batches for the token share")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (best kept)")
    parser.add_argument("--gpu-seq", type=int, default=2048, help="GPU half: sequence length")
    parser.add_argument("--gpu-batch", type=int, default=4, help="GPU half: batch size")
    parser.add_argument("--peak-tflops", type=float, help="GPU half: peak dense bf16 TFLOP/s")
    a = parser.parse_args()
    if a.warmup < 1:
        parser.error("--warmup must be at least 1: the first step's start is not timed")

    disable_progress_bars()
    hf_logging.set_verbosity_error()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    tokenizer, data, model = build_inputs()
    cfg = load_train_config(REPO / "configs" / "sft_tiny_lora_cpu.yaml")
    lengths = [len(x) for x in data["input_ids"]]
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    ctx = {"tokenizer": tokenizer, "data": data, "model": model, "work": work}
    try:
        results = [measure(name, o, cfg, ctx, a) for name, o in STRATEGIES.items()]
        raw = raw_loop(cfg, ctx, a)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"data: {len(lengths)} train examples, tokens min {min(lengths)} / median "
        f"{statistics.median(lengths):.0f} / max {max(lengths)}; tiny Llama {n_params / 1e6:.2f}M "
        f"params, LoRA r{cfg.lora_r}; batch {cfg.sft_args['per_device_train_batch_size']}, "
        f"max_length {cfg.max_length}; {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
        f"share over the first {results[0]['n_batches']} batches, tokens/s over {a.steps} steps "
        f"after {a.warmup}, best of {a.repeat}"
    )
    print(f"{'strategy':<32}{'batch (mean)':>13}{'examples':>9}{'real share':>11}{'min':>7}"
          f"{'real tok/s':>11}{'vs pipeline':>12}")  # fmt: skip
    base = results[0]["tokens_per_s"]
    for r in results:
        shape = f"{r['rows']:.0f} x {r['width']:.0f}"
        print(f"{r['name']:<32}{shape:>13}{r['examples']:>9.1f}{r['share_mean']:>11.1%}"
              f"{r['share_min']:>7.1%}{r['tokens_per_s']:>11,.0f}"
              f"{r['tokens_per_s'] / base:>12.2f}")  # fmt: skip
    print(f"{'raw PyTorch loop, same batches':<32}{'':>13}{'':>9}{'':>11}{'':>7}{raw:>11,.0f}"
          f"{raw / base:>12.2f}")  # fmt: skip
    print(f"{'packing bfd (padding-free)':<32}  not measured: {PACKING_SKIPPED}")
    ratio = base / raw
    print(f"pipeline trainer vs a raw loop on the same batches >= {TARGET_RAW:.2f}x: "
          f"{met(ratio >= TARGET_RAW)} ({ratio:.2f}x; TRL's fused LM head: "
          f"{results[-1]['tokens_per_s'] / raw:.2f}x)")  # fmt: skip
    share = results[0]["share_mean"]
    print(f"pipeline config real-token share >= {TARGET_SHARE:.0%}: {met(share >= TARGET_SHARE)} "
          f"({share:.1%} mean, {results[0]['share_min']:.1%} worst batch)")  # fmt: skip
    print(f"(CPU part: {time.perf_counter() - started:.0f} s)")

    if torch.cuda.is_available():
        gpu_benchmark(a)
    else:
        print("\nGPU part (1-8B Llama, LoRA, bf16: tokens/s and MFU): skipped, no CUDA device.")


if __name__ == "__main__":
    main()
