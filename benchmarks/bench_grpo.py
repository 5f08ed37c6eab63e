"""Generation and reward speed of one ``charlie grpo`` step against plain ``model.generate``.

    .venv/bin/python benchmarks/bench_grpo.py [--config configs/grpo_tiny_cpu.yaml]
                                              [--sft-model checkpoints/sft] [--rounds 5]
                                              [--threads 1]

The trainer is the stage's own: :func:`charlie.rl.grpo.build_trainer` (TRL's GRPOTrainer on the
SFT model with a fresh LoRA adapter, the episodes of :func:`charlie.rl.grpo.build_splits`, the
rewards of :func:`charlie.rl.rewards.reward_functions`) for the config's settings, with only
the run's bookkeeping changed (a temporary output_dir, no checkpoints, no TensorBoard, max_steps
= 1 warm-up + --rounds). It needs the demo's SFT model, dataset and prices: run `make demo`
first. Instrumented, without changing what runs:

* generation: the policy's ``generate`` (the PEFT model TRL unwraps for generation) is wrapped
  to add up its wall and CPU time and the tokens it generated per row (up to and including the
  row's first stop token: the rest is padding);
* TRL around it: ``trainer._generate`` (tokenizing the prompts, padding, cutting each row at
  its stop, decoding, the length metrics), less the ``generate`` inside;
* rewards: each reward function is wrapped to count the completions it scored and its time;
* the rest of the step (log-probabilities, the loss, backward, the optimizer) is the step's
  time (``on_step_begin`` to ``on_step_end``, a trainer callback) less the above.

The reference, run in the same callback right after each step (interleaved: step, plain, step,
plain, ...), is plain ``model.generate`` on that step's prompts: the prompt texts TRL handed the
reward functions, tokenized here with left padding (checked equal to the ids TRL generated
from), one row per prompt with ``num_return_sequences = num_generations`` (TRL's group, the same
expanded batch), ``do_sample``, the config's temperature, top_p, top_k, min_p and repetition
penalty, ``max_new_tokens = max_completion_length``, TRL's stop ids and the pad id. Two models:

* merged SFT (the headline): a second copy of the SFT model without any adapter, what plain
  generation with the weights GRPO starts from costs;
* same PEFT policy: the trainer's own LoRA-wrapped policy, so that the gap to the merged model
  is split into the cost of generating through unmerged LoRA layers and TRL's own (the latter
  should be ~1.0x).

Each round reseeds torch with the same seed before the step and before each reference, so in
the warm-up round, where the new adapter is still zero (the policy is the SFT model exactly),
GRPO's completions and plain's must be the same tokens: the check that the reference is the
same generation. Afterwards the adapter moves and sampled lengths differ from call to call,
so the figures are tokens per CPU second, never seconds per call. Medians over the rounds after
the warm-up; CPU time (``common.cpu_seconds``, all threads) is the judge, as in the other
benchmarks. The table's ``steps`` are decode steps (the batch's longest completion) and
ms/step the CPU per decode step, which does not depend on the sampled lengths.

Both sides run on one torch thread by default (``--threads N``; 0: the config's
``num_threads``, 2). On 2 cores that other work also uses, torch's 2 threads wait on each
other and the wait counts as CPU time (measured here: ~100 ms of CPU per decode step against 7
ms on 1 thread), so the ratios swung from 0.7x to 2.0x between runs and a run took 4 minutes;
on one thread they repeat (0.78x to 0.85x over four runs) in under a minute, and on 2 quieter
cores the config's 2 threads gave the same 0.80-0.83x.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from datasets import disable_progress_bars
from transformers import PrinterCallback, TrainerCallback, set_seed
from transformers.utils import logging as hf_logging

from charlie.config import load_config, load_params
from charlie.evaluation.core import price_window
from charlie.io import load_dataset_dir, require_dataset_dict
from charlie.models import load_for_inference
from charlie.prices.service import load_all_prices
from charlie.rl import grpo
from charlie.rl.config import GRPOTrainConfig
from charlie.strategy import load_strategy
from common import Measured, cpu_seconds

PARTS = ("generate", "TRL around generate", "rewards", "rest (loss, backward, optimizer)")


class Clock:
    """Adds up the wall and CPU seconds of the calls it wraps, by name."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    def reset(self) -> None:
        self.wall.clear()
        self.cpu.clear()

    def timed(self, name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), cpu_seconds()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[name] += cpu_seconds() - cpu
                self.wall[name] += time.perf_counter() - wall

        return wrapper


def generated_tokens(new: torch.Tensor, stops: list[int]) -> list[int]:
    """Per row of ``new`` (the tokens after the prompt), the tokens up to and including the
    row's first stop token, or all of them when it never stopped."""
    hit = torch.isin(new, torch.tensor(stops))
    first = hit.int().argmax(dim=1)
    return [int(f) + 1 if h else new.shape[1] for f, h in zip(first, hit.any(dim=1), strict=True)]


class Rounds(TrainerCallback):
    """Times each optimizer step, then runs the plain references on the step's prompts."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.started = (0.0, 0.0)

    def on_step_begin(self, args, state, control, **kwargs):
        self.bench.begin_step()
        self.started = (time.perf_counter(), cpu_seconds())

    def on_step_end(self, args, state, control, **kwargs):
        wall, cpu = time.perf_counter() - self.started[0], cpu_seconds() - self.started[1]
        self.bench.end_step(wall, cpu)


class Bench:
    """The instrumented trainer and the per-round figures."""

    def __init__(self, trainer: Any, plain_model: Any, tokenizer: Any, seed: int) -> None:
        self.trainer, self.plain_model, self.tokenizer = trainer, plain_model, tokenizer
        self.seed = seed
        self.stops = list(trainer.eos_token_ids)
        self.clock = Clock()
        self.rows: list[dict[str, Any]] = []
        self.policy = trainer.model  # the PEFT model: what TRL's generation unwraps to
        self.policy_generate = self.policy.generate  # the original, for the PEFT reference
        timed = self.clock.timed("generate", self.policy_generate)
        self.policy.generate = self._generate_hook(timed)
        trainer._generate = self.clock.timed("_generate", trainer._generate)
        trainer.reward_funcs = [self._reward_hook(f) for f in trainer.reward_funcs]
        self._reset()

    def _reset(self) -> None:
        self.clock.reset()
        self.calls, self.tokens, self.evaluations = 0, [], 0
        self.prompt_ids, self.prompts = None, None

    def _generate_hook(self, timed: Any) -> Any:
        @functools.wraps(timed)
        def generate(*args: Any, **kwargs: Any) -> Any:
            out = timed(*args, **kwargs)
            ids = kwargs["input_ids"]
            seqs = getattr(out, "sequences", out)
            self.calls += 1
            self.tokens += generated_tokens(seqs[:, ids.shape[1] :], self.stops)
            self.prompt_ids, self.sequences = ids.clone(), seqs.clone()
            self.generation_config = kwargs.get("generation_config")
            return out

        return generate

    def _reward_hook(self, fn: Any) -> Any:
        timed = self.clock.timed("rewards", fn)

        @functools.wraps(fn)
        def reward(prompts: Any, completions: Any, **kwargs: Any) -> Any:
            self.evaluations += len(completions)
            self.prompts = list(prompts)
            return timed(prompts=prompts, completions=completions, **kwargs)

        return reward

    def begin_step(self) -> None:
        self._reset()
        torch.manual_seed(self.seed + len(self.rows))

    def plain_kwargs(self) -> dict[str, Any]:
        """Plain ``generate``'s sampling settings: the config's, as TRL reads them."""
        t, args = self.trainer, self.trainer.args
        return {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p,
                "top_k": args.top_k, "min_p": args.min_p,
                "repetition_penalty": args.repetition_penalty,
                "max_new_tokens": t.max_completion_length, "eos_token_id": self.stops,
                "pad_token_id": self.tokenizer.pad_token_id,
                "num_return_sequences": t.num_generations}  # fmt: skip

    def plain(self, generate: Any, batch: Any) -> tuple[float, float, list[int], Any]:
        torch.manual_seed(self.seed + len(self.rows))
        wall, cpu = time.perf_counter(), cpu_seconds()
        out = generate(**batch, **self.plain_kwargs())
        cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
        return wall, cpu, generated_tokens(out[:, batch["input_ids"].shape[1] :], self.stops), out

    def end_step(self, wall: float, cpu: float) -> None:
        if self.calls != 1 or self.prompts is None:
            sys.exit(f"a GRPO step made {self.calls} generate calls through the policy (expected "
                     "1) or scored nothing: the instrumentation missed TRL's generation.")  # fmt: skip
        group = self.trainer.num_generations
        unique = self.prompts[::group]
        self.tokenizer.padding_side = "left"
        batch = self.tokenizer(unique, return_tensors="pt", padding=True, add_special_tokens=False)
        expanded = batch["input_ids"].repeat_interleave(group, dim=0)
        if not torch.equal(expanded, self.prompt_ids):
            sys.exit("plain generate's prompt ids differ from the ids TRL generated from.")
        differ = {k: (getattr(self.generation_config, k, None), v)
                  for k, v in self.plain_kwargs().items()
                  if k != "num_return_sequences" and getattr(self.generation_config, k, None) != v}  # fmt: skip
        if differ:
            sys.exit(f"TRL's generation config and plain generate's differ (TRL, plain): {differ}")
        gen_tokens, grpo_out, n = self.tokens, self.sequences, len(self.rows)
        step = {"wall": wall, "cpu": cpu, **{f"{k}_cpu": v for k, v in self.clock.cpu.items()},
                **{f"{k}_wall": v for k, v in self.clock.wall.items()},
                "tokens": sum(gen_tokens), "completions": len(gen_tokens),
                "evaluations": self.evaluations}  # fmt: skip
        p_wall, p_cpu, p_tokens, p_out = self.plain(self.plain_model.generate, batch)
        # the policy as TRL generates with it (train mode; the adapter after this step's update)
        q_wall, q_cpu, q_tokens, q_out = self.plain(self.policy_generate, batch)
        # warm-up: the adapter was still zero, so the same weights and seed sample the same ids
        same = n == 0 and grpo_out.shape == p_out.shape and torch.equal(grpo_out, p_out)
        prompt = self.prompt_ids.shape[1]  # decode steps: the batch's longest completion
        self.rows.append({**step, "steps": grpo_out.shape[1] - prompt, "plain_wall": p_wall,
                          "plain_cpu": p_cpu, "plain_tokens": sum(p_tokens),
                          "plain_steps": p_out.shape[1] - prompt, "peft_wall": q_wall,
                          "peft_cpu": q_cpu, "peft_tokens": sum(q_tokens),
                          "peft_steps": q_out.shape[1] - prompt, "same_as_plain": same})  # fmt: skip


def bench_config(path: Path, sft_model: Path, dataset_dir: Path, out: Path, steps: int):
    """The config file's settings with only the run's bookkeeping changed."""
    settings = {"sft_model": sft_model, "dataset_dir": dataset_dir, "output_dir": out,
                "max_steps": steps, "save_strategy": "no", "eval_strategy": "no",
                "report_to": ["none"], "disable_tqdm": True, "logging_steps": steps}  # fmt: skip
    return load_config(path, GRPOTrainConfig,
                       settings={k: (v, "bench_grpo.py") for k, v in settings.items()})  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/grpo_tiny_cpu.yaml"))
    parser.add_argument("--sft-model", type=Path, default=Path("checkpoints/sft"))
    parser.add_argument("--dataset-dir", type=Path, default=Path("data/hf_datasets/sft_dataset"))
    parser.add_argument("--rounds", type=int, default=5, help="timed steps after 1 warm-up")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both sides; 0: the config's num_threads")  # fmt: skip
    args = parser.parse_args()
    missing = [p for p in (args.sft_model, args.dataset_dir) if not p.is_dir()]
    if missing:
        print(f"{', '.join(map(str, missing))} missing: bench_grpo.py times GRPO on the demo's "
              "SFT model and dataset; run `make demo` first.", file=sys.stderr)  # fmt: skip
        return 2
    disable_progress_bars()
    hf_logging.set_verbosity_error()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = bench_config(args.config, args.sft_model, args.dataset_dir, Path(tmp) / "grpo",
                           1 + args.rounds)  # fmt: skip
        strategy = load_strategy(cfg.backtest_config)
        data = load_dataset_dir(require_dataset_dict(cfg.dataset_dir))
        frame = pd.concat([data[s].select_columns(["ticker", "as_of_date"]).to_pandas()
                           for s in ("train", "validation")])  # fmt: skip
        prices = load_all_prices(price_window(frame, [cfg.horizon, cfg.vol_window]),
                                 load_params().prices).frames  # fmt: skip
        train_frame, eval_frame, _ = grpo.build_splits(cfg, data, prices, strategy.price_basis)

        threads = args.threads or cfg.num_threads
        if threads:
            torch.set_num_threads(threads)
        seed = int(cfg.grpo_args.get("seed", 42))
        set_seed(seed)
        model, tokenizer = load_for_inference(cfg.sft_model)
        plain_model, _ = load_for_inference(cfg.sft_model)  # no adapter: the merged SFT model
        plain_model.eval()
        trainer = grpo.build_trainer(cfg, model, tokenizer, train_frame, eval_frame, strategy)
        trainer.remove_callback(PrinterCallback)
        bench = Bench(trainer, plain_model, tokenizer, seed)
        trainer.add_callback(Rounds(bench))
        trainer.train()
    report(cfg, trainer, bench, args.rounds)
    return 0


def report(cfg: GRPOTrainConfig, trainer: Any, bench: Bench, rounds: int) -> None:
    warm, timed = bench.rows[0], bench.rows[1:]
    if len(timed) != rounds:
        sys.exit(f"{len(bench.rows)} steps ran, {1 + rounds} expected.")

    def median(key: str) -> float:
        return statistics.median(r[key] for r in timed)

    def rate(tokens: str, cpu: str) -> float:
        return statistics.median(r[tokens] / r[cpu] for r in timed)

    step = Measured(median("wall"), median("cpu"), None)
    gen = rate("tokens", "generate_cpu")
    plain, peft = rate("plain_tokens", "plain_cpu"), rate("peft_tokens", "peft_cpu")
    paired = statistics.median(
        (r["tokens"] / r["generate_cpu"]) / (r["plain_tokens"] / r["plain_cpu"]) for r in timed
    )
    evals = statistics.median(r["evaluations"] / r["rewards_cpu"] for r in timed)
    a, names = trainer.args, tokenizer_names(bench)
    threads = torch.get_num_threads()
    group, batch = trainer.num_generations, a.per_device_train_batch_size

    print(f"GRPO from {cfg.sft_model}: {batch // group} prompts x {group} completions per step, "
          f"temperature {a.temperature}, top_p {a.top_p}, top_k {a.top_k}, max_completion_length "
          f"{trainer.max_completion_length}, stops {names}, pad {bench.tokenizer.pad_token}; "
          f"LoRA r{cfg.lora_r}/alpha {cfg.lora_alpha}, loss {a.loss_type}, beta {a.beta}, "
          f"lr {a.learning_rate:g}; {threads} thread{'s' * (threads != 1)}, seed {bench.seed}; "
          f"1 warm-up + {rounds} timed steps, medians")  # fmt: skip
    print(f"{'':34}{'tokens':>8}{'steps':>7}{'CPU s':>8}{'wall s':>8}{'tokens/s (CPU)':>16}"
          f"{'ms/step (CPU)':>15}")  # fmt: skip
    per_step = {}
    for label, key, cpu, wall, r in (
        ("GRPO step's generate", "", "generate_cpu", "generate_wall", gen),
        ("plain generate, merged SFT", "plain_", "plain_cpu", "plain_wall", plain),
        ("plain generate, same PEFT policy", "peft_", "peft_cpu", "peft_wall", peft),
    ):
        per_step[key] = statistics.median(1e3 * r_[cpu] / r_[f"{key}steps"] for r_ in timed)
        print(f"{label:34}{median(key + 'tokens'):8.0f}{median(key + 'steps'):7.0f}"
              f"{median(cpu):8.2f}{median(wall):8.2f}{r:16.1f}{per_step[key]:15.2f}")  # fmt: skip
    wall_ratio = _wall_rate(timed, "tokens", "generate_wall") / _wall_rate(
        timed, "plain_tokens", "plain_wall"
    )
    print(f"GRPO / plain generate (merged SFT): {gen / plain:.2f}x tokens/s (CPU; paired per "
          f"round {paired:.2f}x; wall {wall_ratio:.2f}x; per decode step "
          f"{per_step['plain_'] / per_step['']:.2f}x)")  # fmt: skip
    print(f"GRPO / plain generate (same PEFT policy): {gen / peft:.2f}x (per decode step "
          f"{per_step['peft_'] / per_step['']:.2f}x: TRL's own cost); PEFT policy / merged SFT: "
          f"{peft / plain:.2f}x (per decode step {per_step['plain_'] / per_step['peft_']:.2f}x: "
          "the unmerged LoRA layers)")  # fmt: skip
    terms = len(trainer.reward_funcs)
    print(f"rewards: {median('completions'):.0f} completions x {terms} terms = "
          f"{median('evaluations'):.0f} evaluations per step, {evals:,.0f} evaluations/s (CPU), "
          f"{evals / terms:,.0f} completions/s with all {terms} terms")  # fmt: skip
    print(f"one step: {step.cpu:.2f} CPU s, {step.wall:.2f} wall s; of it (median shares, "
          "CPU | wall):")  # fmt: skip
    for part, cpu, wall in shares(timed):
        print(f"  {part:34}{cpu:6.1%} | {wall:6.1%}")
    same = warm["same_as_plain"]
    print(f"warm-up step (adapter still zero, same seed): GRPO's {warm['completions']} completions "
          f"{'identical to' if same else 'DIFFER from'} plain generate's (merged SFT), "
          f"{warm['tokens']} tokens")  # fmt: skip


def tokenizer_names(bench: Bench) -> str:
    return ", ".join(bench.tokenizer.convert_ids_to_tokens(bench.stops))


def _wall_rate(rows: list[dict[str, Any]], tokens: str, wall: str) -> float:
    return statistics.median(r[tokens] / r[wall] for r in rows)


def shares(rows: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """Per part of the step (:data:`PARTS`), its median share of the step's CPU and wall time."""

    def parts(r: dict[str, Any], clock: str) -> list[float]:
        inner, around, scoring = (r[f"{k}_{clock}"] for k in ("generate", "_generate", "rewards"))
        return [inner, around - inner, scoring, r[clock] - around - scoring]

    cpu = [[v / r["cpu"] for v in parts(r, "cpu")] for r in rows]
    wall = [[v / r["wall"] for v in parts(r, "wall")] for r in rows]
    return [(part, statistics.median(c[i] for c in cpu), statistics.median(w[i] for w in wall))
            for i, part in enumerate(PARTS)]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
