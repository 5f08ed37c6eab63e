"""Special tokens, tokenization, the completion-only loss, a LoRA run end to end, and learning.

Everything runs on the CPU with a tiny Llama built from the sample's own text: no download.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from datasets import Dataset, DatasetDict

from charlie import UNPARSEABLE, cli
from charlie import dataset as core
from charlie.errors import CharlieError
from charlie.inference import extract_action, greedy_complete
from charlie.parsing import parse_files
from charlie.prompts import PROMPT_HEADER
from charlie.training.config import TrainConfig, load_train_config
from charlie.training.tokenize import STATS, fit, tokenize_batch
from charlie.training.tokens import (
    THESIS_TOKENS,
    add_thesis_tokens,
    build_tiny_model,
    train_tokenizer,
)

from .conftest import REPO, SAMPLES

SPEC = core.SplitSpec(dt.date(2023, 10, 24), dt.date(2024, 12, 31), 30, dt.date(2025, 1, 1),
                      dt.date(2025, 4, 24))  # fmt: skip


@pytest.fixture(scope="module")
def rows() -> dict[str, list[dict]]:
    """The bundled sample as dataset rows (what `charlie dataset` builds)."""
    records = parse_files(sorted((SAMPLES / "xml").glob("*.xml"))).records
    frames = {
        p.stem: pd.read_csv(p, parse_dates=["date"]) for p in (SAMPLES / "prices").glob("*.csv")
    }
    built, _, _ = core.build_rows(records, frames, SPEC, drop_outside=False)
    return built


@pytest.fixture(scope="module")
def tokenizer(rows):
    tok = train_tokenizer((r["prompt"] + "\n" + r["completion"] for r in rows["train"]), 1024)
    return tok


def tokenized(tokenizer, rows_by_split, max_length=512, policy="trim_prompt"):
    tok = tokenizer
    add_thesis_tokens(tok)
    data = DatasetDict({s: Dataset.from_list(r) for s, r in rows_by_split.items()})
    data = data.map(tokenize_batch, batched=True, remove_columns=["prompt", "completion"],
                    fn_kwargs={"tokenizer": tok, "max_length": max_length, "policy": policy})  # fmt: skip
    return data.remove_columns(list(STATS))


def save_base_and_data(tmp: Path, tokenizer, data, *, hidden=32, layers=1):
    base = tmp / "base"
    model = build_tiny_model(tokenizer, hidden_size=hidden, num_layers=layers, num_heads=4,
                             num_kv_heads=2, intermediate_size=hidden * 2, max_positions=512, seed=0)  # fmt: skip
    tokenizer.save_pretrained(base)
    model.save_pretrained(base)
    data.save_to_disk(str(tmp / "data"))
    tokenizer.save_pretrained(tmp / "data" / "tokenizer")
    return base


# --------------------------------------------------------------------- tokens


def test_thesis_tokens_are_single_special_tokens(tokenizer):
    assert THESIS_TOKENS == ("<reasoning>", "</reasoning>", "<support>", "</support>", "<action>",
                             "</action>", "<STRONG_BUY>", "<BUY>", "<HOLD>", "<SELL>", "<STRONG_SELL>")  # fmt: skip
    before = len(tokenizer)
    added = add_thesis_tokens(tokenizer)
    assert added in (0, 11) and add_thesis_tokens(tokenizer) == 0
    assert len(tokenizer) == before + added
    ids = tokenizer("<action><STRONG_SELL></action>", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<action>", "<STRONG_SELL>", "</action>"]
    assert set(THESIS_TOKENS) <= set(tokenizer.all_special_tokens)


def test_the_completion_mask_covers_exactly_the_assistant_turn(tokenizer, rows):
    add_thesis_tokens(tokenizer)
    row = rows["test"][0]
    ids, mask, outcome = fit(tokenizer, row["prompt"], row["completion"], 1024, "drop")
    assert outcome == "ok"
    completion = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    prompt = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert completion.startswith(row["completion"]) and completion.endswith("<|end|>\n<|eos|>")
    assert row["prompt"] in prompt and "<reasoning>" not in prompt


def test_over_length_drops_whole_sections_and_never_the_header_or_the_action(tokenizer, rows):
    add_thesis_tokens(tokenizer)
    row = rows["test"][0]
    ids, mask, _ = fit(tokenizer, row["prompt"], row["completion"], 10_000, "drop")
    limit = len(ids) - 40
    trimmed, tmask, outcome = fit(tokenizer, row["prompt"], row["completion"], limit, "trim_prompt")
    assert outcome == "trimmed" and len(trimmed) <= limit
    kept = tokenizer.decode([i for i, m in zip(trimmed, tmask, strict=True) if not m])
    assert PROMPT_HEADER in kept and f"Market snapshot for {row['ticker']} as of" in kept
    assert "52-week range:" not in kept and "Bar: " in kept  # least important first
    assert tokenizer.decode([i for i, m in zip(trimmed, tmask, strict=True) if m]).startswith(
        row["completion"]
    )
    assert fit(tokenizer, row["prompt"], row["completion"], limit, "drop") == ([], [], "dropped")
    tiny = sum(mask)  # the completion alone does not fit: dropped, whatever the policy
    assert fit(tokenizer, row["prompt"], row["completion"], tiny - 5, "trim_prompt")[2] == "dropped"


def test_tokenize_batch_measures_whole_examples_without_a_limit(tokenizer, rows):
    add_thesis_tokens(tokenizer)
    batch = {k: [r[k] for r in rows["test"][:3]] for k in ("prompt", "completion")}
    out = tokenize_batch(batch, tokenizer, None, "trim_prompt")
    assert out["outcome"] == ["ok"] * 3
    assert [len(i) for i in out["input_ids"]] == out["full_length"]
    assert [p + c for p, c in zip(out["prompt_tokens"], out["completion_tokens"], strict=True)] == (
        out["full_length"]
    )
    assert [sum(m) for m in out["completion_mask"]] == out["completion_tokens"]


def test_every_shipped_config_loads():
    for path in sorted((REPO / "configs").glob("sft_*.yaml")):
        cfg = load_train_config(path)
        assert cfg.output_dir and cfg.method in ("full", "lora", "qlora"), path
    assert (
        load_train_config(REPO / "configs/sft_config.yaml").sft_args["gradient_accumulation_steps"]
        == 16
    )
    # The demo measures its lengths; the GPU configs size their GPUs by an explicit length.
    assert load_train_config(REPO / "configs/sft_tiny_lora_cpu.yaml").max_length == "auto"
    for name in ("sft_config", "sft_config_multigpu", "sft_llama3_8b_qlora_1gpu"):
        assert isinstance(load_train_config(REPO / f"configs/{name}.yaml").max_length, int)


def test_every_shipped_gpu_config_builds_its_trl_arguments_and_packs_on_flash_only():
    from charlie.training.config import packs, varlen
    from charlie.training.sft import sft_arguments

    gpu = [
        p for p in sorted((REPO / "configs").glob("sft_*.yaml")) if p.stem != "sft_tiny_lora_cpu"
    ]
    assert {p.stem for p in gpu} == {
        "sft_config",
        "sft_config_multigpu",
        "sft_llama3_8b_qlora_1gpu",
    }
    for path in gpu:
        cfg = load_train_config(path)
        assert cfg.gpu_type != "CPU", path
        if packs(cfg):  # packing needs a varlen kernel: auto finds one, or a flash one is named
            assert cfg.attn_implementation == "auto" or varlen(cfg.attn_implementation), path
        kernel = "flash_attention_2" if packs(cfg) else cfg.attn_implementation
        # cuda=False: TrainingArguments refuses bf16 on this CPU; packing does not depend on it
        args = sft_arguments(cfg, cuda=False, smoke_test=False, report_to=["none"],
                             attn_implementation=kernel)  # fmt: skip
        assert args.packing == packs(cfg) and args.max_length == cfg.max_length, path
    llama = load_train_config(REPO / "configs/sft_llama3_8b_qlora_1gpu.yaml")
    assert packs(llama) and llama.sft_args["packing_strategy"] == "bfd"
    # the demo keeps its attention (transformers' default, sdpa) and its unpacked batches
    demo = load_train_config(REPO / "configs/sft_tiny_lora_cpu.yaml")
    assert demo.attn_implementation == "auto" and not packs(demo)


def test_max_length_is_a_flag_taking_a_number_or_auto(capsys):
    import argparse

    from charlie.config import CONFIG, add_flags

    parser = argparse.ArgumentParser()
    add_flags(parser, TrainConfig, CONFIG)
    path = REPO / "configs/sft_tiny_lora_cpu.yaml"
    assert load_train_config(path, parser.parse_args(["--max-length", "768"])).max_length == 768
    assert load_train_config(path, parser.parse_args(["--max-length", "auto"])).max_length == "auto"
    with pytest.raises(Exception, match=r"^--max-length: 'max_length' = 'long' is not allowed: use "
                       r"a whole number of tokens \(at least 16\) or auto\.$"):  # fmt: skip
        load_train_config(path, parser.parse_args(["--max-length", "long"]))
    assert "--max-length N|auto" in parser.format_help()


def test_extract_action():
    assert extract_action("<reasoning>x</reasoning><action><HOLD></action>") == "HOLD"
    assert extract_action("... so we rate it a Strong Buy.") == "STRONG_BUY"
    assert extract_action("no view") == UNPARSEABLE


# --------------------------------------------------------------- a LoRA run


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tokenizer, rows):
    from charlie.training.sft import train

    tmp = tmp_path_factory.mktemp("lora")
    small = {"train": rows["train"][:64], "validation": rows["validation"][:16]}
    base = save_base_and_data(tmp, tokenizer, tokenized(tokenizer, small))
    cfg = TrainConfig(base_model=str(base), dataset_dir=tmp / "data", output_dir=tmp / "run",
                      method="lora", max_length=512, gpu_type="CPU", merge=True,
                      per_device_train_batch_size=8, learning_rate=1e-3, max_steps=4,
                      save_steps=2, eval_strategy="steps", eval_steps=4, logging_steps=1,
                      report_to=["tensorboard"], disable_tqdm=True, seed=0)  # fmt: skip
    metrics = train(cfg, config_path=REPO / "configs/sft_tiny_lora_cpu.yaml")
    return cfg, metrics


def test_lora_run_saves_adapter_tokenizer_logs_and_manifest(lora_run):
    cfg, metrics = lora_run
    out = cfg.output_dir
    assert metrics["global_step"] == 4 and metrics["eval_loss"] > 0
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and set(adapter["modules_to_save"]) == {"embed_tokens", "lm_head"}
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()
    assert list((out / "runs").rglob("events.out.tfevents.*"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["git"]["commit"]) == 40 and isinstance(manifest["git"]["dirty"], bool)
    assert len(manifest["config_sha256"]) == 64 and manifest["config"]["method"] == "lora"
    assert all(len(h) == 64 for h in manifest["data_files"].values()) and manifest["data_files"]
    assert (
        manifest["packages"]["torch"].startswith("2.13.0")
        and manifest["packages"]["trl"] == "1.16.0"
    )
    assert manifest["hardware"]["cpu_count"] >= 1 and manifest["seed"] == 0
    assert (
        manifest["final_metrics"]["global_step"] == 4
        and manifest["started"] <= manifest["finished"]
    )
    history = manifest["log_history"]
    assert [h["step"] for h in history if "eval_loss" in h] == [4]  # evaluated once, not again
    assert metrics["eval_loss"] == next(h["eval_loss"] for h in history if "eval_loss" in h)
    logged = [h for h in history if "loss" in h]
    assert len(logged) == 4 and all(0 <= h["mean_token_accuracy"] <= 1 for h in logged)
    assert all(h["entropy"] > 0 for h in logged)  # TRL's metrics, from the model's own logits
    curve = (out / "loss.csv").read_text().splitlines()  # each series has its own steps only
    assert curve[0] == "step,loss" and [line.split(",")[0] for line in curve[1:]] == [
        "1",
        "2",
        "3",
        "4",
    ]
    assert all(line.split(",")[1] for line in curve[1:])
    evals = (out / "eval_loss.csv").read_text().splitlines()
    assert evals == ["step,eval_loss", f"4,{metrics['eval_loss']}"]  # the evaluation at step 4
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_merged_model_loads_with_plain_automodel_and_matches_the_adapter(lora_run, tokenizer):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, _ = lora_run
    merged = AutoModelForCausalLM.from_pretrained(cfg.output_dir / "merged")
    assert merged.get_input_embeddings().weight.shape[0] == len(tokenizer)
    base = AutoModelForCausalLM.from_pretrained(cfg.base_model)
    base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    adapted = PeftModel.from_pretrained(base, str(cfg.output_dir))
    ids = torch.tensor([tokenizer("<action><BUY></action> close above SMA20")["input_ids"]])
    with torch.inference_mode():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-4)


def test_the_prompt_is_masked_out_of_the_loss(tmp_path, tokenizer, rows):
    """Decode the labels of one training batch: only the completion is left."""
    from trl import SFTTrainer

    from charlie.training.sft import sft_arguments

    small = {"train": rows["train"][:4], "validation": rows["validation"][:2]}
    base = save_base_and_data(tmp_path, tokenizer, tokenized(tokenizer, small))
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM

    data = load_from_disk(str(tmp_path / "data"))
    cfg = TrainConfig(base_model=str(base), dataset_dir=tmp_path / "data", output_dir=tmp_path / "run",
                      gpu_type="CPU", per_device_train_batch_size=2, max_steps=1, disable_tqdm=True)  # fmt: skip
    keep = ["input_ids", "completion_mask"]
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base),
        args=sft_arguments(cfg, cuda=False, smoke_test=False, report_to=["none"]),
        train_dataset=data["train"].select_columns(keep),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    for row_ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        kept = [int(t) for t, lab in zip(row_ids, labels, strict=True) if lab != -100]
        text = tokenizer.decode(kept)
        assert text.startswith("<reasoning>") and "<action>" in text
        assert "Market snapshot" not in text
    masked = (batch["labels"] == -100).sum().item()
    assert masked > batch["input_ids"].shape[0] * 100  # every prompt token (and the padding)


def test_the_models_own_loss_is_trls_fused_loss_and_keeps_its_metrics(tmp_path, tokenizer, rows):
    """fused_lm_head: false computes the same completion-only loss, gradient and metrics."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer as TRLSFTTrainer

    from charlie.training.sft import sft_arguments
    from charlie.training.trainer import SFTTrainer, use_fused_lm_head

    assert use_fused_lm_head("auto", cuda=True) and not use_fused_lm_head("auto", cuda=False)
    assert use_fused_lm_head(True, cuda=False) and not use_fused_lm_head(False, cuda=True)
    assert use_fused_lm_head("auto", cuda=False, quantized=True)  # QLoRA's bf16 head
    small = {"train": rows["train"][:4], "validation": rows["validation"][:2]}
    base = save_base_and_data(tmp_path, tokenizer, tokenized(tokenizer, small))
    from datasets import load_from_disk

    data = load_from_disk(str(tmp_path / "data"))["train"].select_columns(
        ["input_ids", "completion_mask"]
    )
    cfg = TrainConfig(base_model=str(base), dataset_dir=tmp_path / "data", output_dir=tmp_path / "run",
                      gpu_type="CPU", per_device_train_batch_size=4, max_steps=1, logging_steps=1,
                      disable_tqdm=True)  # fmt: skip
    results = {}
    for name, make in {"fused": lambda **kw: TRLSFTTrainer(**kw),
                       "model": lambda **kw: SFTTrainer(fused_lm_head=False, **kw)}.items():  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(base)
        trainer = make(model=model, processing_class=tokenizer, train_dataset=data,
                       args=sft_arguments(cfg, cuda=False, smoke_test=False, report_to=["none"]))  # fmt: skip
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        model.train()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        grad = model.get_input_embeddings().weight.grad.clone()
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        if name == "model":  # its metrics wait for the log line they belong to
            trainer.log({})
            metrics = trainer.state.log_history[-1]
        results[name] = loss.item(), grad, metrics
    (fused, fused_grad, fused_metrics), (own, own_grad, own_metrics) = results.values()
    assert own == pytest.approx(fused, rel=1e-5)
    assert torch.allclose(own_grad, fused_grad, atol=1e-6)
    for key in ("mean_token_accuracy", "entropy", "num_tokens"):
        assert own_metrics[key] == pytest.approx(fused_metrics[key], rel=1e-4), key


# ---------------------------------------------------------------- attention and packing


def _cfg(tmp_path, **keys):
    return TrainConfig(base_model=str(tmp_path / "no-such-model"), output_dir=tmp_path / "run",
                       max_length=64, gpu_type="CPU", **keys)  # fmt: skip


def test_auto_takes_flash_attention_only_on_cuda_in_16_bit_where_it_is_installed(tmp_path):
    from charlie.training.config import choose_attention

    packed = _cfg(tmp_path, packing=True)
    both = {"flash_attention_2", "flash_attention_3"}
    chosen = choose_attention(packed, cuda=True, half=True, installed=both)
    assert (chosen.implementation, chosen.packing) == ("flash_attention_3", True)  # Hopper's
    assert chosen.reason == "auto: flash-attn-3 is installed, on CUDA, in 16-bit"
    two = choose_attention(packed, cuda=True, half=True, installed={"flash_attention_2"})
    assert two.implementation == "flash_attention_2" and two.packing
    for cuda, half, installed, why in (
        (False, False, both, "no CUDA device"),
        (True, False, both, "the model loads in float32 (no bf16 on this GPU)"),
        (True, True, {"kernels"}, "neither flash-attn nor flash-attn-3 is installed"),
    ):
        fallback = choose_attention(packed, cuda=cuda, half=half, installed=installed)
        assert (fallback.implementation, fallback.packing) == (None, False)  # packing off
        assert fallback.reason == f"auto: {why}, so transformers' default"


def test_a_named_kernel_that_cannot_run_is_one_sentence_saying_when_packing_needs_it(tmp_path):
    from charlie.training.config import choose_attention

    def refusal(cfg, **machine):
        with pytest.raises(CharlieError) as error:
            choose_attention(cfg, **{"cuda": True, "half": True, "installed": set(), **machine})
        return str(error.value)

    flash = _cfg(tmp_path, attn_implementation="flash_attention_2")
    assert refusal(flash) == (
        "attn_implementation flash_attention_2 needs the flash-attn package, which is not "
        "installed: install what it needs or set attn_implementation: auto (transformers' "
        "default, sdpa, unpacked, where no flash kernel runs)."
    )
    packed = _cfg(tmp_path, attn_implementation="flash_attention_3", packing=True)
    assert refusal(packed).startswith(
        "attn_implementation flash_attention_3 needs the flash-attn-3 package, which is not "
        "installed, and packing (padding-free batches) needs a flash kernel: "
    )
    assert "needs a CUDA device, and this machine has none" in refusal(flash, cuda=False)
    assert "needs bf16 or fp16, and this run loads the model in float32" in refusal(
        flash, half=False
    )
    hub = _cfg(tmp_path, attn_implementation="kernels-community/flash-attn2", padding_free=True)
    assert "needs the kernels package, which is not installed, and packing" in refusal(hub)
    assert choose_attention(hub, cuda=True, half=True, installed={"kernels"}).packing
    # sdpa or eager named with packing, and wrapped packing on any kernel, are refused
    sdpa = _cfg(tmp_path, attn_implementation="sdpa", packing=True)
    assert refusal(sdpa).startswith(
        "packing (padding-free batches) needs a flash-attention kernel, and sdpa is none: it "
        "would build a dense block mask over each packed row or attend across examples; "
    )
    wrapped = _cfg(tmp_path, packing=True, packing_strategy="wrapped")
    assert refusal(wrapped, installed={"flash_attention_2"}).startswith(
        "packing_strategy wrapped cuts examples at max_length"
    )
    eager = choose_attention(_cfg(tmp_path, attn_implementation="eager"), cuda=False, half=False,
                             installed=set())  # fmt: skip
    assert (eager.implementation, eager.packing) == ("eager", False)


def test_attn_implementation_values_are_checked_on_load(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text("base_model: m\noutput_dir: o\nattn_implementation: flash2\n")
    with pytest.raises(CharlieError, match=r"'attn_implementation' = 'flash2' is not allowed: use "
                       r"auto, sdpa, eager, flash_attention_2, flash_attention_3 or a hub kernel "
                       r"id \(org/name\)\.$"):  # fmt: skip
        load_train_config(config)
    config.write_text("base_model: m\noutput_dir: o\nattn_implementation: acme/flash@v2:fwd\n")
    assert load_train_config(config).attn_implementation == "acme/flash@v2:fwd"


def test_packing_trains_on_flash_only_and_auto_turns_it_off_saying_so(tmp_path, caplog):
    from charlie.training.sft import sft_arguments

    packed = _cfg(tmp_path, packing=True, per_device_train_batch_size=1)
    on = sft_arguments(packed, cuda=False, smoke_test=False, report_to=["none"],
                       attn_implementation="flash_attention_2")  # fmt: skip
    assert on.packing and on.max_length == 64
    with caplog.at_level("WARNING", logger="charlie.train"):
        off = sft_arguments(packed, cuda=False, smoke_test=False, report_to=["none"],
                            attn_implementation="sdpa")  # fmt: skip
    assert not off.packing and not off.padding_free and off.eval_packing is False
    assert (
        "packing is off: padding-free rows need a flash-attention kernel and the model attends "
        "with sdpa, so each micro-batch is 1 example(s) padded to the longest, not packed rows "
        "of 64 tokens"
    ) in caplog.text
    named = _cfg(tmp_path, packing=True, attn_implementation="eager")
    with pytest.raises(CharlieError, match=r"and eager is none"):
        sft_arguments(named, cuda=False, smoke_test=False, report_to=["none"],
                      attn_implementation="eager")  # fmt: skip
    # padding-free without packing: Charlie enforces max_length itself, TRL refuses one
    rows = sft_arguments(_cfg(tmp_path, padding_free=True), cuda=False, smoke_test=False,
                         report_to=["none"], attn_implementation="flash_attention_2")  # fmt: skip
    assert rows.padding_free and not rows.packing and rows.max_length is None


def test_packed_rows_count_as_trls_best_fit_decreasing_packs_them():
    import random

    from datasets import Dataset
    from trl.data_utils import pack_dataset

    from charlie.training.sft import packed_rows

    # 6 opens a row (4 left), 5 another (5 left), 4 fills the first, 3 and 2 the second
    assert packed_rows([3, 6, 2, 5, 4], 10) == 2
    assert packed_rows([10, 10, 1], 10) == 3 and packed_rows([], 10) == 0
    rng = random.Random(0)
    lengths = [rng.randint(20, 300) for _ in range(500)]
    data = Dataset.from_dict({"input_ids": [[1] * n for n in lengths]})
    for length in (300, 1024):
        assert packed_rows(lengths, length) == len(pack_dataset(data, length, "bfd"))


def test_the_cost_counts_packed_rows_and_no_padding(tmp_path):
    from charlie.training.sft import estimate_cost

    lengths = [3, 6, 2, 5, 4]
    common = {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 2,
              "num_train_epochs": 1}  # fmt: skip
    packed = estimate_cost(_cfg(tmp_path, packing=True, **common), lengths, max_length=10,
                           vocab_size=100, smoke_test=False, packed=True)  # fmt: skip
    assert (packed["steps"], packed["padded_tokens_per_epoch"]) == (1, 20)  # 2 rows, 2 a step
    assert "x 1 process packed rows: 5 examples in 2 rows of up to 10 tokens)" in packed["line"]
    assert "~20 tokens/epoch (padding-free)" in packed["line"]
    # the same config where packing was turned off (no flash kernel): 5 examples, 3 steps
    unpacked = estimate_cost(_cfg(tmp_path, packing=True, **common), lengths, max_length=10,
                             vocab_size=100, smoke_test=False)  # fmt: skip
    assert unpacked["steps"] == 3 and "packed rows" not in unpacked["line"]


def test_auto_loads_with_transformers_default_where_the_model_refuses_flash(
    tmp_path, tokenizer, rows, monkeypatch, caplog
):
    """transformers refuses flash attention for an architecture without it (DeepSeek-V3.2) as it
    builds the model, before the weights: auto then loads the default, a named kernel is one
    sentence."""
    from transformers import AutoModelForCausalLM

    from charlie.training.config import Attention
    from charlie.training.sft import load_training_model

    small = {"train": rows["train"][:2], "validation": rows["validation"][:2]}
    base = save_base_and_data(tmp_path, tokenizer, tokenized(tokenizer, small))
    real = AutoModelForCausalLM.from_pretrained

    def refusing(*args, attn_implementation=None, **kwargs):
        if attn_implementation and "flash" in attn_implementation:
            raise ValueError(  # transformers' words
                "LlamaForCausalLM does not support Flash Attention 2 yet. Please request to add "
                "support where the model is hosted, on its model hub page: https://hf.co/x"
            )
        return real(*args, attn_implementation=attn_implementation, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refusing)
    flash = Attention(
        "flash_attention_2", "auto: flash-attn is installed, on CUDA, in 16-bit", True
    )
    cfg = TrainConfig(base_model=str(base), output_dir=tmp_path / "run", gpu_type="CPU")
    with caplog.at_level("WARNING", logger="charlie.train"):
        model = load_training_model(cfg, flash, dtype=None, quantization=None)
    assert model.config._attn_implementation == "sdpa"  # the demo's, as before
    assert "refuses flash_attention_2 (LlamaForCausalLM does not support Flash Attention 2" in (
        caplog.text
    )
    named = cfg.model_copy(update={"attn_implementation": "flash_attention_2"})
    with pytest.raises(CharlieError, match=r"cannot attend with attn_implementation "
                       r"flash_attention_2: LlamaForCausalLM does not support Flash Attention 2 "
                       r"yet; set attn_implementation: auto or sdpa\.$"):  # fmt: skip
        load_training_model(named, flash, dtype=None, quantization=None)


# ---------------------------------------------------------------- learning


@pytest.mark.slow
def test_the_tiny_model_learns_the_samples_action_rule(tmp_path, rows):
    """Greedy-decoded actions on held-out rows beat the majority class by a wide margin.

    Completions are shortened to the action so that the test trains in about a minute of
    CPU; the prompt is the full market snapshot the pipeline builds.
    """
    from transformers import AutoModelForCausalLM

    from charlie.training.sft import train

    short = {
        split: [
            {**r, "completion": re.search(r"<action><\w+></action>", r["completion"]).group(0)}
            for r in rows[split]
        ]
        for split in ("train", "validation", "test")
    }
    tok = train_tokenizer((r["prompt"] for r in short["train"]), 1024)
    data = tokenized(tok, {"train": short["train"], "validation": short["validation"][:32]})
    base = save_base_and_data(tmp_path, tok, data, hidden=64, layers=2)
    cfg = TrainConfig(base_model=str(base), dataset_dir=tmp_path / "data", output_dir=tmp_path / "run",
                      method="full", max_length=512, gpu_type="CPU", per_device_train_batch_size=32,
                      learning_rate=5e-3, num_train_epochs=4, lr_scheduler_type="cosine",
                      warmup_steps=5, eval_strategy="no", save_strategy="no", report_to=["none"],
                      disable_tqdm=True, seed=0)  # fmt: skip
    train(cfg)
    model = AutoModelForCausalLM.from_pretrained(cfg.output_dir)
    test = short["test"]
    completions = greedy_complete(
        model, tok, [r["prompt"] for r in test], batch_size=64, max_new_tokens=4
    )
    predicted = [extract_action(c) for c in completions]
    truth = [r["action"] for r in test]
    accuracy = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    majority = Counter(r["action"] for r in short["train"]).most_common(1)[0][0]
    majority_rate = sum(t == majority for t in truth) / len(truth)
    assert majority_rate < 0.3
    # Seen here: 0.38 to 0.62 against 0.20, depending on the run's settings; the rule's own
    # agreement with the (noisy) labels caps it near 0.89.
    assert accuracy > max(majority_rate + 0.12, 1.6 * majority_rate), (
        accuracy,
        majority_rate,
        Counter(predicted),
    )
    assert predicted.count(UNPARSEABLE) < len(predicted) * 0.05


def test_train_refuses_up_front_when_the_plan_cannot_fit(monkeypatch, capsys):
    from charlie.cli import main

    monkeypatch.chdir(REPO)
    assert main(["train", "--config", "configs/sft_config.yaml"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("charlie train: error: DeepSeek-V3.2-Exp with qlora needs about ")
    assert "GiB per GPU" in err and "one H100-80GB has 72 GiB usable: it does not fit" in err


def test_smoke_test_runs_ten_steps_and_the_hardware_decides_precision(tmp_path):
    from charlie.training.sft import sft_arguments

    cfg = load_train_config(REPO / "configs/sft_config.yaml")
    args = sft_arguments(cfg, cuda=False, smoke_test=True, report_to=["none"])
    assert (args.max_steps, args.save_steps, args.eval_steps) == (10, 10, 10)
    assert args.use_cpu and not args.bf16  # bf16 is asked for, but this CPU run gets fp32
    assert args.completion_only_loss and args.max_length == 65536
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {
        "use_reentrant": False
    }
    assert args.gradient_checkpointing  # transformers mirrors the old name for TRL and PEFT
    assert args.gradient_accumulation_steps == 16 and args.learning_rate == 1.5e-4


def test_a_mistyped_or_clashing_trl_key_is_one_sentence_before_any_weights_load(tmp_path, capsys):
    """A typo names the closest key; a key Charlie sets says why; neither loads the model (the
    base model here does not exist, so getting as far as loading would say that instead)."""
    from charlie.training.sft import sft_arguments

    cfg = load_train_config(REPO / "configs/sft_config.yaml")
    bad = TrainConfig(**{**cfg.model_dump(), **cfg.sft_args, "learning_rat": 1e-4})
    with pytest.raises(CharlieError, match=r"unknown key in the training config: 'learning_rat' "
                       r"\(did you mean 'learning_rate'\?\)"):  # fmt: skip
        sft_arguments(bad, cuda=False, smoke_test=False, report_to=["none"])
    for key, line in (("learning_rat: 1.0e-4", "did you mean 'learning_rate'?"),
                      ("completion_only_loss: false", "which Charlie sets itself (the loss "
                       "covers the completion only")):  # fmt: skip
        config = tmp_path / "bad.yaml"
        config.write_text(f"base_model: {tmp_path / 'no-such-model'}\noutput_dir: {tmp_path / 'o'}\n"
                          f"gpu_type: CPU\n{key}\n")  # fmt: skip
        assert cli.main(["train", "--config", str(config)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and line in err[0] and "no-such-model" not in err[0], err


def test_wandb_only_when_asked(monkeypatch):
    from charlie.training.sft import _report_to

    cfg = load_train_config(REPO / "configs/sft_config.yaml")
    monkeypatch.delenv("USE_WANDB", raising=False)
    assert _report_to(cfg) == ["tensorboard"]
    monkeypatch.setenv("USE_WANDB", "true")
    assert _report_to(cfg) == ["tensorboard", "wandb"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_the_train_command_runs_under_the_distributed_launchers(
    launcher, tmp_path, tokenizer, rows
):
    """`torchrun ... -m charlie.cli train` and `accelerate launch`, one CPU process each."""
    import socket
    import subprocess
    import sys

    small = {"train": rows["train"][:32], "validation": rows["validation"][:8]}
    base = save_base_and_data(tmp_path, tokenizer, tokenized(tokenizer, small))
    config = tmp_path / "run.yaml"
    config.write_text(
        f"base_model: {base}\ndataset_dir: {tmp_path / 'data'}\noutput_dir: {tmp_path / 'run'}\n"
        "method: lora\nmax_length: 512\ngpu_type: CPU\nper_device_train_batch_size: 4\n"
        "max_steps: 2\nsave_steps: 2\nreport_to: [none]\ndisable_tqdm: true\n"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bin_dir = Path(sys.executable).parent
    prefix = (
        [str(bin_dir / "torchrun"), "--nproc_per_node=1", f"--master_port={port}"]
        if launcher == "torchrun"
        else [
            str(bin_dir / "accelerate"),
            "launch",
            "--cpu",
            "--num_processes=1",
            f"--main_process_port={port}",
        ]
    )
    # params.yaml's train paths replace the config's: the flags set them for this run.
    cmd = [*prefix, "-m", "charlie.cli", "train", "--config", str(config),
           "--dataset-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run")]  # fmt: skip
    env = {
        **__import__("os").environ,
        "CHARLIE_LOG_DIR": str(tmp_path / "logs"),
        "MASTER_ADDR": "127.0.0.1",
    }
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["final_metrics"]["global_step"] == 2
    assert manifest["hardware"]["world_size"] == 1
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
