"""The ``charlie`` command: one subcommand per pipeline stage, and seven utilities.

A pipeline stage's subcommand, its DVC stage (dvc.yaml) and its KFP component share one name;
``sample``, ``prices``, ``plan``, ``submit``, ``fetch-model``, ``train-job`` and ``card`` are
utilities (no DVC stage; plan, fetch-model and train-job are Kubeflow components too). Only the module
of the subcommand being run is imported, so ``charlie --help`` imports no stage at all.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from pathlib import Path

from charlie import __version__
from charlie.errors import CharlieError, did_you_mean
from charlie.logs import VERBOSE_ENV, quiet_libraries, redact

# Pipeline order. Each is charlie.stages.<name with _ for ->, defining add_arguments() and run()
# (its docstring is the subcommand's --help); the line here is the one-line summary.
STAGES: dict[str, str] = {
    "sample": "generate the synthetic sample corpus (theses XML + prices)",
    "parse": "parse XML theses into JSONL records (hardened, nothing lost)",
    "prices": "fetch daily prices (file | eodhd | yfinance) into the parquet cache",
    "dataset": "build the train/validation/test DatasetDict from records and prices",
    "init-model": "build the tiny local tokenizer and Llama model the CPU demo trains",
    "tokenize": "apply the chat template and special tokens; save tokenized shards",
    "train": "fine-tune with TRL SFTTrainer + LoRA/QLoRA (resumable, with a manifest)",
    "grpo": "align the SFT model with trading rewards: TRL GRPOTrainer + LoRA (Phase 2)",
    "evaluate": "generate theses for a split and score them against baselines",
    "backtest": "simulate the predictions as a cost-aware daily portfolio, with an HTML report",
    "compare": "two models side by side on the same rows (SFT vs GRPO), with paired tests",
    "submit": "upload the compiled pipeline to Kubeflow Pipelines and start (and follow) a run",
    "plan": "estimate per-GPU memory of a training config and say whether it fits",
    "fetch-model": "bring a hub or object-store base model onto the cache volume (Kubeflow)",
    "train-job": "train on several nodes as a Kubeflow Trainer TrainJob, and follow it",
    "card": "copy a trained model with a model card that has its evaluation and backtest",
}
UTILITIES = ("sample", "prices", "plan", "submit", "fetch-model", "train-job", "card")
"""Commands that are not pipeline stages: no DVC stage."""
CLUSTER_STEPS = ("plan", "fetch-model", "train-job")
"""Utilities the Kubeflow pipeline also runs, each as a KFP component of its own: the plan
before any GPU is requested, a real base model's download, multi-node training."""


def stage_module(name: str) -> str:
    """The module that implements subcommand ``name``."""
    return f"charlie.stages.{name.replace('-', '_')}"


DESCRIPTION = """\
Charlie fine-tunes a causal LLM to write trading theses (reasoning, support, action) from a
point-in-time market snapshot, then judges it as a classifier and as a trader.

Every stage reads its section of params.yaml; flags override it, and so do environment
variables named CHARLIE_<SECTION>__<KEY> (a .env file is loaded if present). Logs go to the
console and to logs/<stage>-<timestamp>.log.
"""

EPILOG = """\
examples:
  charlie sample                  regenerate the bundled sample in data/samples/
  charlie parse                   parse data/samples/xml into data/jsonl/ (params.yaml)
  charlie parse --input-dir data/raw_xml --strict
  charlie evaluate                score the trained model on the test split (configs/eval_config.yaml)
  charlie backtest                simulate a portfolio from its predictions, after costs
  dvc repro                       run the whole pipeline as `make demo` does
"""


class Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" for a mistyped stage or flag (``charlie trian``,
    ``--confg``), as git and pip answer."""

    stage_flags: tuple[str, ...] = ()  # the named stage's flags (its parser's extras land here)

    def error(self, message: str) -> None:  # type: ignore[override]
        choice = re.search(r"invalid choice: '([^']*)'", message)
        if choice and self._subparsers is not None:
            names = [n for a in self._subparsers._group_actions if a.choices for n in a.choices]
            hint = did_you_mean(choice.group(1), names)
            message = f"'{choice.group(1)}' is not a stage{hint}; the stages are {', '.join(names)}"
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = [o for a in self._actions for o in a.option_strings] + list(self.stage_flags)
            hints = [f"{w.split('=')[0]}{did_you_mean(w.split('=')[0], flags)}"
                     for w in unknown.group(1).split() if w.startswith("-")]  # fmt: skip
            hints = [h for h in hints if "did you mean" in h]
            if hints:
                message += f": {'; '.join(hints)}"
        super().error(message)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser; the stage ``argv`` names (its first word) gets its flags.

    Every stage is listed with its summary, but only the named one is imported, so the
    top-level help and every other stage cost nothing.
    """
    named = next((a for a in (argv or []) if not a.startswith("-")), None)
    parser = Parser(
        prog="charlie",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"charlie {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", title="stages")
    sub.required = True
    for name, summary in STAGES.items():
        if name != named:
            sub.add_parser(name, help=summary)
            continue
        module = importlib.import_module(stage_module(name))
        stage_parser = sub.add_parser(
            name,
            help=summary,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        stage_parser.add_argument(
            "--params",
            type=Path,
            default=Path("params.yaml"),
            help="params file whose section for this stage gives the defaults (default: %(default)s)",
        )
        stage_parser.add_argument(
            "--verbose",
            action="store_true",
            help="show debug lines and the library warnings Charlie hides (charlie.logs)",
        )
        module.add_arguments(stage_parser)
        stage_parser.set_defaults(_run=module.run)
        parser.stage_flags = tuple(o for a in stage_parser._actions for o in a.option_strings)
    return parser


def _load_dotenv() -> None:
    if Path(".env").is_file():
        from dotenv import load_dotenv

        try:
            load_dotenv(".env", override=False, encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CharlieError(
                f".env is not UTF-8 text (byte {exc.start}); save it as UTF-8."
            ) from None


def main(argv: list[str] | None = None) -> int:
    """Run one stage; user errors become one sentence on stderr and a non-zero exit code."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"
    quiet_libraries()
    try:
        _load_dotenv()
        return int(args._run(args) or 0)
    except CharlieError as exc:
        logging.getLogger("charlie").debug("failed", exc_info=True)
        print(redact(f"charlie {args.stage}: error: {exc}"), file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a path the user named cannot be read or written
        where = f": {exc.filename}" if exc.filename else ""
        print(f"charlie {args.stage}: error: {exc.strerror or exc}{where}.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"charlie {args.stage}: interrupted; outputs were left as they were.", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
