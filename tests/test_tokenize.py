"""`charlie tokenize` on real-length theses: max_length auto, trimming that keeps the header,
the over-length and label-shift gates, and the report's lengths and per-action counts.

The theses are generated in-process with ``detail="full"`` (about 2.4 kB of reasoning each, as
in a real corpus), and the tokenizer is a tiny BPE one trained on them: no download.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from charlie import ACTIONS
from charlie import dataset as core
from charlie.cli import main
from charlie.errors import CharlieError
from charlie.parsing import parse_files
from charlie.prompts import PROMPT_HEADER
from charlie.sample import SampleSpec, generate, render_prices_csv, render_xml
from charlie.training.config import TrainConfig, context_length
from charlie.training.tokenize import (
    check_gates,
    choose_max_length,
    encode,
    fit,
    summarize_split,
)

pytest.importorskip("transformers")

SPLITS = core.SplitSpec(dt.date(2024, 1, 2), dt.date(2024, 4, 30), 30, dt.date(2024, 5, 1),
                        dt.date(2024, 5, 31))  # fmt: skip


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, list[dict]]:
    """Dataset rows (what `charlie dataset` builds) from full-detail generated theses."""
    spec = SampleSpec(tickers=3, start=dt.date(2024, 1, 2), end=dt.date(2024, 5, 31),
                      detail="full", ipo_ticker=False, dirty_rate=0.0)  # fmt: skip
    root = tmp_path_factory.mktemp("full")
    samples = generate(spec)
    paths = []
    for sample in samples:
        path = root / f"{sample.ticker}.xml"
        path.write_text(render_xml(sample, spec.seed), encoding="utf-8")
        paths.append(path)
    records = parse_files(paths).records
    frames = {
        s.ticker: pd.read_csv(io.StringIO(render_prices_csv(s)), parse_dates=["date"])
        for s in samples
    }
    built, _, _ = core.build_rows(records, frames, SPLITS, drop_outside=True)
    return built


@pytest.fixture(scope="module")
def tokenizer(rows):
    from charlie.training.tokens import add_thesis_tokens, train_tokenizer

    texts = (r["prompt"] + "\n" + r["completion"] for r in rows["train"])
    tok = train_tokenizer(texts, 1024)
    add_thesis_tokens(tok)
    return tok


def _length(tokenizer, row) -> int:
    head, tail = encode(tokenizer, row["prompt"], row["completion"])
    return len(head) + len(tail)


def test_the_theses_are_real_length(rows):
    reasoning = [len(r["completion"]) for r in rows["train"]]
    assert sum(reasoning) / len(reasoning) > 2000  # ~2.4 kB of reasoning, plus the support
    assert {r["action"] for r in rows["train"]} == set(ACTIONS)


# --------------------------------------------------------------------------- trimming


def test_trimming_drops_whole_sections_and_keeps_the_instruction_and_header(tokenizer, rows):
    row = rows["test"][0]
    full = _length(tokenizer, row)
    limit = full - 30  # a few sections must go
    ids, mask, outcome = fit(tokenizer, row["prompt"], row["completion"], limit, "trim_prompt")
    assert outcome == "trimmed" and len(ids) <= limit
    prompt = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    header = next(line for line in row["prompt"].splitlines() if line.startswith("Market snapshot"))
    assert PROMPT_HEADER in prompt  # the instruction
    assert header in prompt and row["ticker"] in header and row["as_of_date"] in header
    assert "52-week range:" not in prompt  # the least important section went first
    assert "Bar: " in prompt  # the most important stayed
    kept_lines = [line for line in prompt.splitlines() if ": " in line]
    assert all(line in row["prompt"] for line in kept_lines if "<|" not in line)  # whole lines
    completion = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert completion.startswith(row["completion"])  # never cut: the action survives
    assert fit(tokenizer, row["prompt"], row["completion"], limit, "drop") == ([], [], "dropped")


def test_an_example_whose_header_and_completion_alone_do_not_fit_is_dropped(tokenizer, rows):
    row = rows["test"][0]
    _, tail = encode(tokenizer, row["prompt"], row["completion"])
    assert fit(tokenizer, row["prompt"], row["completion"], len(tail) + 5, "trim_prompt") == (
        [], [], "dropped"
    )  # fmt: skip


# --------------------------------------------------------------------------- lengths and gates


def test_auto_picks_the_longest_example_capped_by_the_context():
    assert choose_max_length("auto", 957, 1024) == 957
    assert choose_max_length("auto", 1500, 1024) == 1024
    assert choose_max_length("auto", 957, None) == 957
    assert choose_max_length(512, 957, 1024) == 512


def test_the_context_length_comes_from_the_model_config_or_a_sane_tokenizer_limit():
    assert context_length({"max_position_embeddings": 1024}, 4096) == 1024
    assert context_length({"text_config": {"max_position_embeddings": 8192}}) == 8192
    assert context_length({"n_positions": 2048}) == 2048
    assert context_length({}, 4096) == 4096
    assert context_length({}, int(1e30)) is None  # transformers' "no limit"
    assert context_length({}) is None


def _split(counts: dict[str, tuple[int, int, int]]) -> dict:
    """A summary from {action: (examples, trimmed, dropped)}."""
    outcomes, actions = [], []
    for action, (n, trimmed, dropped) in counts.items():
        outcomes += ["trimmed"] * trimmed + ["dropped"] * dropped + ["ok"] * (n - trimmed - dropped)
        actions += [action] * n
    return summarize_split(outcomes, actions, [100] * len(actions), [50] * len(actions))


def test_the_summary_counts_per_action():
    summary = _split({"BUY": (10, 2, 3), "SELL": (5, 0, 1)})
    assert summary["examples"] == 15 and summary["kept"] == 11
    assert (summary["trimmed"], summary["dropped"], summary["over_max_length"]) == (2, 4, 6)
    assert summary["by_action"]["BUY"] == {"examples": 10, "trimmed": 2, "dropped": 3}
    assert summary["by_action"]["HOLD"] == {"examples": 0, "trimmed": 0, "dropped": 0}
    assert list(summary["by_action"]) == list(ACTIONS)
    assert summary["prompt_tokens"]["p50"] == 100 and summary["completion_tokens"]["max"] == 50
    assert summary["tokens"]["p99"] == 150


GATES = {"context": 1024, "longest": 957, "max_over_length_share": 0.01, "max_label_shift": 0.02}


def test_an_explicit_max_length_that_cuts_too_much_is_one_sentence_with_the_fitting_length():
    splits = {"train": _split({"BUY": (3000, 2000, 1000), "SELL": (4496, 2007, 553)})}
    with pytest.raises(CharlieError) as error:
        check_gates(splits, setting=512, max_length=512, **GATES)
    assert str(error.value) == (
        "max_length 512 trims 4,007 and drops 1,553 of 7,496 train examples (74%), over "
        "max_over_length_share 1%; max_length 957 fits every example (or set max_length: auto)."
    )


def test_auto_capped_by_the_context_names_the_longest_example():
    splits = {"train": _split({"BUY": (100, 5, 0)})}
    with pytest.raises(CharlieError, match=r"^max_length auto \(capped at the base model's "
                       r"context, 1,024\) trims 5 and drops 0 of 100 train examples \(5%\).*"
                       r"the longest example needs 1,500 tokens, more than the base model's "
                       r"context \(1,024\)"):  # fmt: skip
        check_gates(splits, setting="auto", max_length=1024, **{**GATES, "longest": 1500})


def test_dropping_that_shifts_the_labels_is_refused_naming_the_action():
    # 1% dropped (within the share) but all of them SELL: SELL falls from 5% to 4%.
    splits = {"validation": _split({"BUY": (900, 0, 0), "HOLD": (50, 0, 0), "SELL": (50, 0, 10)})}
    check_gates(splits, setting=512, max_length=512, **GATES)  # a 1-point shift is allowed
    with pytest.raises(CharlieError) as error:
        check_gates(splits, setting=512, max_length=512, **{**GATES, "max_label_shift": 0.005})
    assert str(error.value) == (
        "max_length 512 drops 10 of 1,000 validation examples and moves SELL from 5.0% of all "
        "examples to 4.0% of those kept, more than max_label_shift 0.005; max_length 957 fits "
        "every example (or set max_length: auto)."
    )


def test_within_both_limits_passes():
    splits = {"train": _split({"BUY": (1000, 5, 5), "SELL": (1000, 0, 0)})}
    check_gates(splits, setting=512, max_length=512, **GATES)


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory, rows, tokenizer) -> dict[str, Path]:
    """A dataset dir (`charlie dataset`'s output) and a tiny base model of 1024 positions."""
    from datasets import Dataset, DatasetDict

    from charlie.training.tokens import build_tiny_model, train_tokenizer

    root = tmp_path_factory.mktemp("stage")
    DatasetDict({s: Dataset.from_list(r) for s, r in rows.items()}).save_to_disk(root / "sft")
    base_tok = train_tokenizer((r["prompt"] + "\n" + r["completion"] for r in rows["train"]), 1024)
    model = build_tiny_model(base_tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                             intermediate_size=64, max_positions=1024, seed=0)  # fmt: skip
    base_tok.save_pretrained(root / "base")
    model.save_pretrained(root / "base")
    return {"sft": root / "sft", "base": root / "base"}


def _tokenize(tmp_path: Path, inputs: dict[str, Path], *flags: str, **keys) -> int:
    config = tmp_path / "sft.yaml"
    body = {"base_model": str(inputs["base"]), "output_dir": str(tmp_path / "run"), **keys}
    config.write_text("".join(f"{k}: {v}\n" for k, v in body.items()))
    return main(["tokenize", "--params", str(tmp_path / "none.yaml"), "--config", str(config),
                 "--dataset", str(inputs["sft"]), "--out", str(tmp_path / "tok"), *flags])  # fmt: skip


def test_the_stage_with_auto_fits_every_example_and_reports_lengths_per_action(
    tmp_path, stage_inputs, rows, tokenizer
):
    assert _tokenize(tmp_path, stage_inputs, max_length="auto") == 0
    report = json.loads((tmp_path / "tok" / "tokenize_report.json").read_text())
    longest = max(_length(tokenizer, r) for split in rows.values() for r in split)
    assert 1024 > longest > 700  # real-length theses, within the tiny model's context
    assert report["max_length"] == report["longest_example"] == longest
    assert report["max_length_setting"] == "auto" and report["context_length"] == 1024
    for split, part in rows.items():
        info = report["splits"][split]
        assert info["examples"] == info["kept"] == len(part)
        assert info["trimmed"] == info["dropped"] == 0
        assert set(info["prompt_tokens"]) >= {"p50", "p90", "p99", "max"}
        assert info["completion_tokens"]["max"] > info["prompt_tokens"]["max"]  # long theses
        counts = {a: sum(r["action"] == a for r in part) for a in ACTIONS}
        assert {a: c["examples"] for a, c in info["by_action"].items()} == counts
    from datasets import load_from_disk

    saved = load_from_disk(str(tmp_path / "tok"))
    assert len(saved["train"]) == len(rows["train"])
    assert {"input_ids", "completion_mask", "action"} <= set(saved["train"].column_names)
    assert not {"outcome", "prompt_tokens", "prompt"} & set(saved["train"].column_names)


def test_the_stage_refuses_an_explicit_max_length_that_cuts_and_writes_nothing(
    tmp_path, stage_inputs, capsys
):
    assert _tokenize(tmp_path, stage_inputs, max_length=512) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # the log lines come before it
    assert err.startswith("charlie tokenize: error: max_length 512 trims ")
    assert (
        "over max_over_length_share 1%; max_length " in err and "(or set max_length: auto)" in err
    )
    assert not (tmp_path / "tok").exists()


def test_the_stage_trims_within_the_gates_when_allowed(tmp_path, stage_inputs, rows, tokenizer):
    longest = max(_length(tokenizer, r) for r in rows["train"])  # so train has rows to trim
    flags = ["--max-length", str(longest - 20), "--max-over-length-share", "1"]
    assert _tokenize(tmp_path, stage_inputs, *flags, max_length="auto") == 0
    report = json.loads((tmp_path / "tok" / "tokenize_report.json").read_text())
    assert report["max_length"] == report["max_length_setting"] == longest - 20
    train = report["splits"]["train"]
    assert train["trimmed"] > 0 and train["dropped"] == 0
    assert sum(c["trimmed"] for c in train["by_action"].values()) == train["trimmed"]


def test_max_length_is_a_number_or_auto():
    base = {"base_model": "m", "output_dir": "o"}
    assert TrainConfig(**base, max_length="auto").max_length == "auto"
    assert TrainConfig(**base, max_length="512").max_length == 512  # from a flag
    for bad in (8, "x", True):
        with pytest.raises(ValueError, match="whole number of tokens"):
            TrainConfig(**base, max_length=bad)
