"""Generation speed of ``charlie evaluate`` against a raw ``model.generate`` loop.

    .venv/bin/python benchmarks/bench_generate.py [--model-dir checkpoints/sft] [--rows 128]
                                                  [--batch-size 64] [--repeat 3]

Both sides decode the same chat-templated prompts of the demo's test split (``dvc repro``'s
``data/hf_datasets/sft_dataset``; run ``make demo`` first) with the same model, the same
``max_new_tokens`` (the budget ``charlie evaluate`` plans from the model's tokenize report)
and the same stop ids (:func:`charlie.inference.stop_token_ids`), at the same batch size:

* charlie: :func:`charlie.inference.generate`, as the evaluate stage calls it (rows ordered by
  prompt length, each row's text cut at its own stop token).
* raw: what a one-off script does: the prompts in dataset order, ``tokenizer(...,
  padding=True)``, ``model.generate(..., eos_token_id=stops)``, ``batch_decode`` of the new
  tokens. No ordering, no per-row bookkeeping.

Before timing, the two must agree: each row's charlie text must be the raw text up to the
row's first stop token (the raw text keeps the padding after it). Timed runs are interleaved
(charlie, raw, charlie, raw, ...); the medians of CPU time (``common.cpu_seconds``, all threads)
and of wall time are reported, and the target is judged on CPU time, so the machine's load
moves both sides alike. Target: charlie at >= 0.9x the raw loop's rows/s (issue 16).

Also reported: decode-slot use, the share of the decode steps' row slots that held a real
token of a row that had not finished (the rest is padding a static batch forces on rows that
finished before the batch's longest), for the dataset's order and for charlie's order; and
the whole ``charlie evaluate --limit ROWS`` process's CPU time beside its generation's, which
is the stage's fixed cost (imports, loading, metrics, writing).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from charlie.evaluation import budget
from charlie.inference import chat_prompt, generate, prompt_tokens, stop_token_ids
from charlie.io import load_dataset_dir
from charlie.models import load_for_inference
from common import cpu_seconds, interleaved, met

CHARLIE = str(Path(sys.executable).parent / "charlie")


def raw_loop(model, tokenizer, prompts, batch_size, max_new_tokens, stops) -> list[str]:
    """A minimal greedy loop: dataset order, left padding, generate, decode the new tokens."""
    tokenizer.padding_side = "left"
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    out: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], return_tensors="pt",
                              padding=True, add_special_tokens=False)  # fmt: skip
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)  # fmt: skip
            out += tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1] :])
    return out


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The raw text up to and including its first stop token."""
    ends = [text.index(s) + len(s) for s in stops if s in text]
    return text[: min(ends)] if ends else text


def slot_use(new_tokens: list[int], order: list[int], batch_size: int) -> float:
    """Real decode slots over all decode slots, rows batched in ``order``."""
    used = total = 0
    for start in range(0, len(order), batch_size):
        batch = [new_tokens[i] for i in order[start : start + batch_size]]
        used, total = used + sum(batch), total + max(batch) * len(batch)
    return used / total if total else 1.0


def stage_cpu(model_dir: Path, rows: int, batch_size: int) -> float:
    """CPU seconds of a whole ``charlie evaluate --limit rows`` process."""
    before = cpu_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([CHARLIE, "evaluate", "--model-dir", str(model_dir), "--limit", str(rows),
                        "--batch-size", str(batch_size), "--out", f"{tmp}/eval_results.csv"],
                       check=True, capture_output=True)  # fmt: skip
    return cpu_seconds() - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("checkpoints/sft"))
    parser.add_argument("--dataset-dir", type=Path, default=Path("data/hf_datasets/sft_dataset"))
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    prompts = list(load_dataset_dir(args.dataset_dir)["test"]["prompt"])[: args.rows]
    model, tokenizer = load_for_inference(args.model_dir)
    model.eval()
    plan = budget.plan_budget("auto", 1.0, budget.find_report(args.model_dir), None,
                              max(prompt_tokens(tokenizer, p) for p in prompts),
                              model_dir=args.model_dir)  # fmt: skip
    stops = stop_token_ids(tokenizer, model)
    stop_text = tokenizer.convert_ids_to_tokens(stops)
    n, size, budget_tokens = len(prompts), args.batch_size, plan.max_new_tokens

    def ours() -> list:
        return generate(model, tokenizer, prompts, batch_size=size, max_new_tokens=budget_tokens)

    def theirs() -> list[str]:
        return raw_loop(model, tokenizer, prompts, size, budget_tokens, stops)

    mine, raw = ours(), theirs()  # warm-up, and the check that both decode the same
    differ = sum(g.text != cut_at_stop(r, stop_text) for g, r in zip(mine, raw, strict=True))
    if differ:
        print(f"{differ} of {n} rows differ between charlie and the raw loop (greedy "
              "decoding of a different batch composition can flip a near-tie)")  # fmt: skip

    charlie_run, raw_run = interleaved(args.repeat, ours, theirs)
    cpu = {"charlie": charlie_run.cpu, "raw": raw_run.cpu}
    wall = {"charlie": charlie_run.wall, "raw": raw_run.wall}
    ratio = cpu["raw"] / cpu["charlie"]

    lengths = [prompt_tokens(tokenizer, p) for p in prompts]
    new_tokens = [g.new_tokens for g in mine]
    by_length = sorted(range(n), key=lengths.__getitem__)
    whole = stage_cpu(args.model_dir, n, size)

    print(f"{n} rows, batch {size}, max_new_tokens {budget_tokens}, stops {', '.join(stop_text)}, "
          f"{torch.get_num_threads()} threads; {args.repeat} interleaved runs, medians")  # fmt: skip
    print(f"{'':10}{'CPU s':>8}{'wall s':>8}{'rows/s (CPU)':>14}")
    for name in ("charlie", "raw"):
        print(f"{name:10}{cpu[name]:8.2f}{wall[name]:8.2f}{n / cpu[name]:14.1f}")
    print(f"charlie / raw loop: {ratio:.2f}x (CPU; wall {wall['raw'] / wall['charlie']:.2f}x)  "
          f"target >= 0.9: {met(ratio >= 0.9)}")  # fmt: skip
    print(f"rows that ended on a stop token: {sum(g.finished for g in mine)} of {n}")
    print(f"decode-slot use: dataset order {slot_use(new_tokens, list(range(n)), size):.3f}, "
          f"charlie's order (by prompt length) {slot_use(new_tokens, by_length, size):.3f}")  # fmt: skip
    print(f"whole `charlie evaluate --limit {n}`: {whole:.1f} CPU s, of which generation "
          f"{cpu['charlie']:.1f} s: fixed cost {whole - cpu['charlie']:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
