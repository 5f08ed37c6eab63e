"""The training paths of ``charlie.training.sft.train`` on the CPU, each with its own tiny model.

Resume (automatic, forced, refused), QLoRA with bitsandbytes 4-bit layers (and DESIGN.md's
AVX512-BF16 gradient trap), and DeepSpeed ZeRO in a single process under launcher variables.
"""

from __future__ import annotations

import json
import math
import random
import socket
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

from charlie import ACTIONS
from charlie.errors import CharlieError
from charlie.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TICKERS = ("AAPL", "MSFT", "NVDA", "AMZN", "XOM", "JPM", "KO", "PFE")


def _examples(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ticker, action = rng.choice(TICKERS), rng.choice(ACTIONS)
        close, rsi = rng.uniform(10, 500), rng.uniform(5, 95)
        prompt = f"{ticker} close {close:.2f} rsi {rsi:.0f} trend {rng.choice(['up', 'down'])}"
        completion = (
            f"<reasoning>{ticker} looks {action.lower()}</reasoning>"
            f"<support>rsi {rsi:.0f}</support><action><{action}></action>"
        )
        rows.append({"prompt": prompt, "completion": completion})
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base model dir and a tokenized dataset dir, as `init-model` and `tokenize` write."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    from charlie.training.tokenize import STATS, tokenize_batch
    from charlie.training.tokens import add_thesis_tokens, build_tiny_model, train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    corpus = _examples(200, seed=1)
    tok = train_tokenizer((f"{r['prompt']}\n{r['completion']}" for r in corpus), vocab_size=400)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                             intermediate_size=64, max_positions=256, seed=0)  # fmt: skip
    base = root / "base"
    tok.save_pretrained(base)
    model.save_pretrained(base)

    tokenizer = AutoTokenizer.from_pretrained(base)
    assert add_thesis_tokens(tokenizer) == 11
    raw = DatasetDict(
        train=Dataset.from_list(corpus[:32]), validation=Dataset.from_list(corpus[32:40])
    )
    tokenized = raw.map(
        tokenize_batch,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "max_length": 128, "policy": "trim_prompt"},
        remove_columns=["prompt", "completion"],
    ).remove_columns(list(STATS))
    data = root / "tokenized"
    tokenized.save_to_disk(str(data))
    tokenizer.save_pretrained(data / "tokenizer")
    return {"base": base, "data": data}


def _config(tiny: dict[str, Path], out: Path, **overrides) -> TrainConfig:
    keys = {
        "base_model": str(tiny["base"]),
        "dataset_dir": tiny["data"],
        "output_dir": out,
        "method": "lora",
        "max_length": 128,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "gpu_type": "CPU",
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 2,
        "eval_strategy": "no",
        "report_to": ["none"],
        "disable_tqdm": True,
        "seed": 0,
        "dataloader_num_workers": 0,
    }
    keys.update(overrides)
    return TrainConfig(**keys)


@pytest.fixture
def trainers(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Every SFTTrainer that ``train()`` builds, with ``callbacks`` attached to each."""
    from charlie.training import trainer

    seen: dict[str, list] = {"made": [], "callbacks": []}

    class RecordingSFTTrainer(trainer.SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["made"].append(self)
            for callback in seen["callbacks"]:
                self.add_callback(callback)

    monkeypatch.setattr(trainer, "SFTTrainer", RecordingSFTTrainer)  # train() imports it late
    return seen


def _losses(history: list[dict]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in history if "loss" in e}


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------- resume


def test_resume_continues_from_the_latest_checkpoint(tiny, tmp_path, caplog):
    import logging

    import torch

    from charlie.training.sft import train

    out = tmp_path / "run"
    first = train(_config(tiny, out, max_steps=4))
    assert first["global_step"] == 4
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    first_losses = _losses(_manifest(out)["log_history"])
    assert sorted(first_losses) == [1, 2, 3, 4]
    ckpt4_optim = torch.load(out / "checkpoint-4" / "optimizer.pt", weights_only=False)

    caplog.set_level(logging.INFO, logger="charlie.train")
    second = train(_config(tiny, out, max_steps=6))  # resume=None: automatic
    assert f"resuming from {out / 'checkpoint-4'}" in caplog.messages
    assert second["global_step"] == 6
    history = _manifest(out)["log_history"]
    losses = _losses(history)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    # The first run's entries came back, unchanged, with checkpoint-4's trainer state.
    assert {step: losses[step] for step in (1, 2, 3, 4)} == first_losses
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6

    # AdamW's per-parameter step count carried on from checkpoint-4 (4 + 2), not restarted (2).
    steps4 = {float(s["step"]) for s in ckpt4_optim["state"].values()}
    final = torch.load(out / "checkpoint-6" / "optimizer.pt", weights_only=False)
    steps6 = {float(s["step"]) for s in final["state"].values()}
    assert steps4 == {4.0}
    assert steps6 == {6.0}


def test_a_half_written_checkpoint_never_blocks_a_retry(tiny, tmp_path, caplog):
    """kill -9 while saving: an empty newest folder and a cut-short adapter are skipped (and
    removed), the newest complete checkpoint resumed, and train_loss covers the whole run."""
    import logging

    from charlie.training.sft import train

    out = tmp_path / "run"
    train(_config(tiny, out, max_steps=4, save_total_limit=None))
    (out / "checkpoint-6").mkdir()  # killed right after creating it
    weights = out / "checkpoint-4" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # killed while writing the weights
    caplog.set_level(logging.INFO, logger="charlie.train")
    metrics = train(_config(tiny, out, max_steps=6, save_total_limit=None))
    assert f"resuming from {out / 'checkpoint-2'}" in caplog.messages
    warned = " ".join(m for m in caplog.messages if "half-written" in m)
    assert "checkpoint-6" in warned and "no trainer_state.json" in warned
    assert "checkpoint-4" in warned and "adapter_model.safetensors is cut short" in warned
    assert metrics["global_step"] == 6
    losses = _losses(_manifest(out)["log_history"])
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert metrics["train_loss"] == pytest.approx(sum(losses.values()) / 6, rel=1e-3)


def test_resume_true_without_a_checkpoint_is_refused(tiny, tmp_path):
    from charlie.training.sft import train

    out = tmp_path / "empty"
    out.mkdir()
    with pytest.raises(CharlieError, match="no checkpoint"):
        train(_config(tiny, out, max_steps=2), resume=True)
    with pytest.raises(CharlieError, match="no checkpoint"):
        train(_config(tiny, tmp_path / "missing", max_steps=2), resume=True)


def test_resume_false_starts_over(tiny, tmp_path):
    from charlie.training.sft import train

    out = tmp_path / "run"
    train(_config(tiny, out, max_steps=4))
    first = _losses(_manifest(out)["log_history"])
    # Resuming from checkpoint-4 with max_steps=2 would train nothing and report step 4.
    again = train(_config(tiny, out, max_steps=2), resume=False)
    assert again["global_step"] == 2
    history = _losses(_manifest(out)["log_history"])
    assert sorted(history) == [1, 2]  # a fresh state, not the first run's history
    assert history[1] == pytest.approx(first[1])  # same seed, same start, same first loss


def test_the_same_seed_gives_the_same_losses_and_adapter_and_another_seed_does_not(tiny, tmp_path):
    """The resized rows of the new tokens are drawn after seeding: two runs are bit-identical."""
    import torch
    from safetensors.torch import load_file

    from charlie.training.sft import train

    shipped = yaml.safe_load((REPO / "configs" / "sft_tiny_lora_cpu.yaml").read_text())
    assert shipped["num_threads"] and shipped["full_determinism"]  # the demo's own settings

    def run(name: str, seed: int) -> tuple[dict, dict, dict]:
        out = tmp_path / name
        keys = {**shipped, "base_model": str(tiny["base"]), "dataset_dir": tiny["data"],
                "output_dir": out, "max_length": 128, "per_device_train_batch_size": 4,
                "logging_steps": 1, "report_to": ["none"], "merge": False, "seed": seed}  # fmt: skip
        train(TrainConfig(**keys), smoke_test=True)  # the demo's config, for 10 steps
        manifest = _manifest(out)
        return (
            _losses(manifest["log_history"]),
            load_file(out / "adapter_model.safetensors"),
            manifest,
        )

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)  # fmt: skip
    losses, weights, manifest = run("a", 0)
    # In-process callers keep their settings (left on, deterministic mode slowed later tests 2x).
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.utils.deterministic.fill_uninitialized_memory) == before  # fmt: skip
    again, weights_again, _ = run("b", 0)
    assert again == losses and len(losses) == 10  # every logged step, exactly
    assert weights.keys() == weights_again.keys()
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)
    assert any("embed_tokens" in k for k in weights)  # the new tokens' rows are trained too
    assert manifest["determinism"] == {
        "seed": 0, "data_seed": None, "full_determinism": True,
        "deterministic_algorithms": True, "fill_uninitialized_memory": False,
        "cudnn_deterministic": True, "num_threads": 2, "num_threads_setting": 2,
    }  # fmt: skip
    other, _, _ = run("c", 1)
    assert other != losses  # the seed, not luck, makes them equal


def test_new_tokens_only_trains_the_added_rows_and_merges(tiny, tmp_path):
    """trainable_embeddings: new_tokens: the adapter carries embed_tokens' 11 new rows only."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from charlie.training.sft import train

    out = tmp_path / "rows"
    cfg = _config(tiny, out, max_steps=3, save_strategy="no", trainable_embeddings="new_tokens",
                  merge=True)  # fmt: skip
    train(cfg)
    adapter = load_file(out / "adapter_model.safetensors")
    # PEFT also saves the resized table (the frozen base of the new rows); what trained is the
    # delta of the 11 added rows.
    deltas = [v for k, v in adapter.items() if "embed_tokens" in k and "delta" in k]
    assert len(deltas) == 1 and deltas[0].shape[0] == 11, sorted(adapter)
    assert not any("embed_tokens.modules_to_save" in k for k in adapter)
    assert any("lm_head" in k for k in adapter)  # whole (TRL's fused head reads its weight)
    base = AutoModelForCausalLM.from_pretrained(tiny["base"]).get_input_embeddings().weight
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").get_input_embeddings().weight
    assert merged.shape[0] == base.shape[0] + 11
    assert (merged[: base.shape[0]] == base).all()  # the pretrained rows are untouched
    assert merged[base.shape[0] :].abs().sum() > 0


# ----------------------------------------------------------------------------------------- QLoRA

PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _lora_b(model) -> dict[str, object]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


class LoraWatcher:
    """Snapshots of the LoRA B weights after each optimizer step and each evaluation."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        watcher = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                import bitsandbytes as bnb

                watcher.linear4bit = {
                    name: module
                    for name, module in model.named_modules()
                    if isinstance(module, bnb.nn.Linear4bit)
                }

            def on_step_end(self, args, state, control, model=None, **kwargs):
                watcher.after_step[state.global_step] = _lora_b(model)

            def on_evaluate(self, args, state, control, model=None, **kwargs):
                watcher.after_eval.setdefault(state.global_step, _lora_b(model))

        self.callback = Callback()
        self.linear4bit: dict[str, object] = {}
        self.after_step: dict[int, dict] = {}
        self.after_eval: dict[int, dict] = {}

    def changed_after_eval(self, step: int) -> bool:
        """Whether every LoRA B weight moved in the step that followed the eval at ``step``."""
        import torch

        before, after = self.after_eval[step], self.after_step[step + 1]
        return all(not torch.equal(before[n], after[n]) for n in before)


def _qlora_config(tiny, out: Path) -> TrainConfig:
    return _config(tiny, out, method="qlora", max_steps=3, eval_strategy="steps", eval_steps=1,
                   save_steps=3)  # fmt: skip


def test_qlora_trains_4bit_layers_on_the_cpu(tiny, tmp_path, trainers):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from charlie.training.sft import train

    watcher = LoraWatcher()
    trainers["callbacks"].append(watcher.callback)
    out = tmp_path / "qlora"
    metrics = train(_qlora_config(tiny, out))

    assert metrics["global_step"] == 3
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["eval_loss"])
    losses = _losses(_manifest(out)["log_history"])
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(v) for v in losses.values())

    # The frozen base was 4-bit while it trained: every projection of the layer, packed NF4.
    assert {name.split(".")[-2] for name in watcher.linear4bit} == PROJECTIONS
    for module in watcher.linear4bit.values():
        assert isinstance(module.weight, bnb.nn.Params4bit)
        assert module.weight.quant_type == "nf4" and module.weight.dtype == torch.uint8
        assert module.support_avx512bf16_for_cpu is False  # sft._cpu_4bit_gradient_fix

    # Gradients reached the adapter after every eval-mode forward (B starts at zero in PEFT).
    assert sorted(watcher.after_eval) == [1, 2, 3]
    assert watcher.changed_after_eval(1) and watcher.changed_after_eval(2)

    # The saved adapter holds trained LoRA weights and the resized embeddings / output layer.
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["peft_type"] == "LORA"
    assert sorted(adapter["modules_to_save"]) == ["embed_tokens", "lm_head"]
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert {k.split(".")[-3] for k in lora_b} == PROJECTIONS
    assert all(v.abs().sum() > 0 for v in lora_b.values())
    embed = next(v for k, v in weights.items() if "embed_tokens" in k)
    assert embed.shape[0] == len(AutoTokenizer.from_pretrained(tiny["data"] / "tokenizer"))


def test_qlora_eval_trap_bites_without_the_fix(tiny, tmp_path, trainers, monkeypatch):
    """The control: with bnb's AVX512-BF16 path left on, the run breaks or the adapter freezes."""
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import has_avx512bf16

    from charlie.training import sft

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never takes the faulty path")
    monkeypatch.setattr(sft, "_cpu_4bit_gradient_fix", lambda model: None)
    watcher = LoraWatcher()
    trainers["callbacks"].append(watcher.callback)
    try:
        sft.train(_qlora_config(tiny, tmp_path / "qlora"))
    except RuntimeError:  # layers narrower than a 4-bit block fail in the repacked eval kernel
        assert sorted(watcher.after_eval) == []  # it failed in the first eval-mode forward
        return
    assert not watcher.changed_after_eval(1)  # wider layers: the gradients are silently lost


# ------------------------------------------------------------------------------------- DeepSpeed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_multigpu_config_asks_for_zero3(monkeypatch):
    from charlie.training.config import load_train_config

    monkeypatch.chdir(REPO)  # the config names its DeepSpeed file relative to the repository
    cfg = load_train_config("configs/sft_config_multigpu.yaml")
    assert cfg.sft_args["deepspeed"] == "configs/deepspeed/zero3.json"
    assert cfg.zero_stage() == 3
    assert cfg.method == "lora" and cfg.num_gpus > 1


@pytest.fixture
def single_process_launch(monkeypatch: pytest.MonkeyPatch):
    """What `deepspeed --num_gpus 1` / `torchrun --nproc_per_node 1` set, and a clean exit."""
    pytest.importorskip("deepspeed")
    import importlib

    import deepspeed.comm
    import torch.distributed as dist
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    launch = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
              "DS_ACCELERATOR": "cpu"}  # fmt: skip
    for name, value in launch.items():
        monkeypatch.setenv(name, value)
    # accelerate.Accelerator sets ACCELERATE_USE_DEEPSPEED=true for good; unset it afterwards.
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    # DeepSpeed's CPU accelerator talks gloo when oneCCL's bindings are absent (as here), and
    # JIT-compiles a shared-memory all-reduce kernel that only tensor-parallel inference uses:
    # skip that C++ build (30 s on a cold cache, and a compiler) by reporting it unavailable.
    ds_torch = importlib.import_module("deepspeed.comm.torch")  # the attribute is torch itself
    monkeypatch.setattr(ds_torch, "build_shm_op", lambda: None)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    deepspeed.comm.comm.cdb = None
    unset_hf_deepspeed_config()  # ZeRO-3 must not stay on for later from_pretrained calls
    AcceleratorState._reset_state(reset_partial_state=True)


def test_deepspeed_zero3_single_process_on_the_cpu(tiny, tmp_path, trainers, single_process_launch):
    import deepspeed
    import torch.distributed as dist
    from safetensors.torch import load_file

    from charlie.training.config import load_train_config
    from charlie.training.sft import train

    shipped = load_train_config(REPO / "configs" / "sft_config_multigpu.yaml")
    keys = {**shipped.model_dump(), **shipped.sft_args}
    keys.update(
        base_model=str(tiny["base"]), trust_remote_code=False, dataset_dir=tiny["data"],
        output_dir=tmp_path / "ds", max_length=128, gpu_type="CPU",
        deepspeed=str(REPO / "configs" / "deepspeed" / "zero3.json"),
        max_steps=2, gradient_accumulation_steps=2, warmup_steps=0, save_steps=2, logging_steps=1,
        report_to=["none"], disable_tqdm=True,
    )  # fmt: skip
    cfg = TrainConfig(**keys)
    assert cfg.zero_stage() == 3 and cfg.sft_args["activation_checkpointing"] is True

    metrics = train(cfg)

    assert metrics["global_step"] == 2
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["eval_loss"])
    (trainer,) = trainers["made"]
    assert trainer.is_deepspeed_enabled
    assert trainer.args.bf16 is False and trainer.args.use_cpu is True
    engine = trainer.model_wrapped
    assert isinstance(engine, deepspeed.DeepSpeedEngine)
    assert engine.zero_optimization_stage() == 3
    assert dist.get_backend() == "gloo" and dist.get_world_size() == 1
    # ZeRO-3 partitioned the parameters: each one is a DeepSpeed-managed shard.
    assert all(hasattr(p, "ds_id") for p in engine.module.parameters())

    checkpoint = cfg.output_dir / "checkpoint-2"
    assert (checkpoint / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").is_file()
    # The adapter was gathered from the ZeRO-3 shards on save: full-size, trained tensors.
    weights = load_file(cfg.output_dir / "adapter_model.safetensors")
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert {k.split(".")[-3] for k in lora_b} == PROJECTIONS
    assert all(v.shape[1] == cfg.lora_r and v.abs().sum() > 0 for v in lora_b.values())
    manifest = _manifest(cfg.output_dir)
    assert manifest["hardware"]["world_size"] == 1
    assert manifest["final_metrics"]["global_step"] == 2
    losses = _losses(manifest["log_history"])
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())


def test_a_retried_step_with_a_fresh_output_dir_resumes_from_the_checkpoint_dir(tiny, tmp_path):
    """Kubeflow: a retried pod gets a new, empty output artifact but the same PVC."""
    from charlie.training.sft import train

    pvc = tmp_path / "pvc" / "checkpoints"
    first = train(_config(tiny, tmp_path / "attempt-1", max_steps=4, checkpoint_dir=pvc))
    assert first["global_step"] == 4
    assert sorted(p.name for p in pvc.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not list((tmp_path / "attempt-1").glob("checkpoint-*"))  # only the final model there
    assert (tmp_path / "attempt-1" / "adapter_model.safetensors").is_file()

    second = train(_config(tiny, tmp_path / "attempt-2", max_steps=6, checkpoint_dir=pvc))
    assert second["global_step"] == 6
    history = _manifest(tmp_path / "attempt-2")["log_history"]
    assert sorted(_losses(history)) == [1, 2, 3, 4, 5, 6]  # steps 1-4 came from the PVC
    assert (tmp_path / "attempt-2" / "adapter_model.safetensors").is_file()


def test_a_retry_after_the_last_checkpoint_trains_no_extra_step(tiny, tmp_path, monkeypatch):
    """The pod is lost after the final checkpoint: the retry only saves what that holds."""
    from safetensors.torch import load_file

    from charlie.training.sft import train

    monkeypatch.chdir(tmp_path)
    pvc = tmp_path / "pvc"
    tensorboard = {"report_to": ["tensorboard"], "eval_strategy": "steps", "eval_steps": 2}
    train(_config(tiny, tmp_path / "attempt-1", max_steps=4, checkpoint_dir=pvc, **tensorboard))
    again = train(_config(tiny, tmp_path / "attempt-2", max_steps=4, checkpoint_dir=pvc,
                          **tensorboard))  # fmt: skip
    assert not (tmp_path / "runs").exists()  # TensorBoard stays under the checkpoint dir
    assert any((pvc / "runs").rglob("events.out.tfevents.*"))
    assert again["global_step"] == 4
    assert sorted(p.name for p in pvc.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    saved = load_file(tmp_path / "attempt-2" / "adapter_model.safetensors")
    final = load_file(pvc / "checkpoint-4" / "adapter_model.safetensors")
    assert saved.keys() == final.keys()
    assert all(saved[k].equal(final[k]) for k in saved)
    assert sorted(_losses(_manifest(tmp_path / "attempt-2")["log_history"])) == [1, 2, 3, 4]


# ------------------------------------------------------------------ max_length auto, cost first


def _with_report(tiny: dict[str, Path], tmp_path: Path, max_length: int) -> Path:
    """A copy of the tokenized data with the report `charlie tokenize` writes beside it."""
    import shutil

    data = tmp_path / "tokenized"
    shutil.copytree(tiny["data"], data)
    report = {"max_length": max_length, "max_length_setting": "auto", "context_length": 256}
    (data / "tokenize_report.json").write_text(json.dumps(report))
    return data


def test_auto_without_a_tokenize_report_is_one_sentence(tiny, tmp_path):
    from charlie.training.sft import train

    with pytest.raises(CharlieError) as error:
        train(_config(tiny, tmp_path / "run", max_length="auto", max_steps=1))
    assert str(error.value) == (
        f"max_length: auto uses the length `charlie tokenize` chose, but {tiny['data']} has no "
        "tokenize_report.json: run `charlie tokenize` first."
    )


def test_auto_trains_at_the_reported_length_logs_the_cost_first_and_keeps_the_report(
    tiny, tmp_path, trainers, caplog, monkeypatch
):
    import logging

    import transformers

    from charlie.training.sft import train

    data = _with_report(tiny, tmp_path, 128)
    loader = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def loading(cls, *args, **kwargs):
        logging.getLogger("charlie.train").info("loading the weights")
        return loader(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        classmethod(loading))  # fmt: skip
    caplog.set_level(logging.INFO, logger="charlie.train")
    out = tmp_path / "run"
    cfg = _config(tiny, out, dataset_dir=data, max_length="auto", num_train_epochs=1,
                  save_strategy="no", merge=True)  # fmt: skip
    metrics = train(cfg)
    assert trainers["made"][0].args.max_length == 128
    # 32 examples, batch 4, one process, one epoch: the count the Trainer ran.
    assert metrics["global_step"] == 8
    messages = caplog.messages
    cost = next(i for i, m in enumerate(messages) if m.startswith("cost: "))
    assert cost < messages.index("loading the weights")
    line = messages[cost]
    assert line.startswith(
        "cost: ~8 optimizer steps (1 epoch of 8; batch 4 x accumulation 1 x 1 process)"
    )
    assert "tokens/epoch" in line and "GFLOP/s measured" in line
    # the config leaves checkpointing to TRL's default (on), so the recompute is counted
    assert "(6·N·tokens x 4/3 for activation checkpointing, N = " in line
    for where in (out, out / "merged"):
        assert json.loads((where / "tokenize_report.json").read_text())["max_length"] == 128


def test_an_explicit_max_length_shorter_than_the_tokenized_examples_is_refused(tiny, tmp_path):
    from datasets import load_from_disk

    from charlie.training.sft import train

    longest = max(len(ids) for ids in load_from_disk(str(tiny["data"]))["train"]["input_ids"])
    with pytest.raises(CharlieError, match=rf"^max_length 16 is shorter than the longest "
                       rf"tokenized example \({longest} tokens, in .*\): training would cut its "
                       r"completion; tokenize with the same max_length or set max_length: auto\.$"):  # fmt: skip
        train(_config(tiny, tmp_path / "run", max_length=16, max_steps=1))


def test_optimizer_steps_count_as_the_trainer_does():
    from charlie.training.sft import optimizer_steps

    assert optimizer_steps(7496, batch_size=16, accumulation=1, world_size=1, epochs=2) == (
        938,
        469,
    )
    assert optimizer_steps(100, batch_size=4, accumulation=3, world_size=2, epochs=1) == (5, 5)
    assert optimizer_steps(100, batch_size=4, accumulation=1, world_size=1, epochs=2.5) == (63, 25)
    assert optimizer_steps(100, batch_size=4, accumulation=1, world_size=1, epochs=3,
                           max_steps=10) == (10, 25)  # fmt: skip


def test_padding_and_compute_parameters():
    from charlie.plan import model_shape
    from charlie.training.sft import compute_params, padded_tokens

    assert padded_tokens([10, 10, 10, 10], 2) == 40
    assert padded_tokens([1, 9], 2) == 18 and padded_tokens([1, 9], 1) == 10
    config = {"hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 100,
              "num_attention_heads": 2, "intermediate_size": 16}  # fmt: skip
    shape = model_shape(config)
    # everything but the input embeddings (a lookup): lm_head, the layer, the final norm
    assert compute_params(shape) == shape.total_params - 100 * 8
    tied = model_shape({**config, "tie_word_embeddings": True})
    assert compute_params(tied) == tied.total_params  # the embeddings are the output layer


def test_estimate_cost_states_steps_tokens_and_the_formula(tiny):
    from charlie.training.sft import estimate_cost

    cfg = _config(tiny, Path("unused"), max_steps=-1, num_train_epochs=2,
                  activation_checkpointing=True)  # fmt: skip
    cost = estimate_cost(cfg, [100] * 40, max_length=128, vocab_size=411, smoke_test=False)
    assert (cost["steps"], cost["steps_per_epoch"], cost["tokens_per_epoch"]) == (20, 10, 4000)
    assert cost["flops"] == pytest.approx(6 * cost["parameters"] * 8000 * 4 / 3)
    assert cost["seconds"] == pytest.approx(cost["flops"] / cost["flops_per_second"])
    assert "x 4/3 for activation checkpointing" in cost["line"] and "an estimate" in cost["line"]
    smoke = estimate_cost(cfg, [100] * 40, max_length=128, vocab_size=411, smoke_test=True)
    assert smoke["steps"] == cfg.smoke_test_steps and "--smoke-test" in smoke["line"]
    assert smoke["flops"] == pytest.approx(cost["flops"] / 2)  # 10 steps of the 20
