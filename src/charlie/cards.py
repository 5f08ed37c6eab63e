"""Hugging Face cards: ``README.md`` with YAML front matter for the adapter, the merged model and
the dataset, so each folder can be pushed to the hub (``huggingface-cli upload``) as it is.

Pure: each function takes what the stage knows and returns the card's text. The model card
says which base (a hub id, or the absolute path of a local folder), which data (the tokenized
dataset's SHA-256 over its files, the rows per split), how it was trained and to what loss,
how to load it, and what it is not for; the numbers of the evaluation and the backtest come
later in the pipeline and are named where they are written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

INTENDED_USE = (
    "Research on whether a fine-tuned language model adds value to trading decisions: it "
    "writes a thesis (reasoning, support, an action from STRONG_BUY to STRONG_SELL) from a "
    "point-in-time market snapshot, to be judged by Charlie's evaluation and cost-aware "
    "backtest against baselines."
)
LIMITATIONS = (
    "Not investment advice, and not a trading system: a thesis is text a model generated from "
    "the prices in its prompt, right or wrong with the probabilities the evaluation reports "
    "on one test period. Accuracy and backtest figures hold for the data, period and costs "
    "they were measured on; markets change. The bundled demo is trained on a synthetic corpus "
    "whose rule is learnable by design, from a randomly initialised tiny model: its figures "
    "show the pipeline works, not that a model can trade."
)


def _front_matter(fields: Mapping[str, Any]) -> str:
    lines = ["---"]
    for key, value in fields.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"- {json.dumps(item)}" for item in value)
        elif value is not None:
            lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join([*lines, "---", ""])


def data_digest(data_files: Mapping[str, str]) -> str:
    """One SHA-256 over a dataset's files (path and digest of each, sorted): the data version."""
    digest = hashlib.sha256()
    for path, sha in sorted(data_files.items()):
        digest.update(f"{path}\0{sha}\n".encode())
    return digest.hexdigest()


def model_card(
    *,
    name: str,
    base: Mapping[str, Any],
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    data_files: Mapping[str, str],
    rows: Mapping[str, int],
    merged: bool,
    git: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    backtest: Mapping[str, Any] | None = None,
) -> str:
    """The card of a trained adapter (``merged=False``) or of the merged model.

    Args:
        name: The model folder's name (the card's title).
        base: ``base_model.json``'s content: ref (hub id or path), path, revision, source.
        config: The training config (``manifest.json``'s ``config``).
        metrics: The run's final metrics.
        data_files: The tokenized dataset's files and their SHA-256 (the manifest's).
        rows: Rows per split of the training data.
        merged: The card of ``merged/`` (a plain transformers model) or of the adapter.
        git: The code's commit (the manifest's ``git``).
        evaluation: ``eval_headline.json`` (``charlie card`` adds it; train has none yet).
        backtest: ``<stem>_headline.json`` of the backtest of its predictions.
    """
    ref = str(base.get("ref") or config.get("base_model"))
    base_id = ref if base.get("source") == "hub" else str(base.get("path") or ref)
    method = str(config.get("method", "lora"))
    tags = ["charlie", "trading", "finance", "text-generation", "sft", "trl",
            *([] if merged or method == "full" else ["peft", method])]  # fmt: skip
    front = _front_matter({
        "base_model": base_id,
        "library_name": "transformers" if merged or method == "full" else "peft",
        "pipeline_tag": "text-generation",
        "tags": tags,
    })  # fmt: skip
    what = ("the LoRA adapter merged into its base: a plain transformers model" if merged
            else f"a {method.upper()} adapter" if method != "full" else "a full fine-tune")  # fmt: skip
    splits = ", ".join(f"{split} {count:,}" for split, count in rows.items())
    lora = ""
    if method != "full":
        targets = config.get("lora_target_modules")
        lora = (f"; LoRA rank {config.get('lora_r')}, alpha {config.get('lora_alpha')}, dropout "
                f"{config.get('lora_dropout')}, targets {targets if isinstance(targets, str) else ', '.join(targets or [])}")  # fmt: skip

    def metric(key: str, fmt: str = ".4f") -> str:
        value = metrics.get(key)
        return format(value, fmt) if isinstance(value, int | float) else "n/a"

    load = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{name}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")'
        if merged or method == "full"
        else "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
        f'model = AutoPeftModelForCausalLM.from_pretrained("{name}")  # loads {base_id}\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")  # with the thesis tokens'
    )
    commit = (git or {}).get("commit")
    lines = [
        front,
        f"# {name}: a Charlie thesis writer",
        "",
        f"{what.capitalize()}, fine-tuned from `{ref}` with Charlie's `charlie train` (TRL "
        "SFTTrainer, loss on the completion only) to write a trading thesis: "
        "`<reasoning>…</reasoning><support>…</support><action><BUY></action>`.",
        "",
        "## Base model",
        "",
        f"- `{base_id}` ({base.get('source', 'local')}"
        + (f", revision `{base['revision']}`" if base.get("revision") else "")
        + ")",
        "",
        "## Training data",
        "",
        f"- Tokenized dataset `{config.get('dataset_dir')}`, version (SHA-256 over its files) "
        f"`{data_digest(data_files)}`",
        f"- Rows: {splits} (chronological splits, purged for the longest forward window; see "
        "the dataset's own card)",
        f"- Tokens per example at most {config.get('max_length')} "
        f"(`over_length: {config.get('over_length')}`)",
        "",
        "## Training",
        "",
        f"- Method {method}{lora}",
        f"- {metric('global_step', ',')} optimizer steps, {metric('epoch', 'g')} epochs, seed "
        f"{config.get('seed', 42)}; train loss {metric('train_loss')}, validation loss "
        f"{metric('eval_loss')}, validation token accuracy {metric('eval_mean_token_accuracy')}",
        "- `manifest.json` beside the adapter has the rest: config and its hash, every data "
        "file's hash, package versions, hardware, determinism, the loss history"
        + (f"; code at commit `{commit}`" if commit else ""),
        "",
        "## Evaluation and backtest",
        "",
        *_results(evaluation, backtest),
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Limitations",
        "",
        LIMITATIONS,
        "",
        "## How to load",
        "",
        "```python",
        load,
        "```",
        "",
        "The prompt is Charlie's chat template with a market snapshot (`charlie.prompts`); "
        "`charlie evaluate --model-dir <this folder>` generates and scores theses with it.",
        "",
    ]
    return "\n".join(lines)


def _results(evaluation: Mapping[str, Any] | None, backtest: Mapping[str, Any] | None) -> list[str]:
    """The card's evaluation and backtest lines: the headlines' numbers, or where they go."""
    if evaluation is None or backtest is None:
        return ["Measured after training, on the test split: `charlie evaluate` writes accuracy, "
                "macro-F1 and trade returns against baselines, with block-bootstrap intervals and "
                "permutation p-values (`results/eval_summary.md`), and `charlie backtest` the "
                "portfolio after costs (`backtests/baseline_report.html`); `charlie card` copies "
                "this folder with their numbers in its card."]  # fmt: skip

    def num(source: Mapping[str, Any], key: str, fmt: str) -> str:
        value = source.get(key)
        return format(value, fmt) if isinstance(value, int | float) else "n/a"

    e, b = evaluation, backtest
    return [
        "On the test split (the evaluation's block-bootstrap intervals; the backtest long the "
        "model's calls under the configured costs):",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| accuracy | {num(e, 'accuracy', '.3f')} (95% {num(e, 'accuracy_ci95_lo', '.3f')} – "
        f"{num(e, 'accuracy_ci95_hi', '.3f')}) |",
        f"| macro-F1 | {num(e, 'macro_f1', '.3f')} |",
        f"| parse rate | {num(e, 'parse_rate', '.3f')} |",
        f"| edge over the strongest baseline (accuracy) | {num(e, 'edge_over_best_baseline', '+.3f')} |",
        f"| p-value, predictions rotated in time within ticker | {num(e, 'p_rotate_accuracy', '.3g')} |",
        f"| mean 1-day trade return | {num(e, 'mean_trade_return_1d', '+.4%')} |",
        f"| backtest total return | {num(b, 'total_return', '+.2%')} (exposure-matched benchmark "
        f"{num(b, 'matched_benchmark_return', '+.2%')}) |",
        f"| backtest Sharpe | {num(b, 'sharpe', '.2f')} (95% lower bound {num(b, 'sharpe_ci_lo', '.2f')}; "
        f"deflated Sharpe {num(b, 'dsr', '.2f')}) |",
        f"| max drawdown | {num(b, 'max_drawdown', '.2%')} |",
        f"| trades, costs paid | {num(b, 'trades', ',')}, {num(b, 'costs_paid', ',.0f')} |",
    ]


def dataset_card(card: Mapping[str, Any], markdown: str) -> str:
    """``README.md`` beside the DatasetDict: HF front matter, then the dataset card's Markdown."""
    rows = card.get("records", {})
    total = sum(int(v) for v in rows.values())
    size = next(cat for limit, cat in ((1_000, "n<1K"), (10_000, "1K<n<10K"),
                                       (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                                       (float("inf"), "n>1M")) if total < limit)  # fmt: skip
    front = _front_matter({
        "pretty_name": "Charlie trading theses (SFT)",
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["charlie", "finance", "trading", "sft"],
        "size_categories": [size],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"{s}/*.arrow"} for s in rows]}],
    })  # fmt: skip
    note = (f"Load it with `datasets.load_from_disk` on this folder. Version (SHA-256 of the "
            f"inputs): `{card.get('input_sha256', 'n/a')}`.\n\n")  # fmt: skip
    return front + note + markdown
