"""Make a trained model publishable: a copy of its folder whose model card has the numbers.

    charlie card                                   # checkpoints/sft -> dist/sft
    charlie card --model-dir checkpoints/sft --out dist/sft
    huggingface-cli upload my-org/charlie-sft dist/sft

`charlie train` writes the model card (README.md) when it knows only the training; the
evaluation and the backtest come later. This utility copies --model-dir (hard links where the
filesystem allows, so a merged 8B model costs no space) into --out and rewrites README.md there,
and in its merged/, with the evaluation's and the backtest's headlines (accuracy with its
interval, macro-F1, the edge over the strongest baseline and its p-value, the 1-day trade
return; total return, Sharpe with its interval, deflated Sharpe, max drawdown, costs). The
model folder itself is a DVC output and is left as it is.

exit codes:
  0  copied, with the card
  2  no trained model, a missing headline, or --out inside --model-dir (one sentence says which)
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

from charlie.errors import CharlieError
from charlie.logs import setup_logging

log = logging.getLogger("charlie.card")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model folder, the headlines and where the publishable copy goes."""
    parser.add_argument("--model-dir", type=Path, default=Path("checkpoints/sft"),
                        help="a `charlie train` output (default: %(default)s)")  # fmt: skip
    parser.add_argument("--eval-headline", type=Path, default=Path("results/eval_headline.json"),
                        help="`charlie evaluate`'s headline (default: %(default)s)")  # fmt: skip
    parser.add_argument("--backtest-headline", type=Path,
                        default=Path("backtests/baseline_headline.json"),
                        help="`charlie backtest`'s headline (default: %(default)s)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None,
                        help="the publishable copy (default: dist/<model-dir's name>)")  # fmt: skip


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run(args: argparse.Namespace) -> int:
    """Copy the model folder and write its complete card; returns the exit code."""
    from charlie.basemodel import read_reference
    from charlie.cards import model_card
    from charlie.io import read_json_object

    setup_logging("card")
    model_dir, out = Path(args.model_dir), Path(args.out or Path("dist") / args.model_dir.name)
    manifest_path = model_dir / "manifest.json"
    if not manifest_path.is_file():
        raise CharlieError(f"{model_dir} holds no manifest.json: point --model-dir at a "
                           "`charlie train` output.")  # fmt: skip
    if out.resolve().is_relative_to(model_dir.resolve()):
        raise CharlieError(f"--out {out} is inside --model-dir {model_dir}: choose another folder.")
    headlines = {}
    for name, path in (("evaluation", args.eval_headline), ("backtest", args.backtest_headline)):
        if not Path(path).is_file():
            raise CharlieError(f"{path} does not exist: run `charlie {'evaluate' if name == 'evaluation' else 'backtest'}` "
                               "first (or `dvc repro`).")  # fmt: skip
        headlines[name] = read_json_object(Path(path))
    manifest = read_json_object(manifest_path)
    base = read_reference(model_dir) or {"ref": manifest["config"]["base_model"],
                                         "path": manifest["config"]["base_model"]}  # fmt: skip
    report = model_dir / "tokenize_report.json"
    rows = {}
    if report.is_file():
        splits = read_json_object(report).get("splits", {})
        rows = {s: int(v.get("examples", 0)) for s, v in splits.items() if isinstance(v, dict)}
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model_dir, out, copy_function=_link_or_copy,
                    ignore=shutil.ignore_patterns("checkpoint-*", "runs"))  # fmt: skip
    merged = out / "merged"
    method = manifest["config"].get("method", "lora")
    for folder, is_merged in (
        (out, method == "full"),
        *([(merged, True)] if merged.is_dir() else []),
    ):
        card = model_card(name=folder.name, base=base, config=manifest["config"],
                          metrics=manifest["final_metrics"], data_files=manifest["data_files"],
                          rows=rows, merged=is_merged, git=manifest.get("git"), **headlines)  # fmt: skip
        readme = folder / "README.md"
        readme.unlink(missing_ok=True)  # a hard link to the DVC output's: never write through it
        readme.write_text(card, encoding="utf-8")
    log.info("wrote %s with its model card (evaluation accuracy %s, backtest Sharpe %s); "
             "publish it with: huggingface-cli upload <repo> %s", out,
             headlines["evaluation"].get("accuracy"), headlines["backtest"].get("sharpe"), out)  # fmt: skip
    return 0
