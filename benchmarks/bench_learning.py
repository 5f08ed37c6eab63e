"""Does the demo learn the sample's rule, and reliably? Accuracy and macro-F1 over seeds.

    .venv/bin/python benchmarks/bench_learning.py [--seeds 42,43,44] [--config PATH] [--keep DIR]

Trains the demo config (configs/sft_tiny_lora_cpu.yaml by default) once per seed with
`charlie train` on the pipeline's tokenized data, evaluates each run on the test split with
`charlie evaluate` (the same commands `dvc repro` runs; only the seed and the output folders
differ), and prints per seed the test accuracy with its 95% interval (a block bootstrap over
dates), macro-F1 and the parse rate; then the baselines on the same rows (majority class,
always BUY, the 20-day momentum sign, random at the model's frequencies) and the rule the
sample was written from (its noise-free action, which the written labels follow but for
``label_noise``: the ceiling). Targets (issue 13): mean accuracy >= 0.70, a spread (max - min)
<= 0.03 over the seeds, and every seed's interval above every baseline's.

Needs the tokenized data and the tiny base model: run `dvc repro tokenize` (or `make demo`)
first. About 3 minutes per seed on 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from charlie.config import load_params

REPO = Path(__file__).resolve().parent.parent
CHARLIE = [sys.executable, "-m", "charlie"]
TARGET_ACCURACY, TARGET_SPREAD = 0.70, 0.03
BASELINES = ("majority", "always BUY", "momentum 20d sign", "random at the model's frequencies")


def run(argv: list[str]) -> float:
    """Run one `charlie` command in the repository; its wall time in seconds."""
    start = time.perf_counter()
    done = subprocess.run([*CHARLIE, *argv], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"charlie {argv[0]} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def rule_accuracy(results_csv: Path) -> float | None:
    """Agreement of the sample's noise-free rule with the written test labels (the ceiling)."""
    import datetime as dt

    import pandas as pd

    from charlie.sample import SampleSpec, generate

    manifest = REPO / "data/samples/manifest.json"
    if not manifest.is_file():
        return None
    spec = json.loads(manifest.read_text())["spec"]
    spec.update(start=dt.date.fromisoformat(spec["start"]), end=dt.date.fromisoformat(spec["end"]))
    rules = {
        f"{sample.ticker}-{thesis.date.isoformat()}": thesis.rule_action
        for sample in generate(SampleSpec(**spec))
        for thesis in sample.theses
    }
    frame = pd.read_csv(results_csv)
    known = frame["uid"].map(rules)
    return float((known == frame["true_action"]).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated training seeds")
    parser.add_argument("--config", default=None, help="training config (params.yaml's)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    config = Path(args.config or params.train.config)
    tokenized = REPO / params.train.dataset_dir
    if not (tokenized / "dataset_dict.json").is_file():
        sys.exit(f"{tokenized} holds no tokenized data: run `dvc repro tokenize` first.")
    seeds = [int(s) for s in args.seeds.split(",")]
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-learning-"))
    rows, metrics = [], {}
    for seed in seeds:
        out = root / f"seed-{seed}"
        out.mkdir(parents=True, exist_ok=True)
        cfg = yaml.safe_load((REPO / config).read_text())
        cfg.update(seed=seed, report_to=["none"], save_strategy="no")
        seeded = out / "config.yaml"
        seeded.write_text(yaml.safe_dump(cfg))
        print(f"seed {seed}: training ({config}) ...", flush=True)
        train_s = run(["train", "--config", str(seeded), "--dataset-dir", str(tokenized),
                       "--output-dir", str(out / "model"), "--no-merge", "--no-resume"])  # fmt: skip
        print(f"seed {seed}: evaluating ...", flush=True)
        eval_s = run(["evaluate", "--model-dir", str(out / "model"),
                      "--out", str(out / "eval" / "eval_results.csv")])  # fmt: skip
        m = json.loads((out / "eval" / "eval_metrics.json").read_text())
        metrics[seed] = m
        c, model = m["classification"], m["baselines"]["model"]
        rows.append((seed, c["accuracy"], model["accuracy_ci95"], c["macro_f1"],
                     c["parse_rate"], train_s, eval_s))  # fmt: skip

    print(f"\n{config}, test split ({metrics[seeds[0]]['rows']} rows)\n")
    print(f"{'seed':>6}  {'accuracy':>8}  {'95% interval':>15}  {'macro-F1':>8}  "
          f"{'parsed':>6}  {'train s':>7}  {'eval s':>6}")  # fmt: skip
    for seed, acc, ci, f1, parsed, train_s, eval_s in rows:
        print(f"{seed:>6}  {acc:8.3f}  [{ci[0]:.3f}, {ci[1]:.3f}]  {f1:8.3f}  {parsed:6.3f}  "
              f"{train_s:7.0f}  {eval_s:6.0f}")  # fmt: skip
    accuracies = [r[1] for r in rows]
    mean, spread = sum(accuracies) / len(accuracies), max(accuracies) - min(accuracies)
    print(f"{'mean':>6}  {mean:8.3f}  spread (max - min) {spread:.3f}\n")

    print(f"{'baseline (first seed rows)':<40}  {'accuracy':>8}  {'95% interval':>15}")
    top = 0.0
    for name, b in metrics[seeds[0]]["baselines"].items():
        if name == "model" or not name.startswith(BASELINES):
            continue
        top = max(top, b["accuracy_ci95"][1])
        ci = b["accuracy_ci95"]
        print(f"{name:<40}  {b['accuracy']:8.3f}  [{ci[0]:.3f}, {ci[1]:.3f}]")
    ceiling = rule_accuracy(root / f"seed-{seeds[0]}" / "eval" / "eval_results.csv")
    if ceiling is not None:
        print(f"{'the rule itself (the ceiling)':<40}  {ceiling:8.3f}")

    lowest = min(r[2][0] for r in rows)
    checks = {
        f"mean accuracy >= {TARGET_ACCURACY}": mean >= TARGET_ACCURACY,
        f"spread <= {TARGET_SPREAD}": spread <= TARGET_SPREAD,
        "every interval above every baseline's": lowest > top,
    }
    print()
    for what, ok in checks.items():
        print(f"{'met' if ok else 'MISSED':>6}  {what}")
    if args.keep is None:
        print(f"\nruns in {root} (temporary; --keep DIR to choose)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
