"""The ``charlie`` command: one subcommand per pipeline stage.

A subcommand, its DVC stage (dvc.yaml) and its KFP component share one name. Stage modules
import nothing heavy at module level, so ``charlie --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from charlie import __version__
from charlie.errors import CharlieError

# Order is pipeline order; each module defines HELP, add_arguments() and run().
STAGES: dict[str, str] = {
    "sample": "charlie.stages.sample",
    "parse": "charlie.stages.parse",
    "prices": "charlie.stages.prices",
    "dataset": "charlie.stages.dataset",
    "init-model": "charlie.stages.init_model",
    "tokenize": "charlie.stages.tokenize",
    "train": "charlie.stages.train",
    "evaluate": "charlie.stages.evaluate",
    "backtest": "charlie.stages.backtest",
    "submit": "charlie.stages.submit",
    "plan": "charlie.stages.plan",
}

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


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one subparser per stage."""
    parser = argparse.ArgumentParser(
        prog="charlie",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"charlie {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", title="stages")
    sub.required = True
    for name, module_path in STAGES.items():
        module = importlib.import_module(module_path)
        stage_parser = sub.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        stage_parser.add_argument(
            "--params",
            type=Path,
            default=Path("params.yaml"),
            help="params file whose section for this stage gives the defaults (default: %(default)s)",
        )
        module.add_arguments(stage_parser)
        stage_parser.set_defaults(_run=module.run)
    return parser


def _load_dotenv() -> None:
    if Path(".env").is_file():
        from dotenv import load_dotenv

        load_dotenv(".env", override=False)


def main(argv: list[str] | None = None) -> int:
    """Run one stage; user errors become one sentence on stderr and a non-zero exit code."""
    args = build_parser().parse_args(argv)
    _load_dotenv()
    try:
        return int(args._run(args) or 0)
    except CharlieError as exc:
        logging.getLogger("charlie").debug("failed", exc_info=True)
        print(f"charlie {args.stage}: error: {exc}", file=sys.stderr)
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
