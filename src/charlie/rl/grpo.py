"""GRPO from the SFT model against the trading rewards (TRL's GRPOTrainer, a new LoRA adapter).

The policy starts as the SFT model (its ``merged/`` copy, or the adapter merged on load) with a
fresh LoRA adapter; with ``beta`` > 0 the reference for the KL term is the same model with the
adapter off, so no second copy is held. Each step samples ``num_generations`` completions per
prompt (TRL's group), scores them with :func:`charlie.rl.rewards.reward_functions` against the
episode's forward return and volatility, and moves the adapter toward the completions that
scored above their group's mean.

Generation stops per row at the thesis's stop tokens (``</action>``, the end of turn, EOS:
:func:`charlie.inference.stop_token_ids`), which TRL reads from the model's generation config,
both to stop and to mask the loss after the stop. Checkpoints, resume, TensorBoard and the
manifest work as in ``charlie train``; the validation episodes' mean reward is measured before
the first step and at each evaluation, so the log shows whether RL is helping held-out prompts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from charlie import models
from charlie.config import refuse_passthrough_keys
from charlie.errors import CharlieError
from charlie.headlines import SUFFIX, write_headline
from charlie.inference import chat_prompt, stop_token_ids
from charlie.io import load_dataset_dir, require_dataset_dict
from charlie.rl import curriculum, environment, rewards
from charlie.rl.config import GRPOTrainConfig
from charlie.training.config import REPORT

log = logging.getLogger("charlie.grpo")

CHARLIE_SETS = {
    "output_dir": "it is Charlie's output_dir key",
    "reward_weights": "it is Charlie's rewards.weights key",
    "shuffle_dataset": "the curriculum key decides it (on: the curriculum's order, unshuffled)",
}
"""GRPOConfig keys Charlie sets itself, and why a config may not set them."""
EPISODE_COLUMNS = ("prompt", "uid", "forward_return", "volatility")


def check_grpo_keys(cfg: GRPOTrainConfig) -> None:
    """Refuse, in one sentence and before any weights load, a pass-through key that is not
    ``trl.GRPOConfig``'s (with the closest one named) or that Charlie sets itself."""
    from trl import GRPOConfig

    refuse_passthrough_keys(cfg.grpo_args, (f.name for f in dataclasses.fields(GRPOConfig)),
                            GRPOTrainConfig.model_fields, CHARLIE_SETS, config="GRPO config",
                            target="trl.GRPOConfig", see="configs/grpo_tiny_cpu.yaml")  # fmt: skip


def grpo_arguments(
    cfg: GRPOTrainConfig, *, cuda: bool, stop_ids: Sequence[int] | None = None
) -> Any:
    """TRL's GRPOConfig from the file's pass-through keys, adapted to the hardware.

    ``stop_ids`` (the thesis's stop tokens) reach vLLM's sampling as ``stop_token_ids``, since
    vLLM does not read the policy's generation config as transformers' ``generate`` does; a
    ``generation_kwargs`` of the file's own wins.
    """
    from trl import GRPOConfig

    check_grpo_keys(cfg)
    args = dict(cfg.grpo_args)
    if args.get("use_vllm") and stop_ids:
        args["generation_kwargs"] = {"stop_token_ids": list(stop_ids),
                                     **(args.get("generation_kwargs") or {})}  # fmt: skip
    if not cuda:
        if args.get("bf16") or args.get("fp16"):
            log.warning("no CUDA device: GRPO in fp32 on the CPU instead of bf16/fp16")
        if args.get("use_vllm"):
            raise CharlieError("use_vllm needs a CUDA device; set use_vllm: false to run here.")
        args.update(use_cpu=True, bf16=False, fp16=False)
    # transformers' new name, always set (TRL's default under the old one warns on every run)
    old = args.pop("gradient_checkpointing", None)
    args.setdefault("activation_checkpointing", True if old is None else bool(old))
    args.setdefault("report_to", ["tensorboard"])
    args.setdefault("disable_tqdm", not sys.stderr.isatty())
    return GRPOConfig(
        output_dir=str(cfg.checkpoint_dir or cfg.output_dir),
        reward_weights=list(cfg.rewards.weights),
        shuffle_dataset=not cfg.curriculum,
        **args,
    )


def reward_spec(cfg: GRPOTrainConfig, strategy: Any) -> rewards.RewardSpec:
    """The rewards' settings, with the backtest config's commission and slippage as the cost."""
    settings = cfg.rewards.model_dump(exclude={"weights"})
    return rewards.spec_from_costs(strategy.transaction_cost_bps, strategy.slippage_bps,
                                   **settings)  # fmt: skip


def build_splits(
    cfg: GRPOTrainConfig, data: Any, prices: dict[str, pd.DataFrame], basis: str
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """``(train, validation, report)``: the episodes (train in curriculum order when on), the
    reward-window audit passed, and what was dropped."""
    for split in ("train", "validation"):
        if split not in data:
            raise CharlieError(f"{cfg.dataset_dir} has no {split} split.")
    built = {}
    for split in ("train", "validation"):
        built[split] = environment.build_episodes(
            list(data[split]), prices, horizon=cfg.horizon, basis=basis, vol_window=cfg.vol_window
        )
    heldout = min(data["validation"]["as_of_date"], default=None)
    environment.check_reward_window(built["train"].frame, heldout, cfg.horizon)
    train, validation = built["train"].frame, built["validation"].frame
    if train.empty:
        raise CharlieError(f"no training episode has a {cfg.horizon}-day outcome in the prices.")
    if cfg.curriculum:
        train = curriculum.apply_curriculum(train, cfg.curriculum_stages, _seed(cfg))
    if cfg.eval_rows is not None:
        validation = validation.iloc[: cfg.eval_rows]
    report = {
        "episodes": {"train": len(train), "validation": len(validation)},
        "dropped": {s: b.dropped for s, b in built.items()},
        "horizon": cfg.horizon,
        "latest_train_reward_end": max(train["reward_end"]),
        "heldout_start": heldout,
        "curriculum": cfg.curriculum,
    }
    return train, validation, report


def to_dataset(frame: pd.DataFrame, tokenizer: Any) -> Any:
    """The episodes as GRPOTrainer's dataset: the chat-templated prompt, the reward columns."""
    from datasets import Dataset

    out = frame.loc[:, list(EPISODE_COLUMNS)].copy()
    out["prompt"] = [chat_prompt(tokenizer, p) for p in out["prompt"]]
    return Dataset.from_pandas(out, preserve_index=False)


def _seed(cfg: GRPOTrainConfig) -> int:
    return int(cfg.grpo_args.get("seed", 42))


def train(
    cfg: GRPOTrainConfig,
    prices: dict[str, pd.DataFrame],
    strategy: Any,
    *,
    config_path: Path | None = None,
    resume: bool | None = None,
) -> dict[str, Any]:
    """Train the GRPO adapter into ``cfg.output_dir``; returns the final metrics.

    Args:
        prices: Per ticker, the bars the episodes' outcomes come from.
        strategy: The backtest config (costs and ``price_basis``).
        resume: None: from the newest complete checkpoint when there is one; True: it must
            exist; False: start over.
    """
    from charlie.training import sft

    with sft.process_settings_restored():  # threads, TensorBoard's run dir: the caller's again
        return _train(cfg, prices, strategy, config_path=config_path, resume=resume)


def _train(
    cfg: GRPOTrainConfig,
    prices: dict[str, pd.DataFrame],
    strategy: Any,
    *,
    config_path: Path | None,
    resume: bool | None,
) -> dict[str, Any]:
    import torch
    from transformers import PrinterCallback, set_seed

    from charlie.training import sft
    from charlie.training.manifest import write_manifest
    from charlie.training.trainer import LogLines

    check_grpo_keys(cfg)
    started = dt.datetime.now(dt.UTC)
    if not sys.stderr.isatty():
        import datasets

        datasets.disable_progress_bars()
    data = load_dataset_dir(require_dataset_dict(cfg.dataset_dir))
    train_frame, eval_frame, report = build_splits(cfg, data, prices, strategy.price_basis)
    log.info("episodes: %d train (%s), %d validation; %d-day rewards, the latest ending %s "
             "before the held-out split's %s", len(train_frame),
             "curriculum, easy first" if cfg.curriculum else "shuffled", len(eval_frame),
             cfg.horizon, report["latest_train_reward_end"], report["heldout_start"])  # fmt: skip

    checkpoints = cfg.checkpoint_dir or cfg.output_dir
    resume_from = (
        None if resume is False else sft.latest_checkpoint(checkpoints, remove_incomplete=True)
    )
    if resume and resume_from is None:
        raise CharlieError(f"--resume: no complete checkpoint-* directory in {checkpoints}.")
    if resume_from:
        log.info("resuming from %s", resume_from)

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    set_seed(_seed(cfg))
    model, tokenizer = models.load_for_inference(cfg.sft_model)
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR",
                          str(checkpoints / "runs" / f"{_name(cfg, config_path)}-{started:%Y%m%d-%H%M%S}"))  # fmt: skip
    trainer = build_trainer(cfg, model, tokenizer, train_frame, eval_frame, strategy,
                            callbacks=[LogLines(brief_metrics)])  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # LogLines says it, in Charlie's words
    before = {} if resume_from else _prefixed(trainer.evaluate(), "before_")
    result = trainer.train(resume_from_checkpoint=resume_from)
    after = sft.final_eval_metrics(trainer)  # the last step's evaluation, when one ran there

    trainer.save_model(str(cfg.output_dir))  # the GRPO adapter, on the SFT model
    tokenizer.save_pretrained(str(cfg.output_dir))
    report_file = Path(cfg.sft_model) / REPORT  # evaluate's budget: the SFT completion lengths
    if report_file.is_file():
        shutil.copy2(report_file, cfg.output_dir / REPORT)
    metrics = {**result.metrics, **before, **after, "global_step": trainer.state.global_step,
               "episodes": report}  # fmt: skip
    if cfg.merge:
        metrics["merged_model"] = str(_merge(trainer, tokenizer, cfg))
    write_manifest(cfg, config_path, started, metrics, trainer.state.log_history,
                   base_model=str(cfg.sft_model), seed=_seed(cfg))  # fmt: skip
    write_rewards_curve(cfg.output_dir, trainer.state.log_history)
    write_headline(cfg.output_dir / f"grpo{SUFFIX}", headline(metrics, trainer.state.log_history))
    return metrics


# What a console line of GRPO shows, in this order (TRL logs some 40 figures a step; all go to
# the log file and TensorBoard): the reward, how much of it varies within groups, each reward
# function's mean, the KL and loss, and the completions' length.
BRIEF = {"reward": "reward", "reward_std": "reward_std",
         "frac_reward_zero_std": "frac_reward_zero_std", "kl": "kl", "loss": "loss",
         "completions/mean_length": "length", "completions/clipped_ratio": "clipped",
         "learning_rate": "learning_rate"}  # fmt: skip


def brief_metrics(logs: dict[str, Any]) -> dict[str, Any]:
    """The GRPO figures a console line shows (``BRIEF``, then ``rewards/<name>/mean`` as
    ``<name>``), an evaluation's with its ``eval_`` prefix; a run's final summary whole."""
    if "train_runtime" in logs:
        return logs
    prefix = "eval_" if any(k.startswith("eval_") for k in logs) else ""
    shown = {}
    for key, label in BRIEF.items():
        if prefix + key in logs:
            shown[prefix + label] = logs[prefix + key]
        if key == "frac_reward_zero_std":  # each reward function's mean after the spread
            for name, value in logs.items():
                inner = name.removeprefix(prefix)
                if inner.startswith("rewards/") and inner.endswith("/mean"):
                    shown[prefix + inner.split("/")[1]] = value
    if prefix and "eval_runtime" in logs:
        shown["eval_runtime"] = logs["eval_runtime"]
    return shown


def build_trainer(
    cfg: GRPOTrainConfig,
    model: Any,
    tokenizer: Any,
    train_frame: pd.DataFrame,
    eval_frame: pd.DataFrame,
    strategy: Any,
    callbacks: Sequence[Any] = (),
) -> Any:
    """TRL's GRPOTrainer as ``charlie grpo`` builds it: ``model`` (the SFT model) stopping at
    the thesis's stop tokens, a fresh LoRA adapter, the rewards, the episodes as datasets.

    Sets the model's generation config (stop and pad ids, which TRL reads) and left padding on
    ``tokenizer``; ``benchmarks/bench_grpo.py`` times the trainer it returns.
    """
    import torch
    from peft import LoraConfig
    from trl import GRPOTrainer

    model.generation_config.eos_token_id = stop_token_ids(tokenizer, model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "left"
    args = grpo_arguments(cfg, cuda=torch.cuda.is_available(),
                          stop_ids=model.generation_config.eos_token_id)  # fmt: skip
    spec = reward_spec(cfg, strategy)
    return GRPOTrainer(
        model=model,
        reward_funcs=rewards.reward_functions(spec, tokenizer),
        args=args,
        train_dataset=to_dataset(train_frame, tokenizer),
        eval_dataset=to_dataset(eval_frame, tokenizer),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                               lora_dropout=cfg.lora_dropout,
                               target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM"),
        callbacks=list(callbacks),
    )  # fmt: skip


def _name(cfg: GRPOTrainConfig, config_path: Path | None) -> str:
    return config_path.stem if config_path else Path(cfg.output_dir).name


def _prefixed(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def _merge(trainer: Any, tokenizer: Any, cfg: GRPOTrainConfig) -> Path:
    """``<output_dir>/merged``: the SFT model with the GRPO adapter folded in (in memory: the
    policy's base is the unquantised SFT model already), recorded for evaluate."""
    out = cfg.output_dir / models.MERGED
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    models.record_merge(cfg.output_dir, out)
    if (cfg.output_dir / REPORT).is_file():
        shutil.copy2(cfg.output_dir / REPORT, out / REPORT)
    return out


def reward_series(log_history: list[dict[str, Any]]) -> pd.DataFrame:
    """Per logged step: the mean reward (train), each term's mean, and the validation reward."""
    rows = []
    for entry in log_history:
        if "step" not in entry:
            continue
        keep = {k: v for k, v in entry.items()
                if k in ("reward", "eval_reward", "frac_reward_zero_std")
                or (k.startswith(("rewards/", "eval_rewards/")) and k.endswith("/mean"))}  # fmt: skip
        if keep:
            rows.append({"step": int(entry["step"]), **keep})
    return pd.DataFrame(rows).groupby("step", as_index=False).first() if rows else pd.DataFrame()


def write_rewards_curve(output_dir: Path, log_history: list[dict[str, Any]]) -> Path:
    """``rewards.csv``: the reward per logged step, train and validation (a DVC plot)."""
    path = Path(output_dir) / "rewards.csv"
    reward_series(log_history).to_csv(path, index=False)
    return path


def headline(metrics: dict[str, Any], log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """``grpo_headline.json``: steps, the validation reward before and after, the train reward
    at the first and last logged step, and the share of groups that taught nothing."""
    series = reward_series(log_history)
    train = series["reward"].dropna() if "reward" in series else pd.Series(dtype=float)
    zero = series["frac_reward_zero_std"].dropna() if "frac_reward_zero_std" in series else None

    def num(value: Any) -> float | None:
        return None if value is None else round(float(value), 4)

    return {
        "steps": metrics.get("global_step"),
        "eval_reward_before": num(metrics.get("before_eval_reward")),
        "eval_reward_after": num(metrics.get("eval_reward")),
        "train_reward_first": num(train.iloc[0]) if len(train) else None,
        "train_reward_last": num(train.iloc[-1]) if len(train) else None,
        "frac_reward_zero_std": num(zero.mean()) if zero is not None and len(zero) else None,
    }
