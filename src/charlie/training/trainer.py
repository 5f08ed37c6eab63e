"""TRL's SFTTrainer, with the loss computed where it costs least on the hardware at hand.

TRL's SFTTrainer computes every loss through its fused LM head: the hidden states are projected
in tiles, the per-token log-probabilities, entropies and top-1 hits computed in one kernel, and
the logits recomputed in the backward pass. On a CUDA device with Triton it scores only the
completion positions and never holds the ``(batch, length, vocab)`` logits: that is the memory
a 128k-vocabulary model needs. Elsewhere (the CPU, the demo) it scores every position twice and
computes the entropy of each: training ran at 0.41x a plain loop on the same batches
(``benchmarks/bench_train.py`` measures it; this class's path: 1.02x).

:class:`SFTTrainer` keeps TRL's path where it pays (``fused_lm_head: true``, or ``auto`` on a
CUDA device, and for QLoRA's quantized base) and otherwise lets the model compute its own loss
from the same labels (the collator masks the prompt with -100, so the loss is still the
completion's alone, normalised by the same token count). The two logging metrics TRL adds, ``mean_token_accuracy`` and
``entropy``, are then computed from the logits the model returned, on the completion tokens,
for the micro-batches of the step that is logged (and on every evaluation batch), so the logged
figures keep their meaning: the mean over the batches they were measured on.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import SFTTrainer as TRLSFTTrainer

from charlie.progress import duration

log = logging.getLogger("charlie.train")
SHOWN = {"mean_token_accuracy": "token accuracy", "eval_mean_token_accuracy": "token accuracy",
         "eval_entropy": "entropy", "learning_rate": "lr"}  # fmt: skip
HIDDEN = {"epoch", "step", "num_tokens", "eval_num_tokens", "eval_runtime",
          "eval_samples_per_second", "eval_steps_per_second", "total_flos"}  # fmt: skip


def use_fused_lm_head(setting: bool | str, *, cuda: bool, quantized: bool = False) -> bool:
    """``fused_lm_head``: True/False as given; ``"auto"``: on CUDA (Triton), and for a
    quantized (QLoRA) base, whose bf16 head TRL's kernel casts and the model's forward does not.
    """
    return (cuda or quantized) if setting == "auto" else bool(setting)


def completion_metrics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[correct top-1 predictions, summed entropy, scored tokens] of the next-token labels."""
    with torch.no_grad():
        shifted = labels[:, 1:]
        mask = shifted != -100
        scored = logits[:, :-1][mask].float()
        log_probs = torch.log_softmax(scored, dim=-1)
        correct = (scored.argmax(-1) == shifted[mask]).sum()
        entropy = -(log_probs.exp() * log_probs).sum()
        return torch.stack([correct.float(), entropy, mask.sum().float()])


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"
    return str(value)


def metrics_line(logs: dict[str, Any], step: int, max_steps: int, epoch: float | None,
                 rate: float | None) -> str:  # fmt: skip
    """One log line for a Trainer log: where the run is, the metrics, speed and ETA.

    ``step 10/952 (1%), epoch 0.07: loss 6.877, grad_norm 1.858, lr 0.0027, ...; 4.1 steps/s,
    ETA 3m50s``; an evaluation reads ``evaluation at step 136 (epoch 1.00): eval_loss ...``.
    """
    shown = ", ".join(f"{SHOWN.get(k, k)} {_number(v)}" for k, v in logs.items() if k not in HIDDEN)
    where = f"epoch {epoch:.2f}" if epoch is not None else ""
    if any(k.startswith("eval_") for k in logs):
        seconds = logs.get("eval_runtime")
        took = f" ({seconds:.1f} s)" if isinstance(seconds, int | float) else ""
        return f"evaluation at step {step} ({where}): {shown}{took}"
    if "train_runtime" in logs:
        return f"finished at step {step}: {shown}"
    line = f"step {step}/{max_steps} ({step / max(1, max_steps):.0%}), {where}: {shown}"
    if rate:
        line += f"; {rate:.2f} steps/s, ETA {duration((max_steps - step) / rate)}"
    return line


class LogLines(TrainerCallback):
    """The Trainer's logs as Charlie log lines: to the stage's log file always, and to the
    console when no terminal shows the progress bar (DVC, Kubeflow, CI), with steps/s and ETA.

    With ``brief`` (a log dict -> the metrics worth a console line, renamed as they read
    there), the console line shows those and the log file also gets every metric.
    Replaces transformers' PrinterCallback, which prints the raw dicts to stdout only.
    """

    def __init__(self, brief: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.started: float | None = None
        self.first_step = 0
        self.brief = brief

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.monotonic(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_local_process_zero or not logs:  # one per node, as PrinterCallback
            return
        rate = None
        if self.started is not None and state.global_step > self.first_step:
            rate = (state.global_step - self.first_step) / (time.monotonic() - self.started)
        level = logging.DEBUG if sys.stderr.isatty() and not args.disable_tqdm else logging.INFO
        where = (state.global_step, state.max_steps, state.epoch, rate)
        if self.brief is not None:
            log.log(level, "%s", metrics_line(self.brief(logs), *where))
            level = logging.DEBUG  # every metric, for the log file
        log.log(level, "%s", metrics_line(logs, *where))


class SFTTrainer(TRLSFTTrainer):
    """TRL's SFTTrainer; with ``fused_lm_head=False``, the model's own loss (see the module).

    Its logs go through :class:`LogLines`; a PEFT model is saved with its (resized) embedding
    layers stated, not guessed by PEFT from the base model's config.
    """

    def __init__(self, *args: Any, fused_lm_head: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fused_lm_head = fused_lm_head
        self._window: dict[str, list[float]] = {}  # mode -> [correct, entropy, tokens]
        self.remove_callback(PrinterCallback)
        self.add_callback(LogLines())

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Trainer's save; a PEFT model's with ``save_embedding_layers`` said outright.

        PEFT's ``"auto"`` reloads the base model's config (from the hub when the base is not a
        local folder) to find out whether the vocabulary grew, and warns that it did: Charlie
        always adds the thesis tokens, and trains embed_tokens and lm_head (modules_to_save or
        trainable_token_indices), so they are saved.
        """
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        save = getattr(model, "save_pretrained", None)
        if hasattr(model, "peft_config") and save is not None:
            model.save_pretrained = lambda *a, **k: save(*a, **{"save_embedding_layers": True, **k})
            try:
                return super()._save(output_dir, state_dict)
            finally:
                del model.save_pretrained
        return super()._save(output_dir, state_dict)

    def _model_loss_applies(self) -> bool:
        """The plain NLL path: no loss TRL must compute itself (DFT, smoothing, MoE aux, SP)."""
        pc = getattr(self.accelerator, "parallelism_config", None)
        return not (
            self.fused_lm_head
            or self.compute_loss_func is not None
            or self.label_smoother is not None
            or self.args.loss_type != "nll"
            or self.aux_loss_enabled
            or (pc is not None and pc.sp_enabled)
        )

    def _logs_this_step(self) -> bool:
        """Whether the optimizer step in progress ends in a training log line."""
        args, step = self.args, self.state.global_step + 1
        if args.logging_strategy != "steps":
            return True
        every = args.logging_steps
        every = max(1, int(every * self.state.max_steps)) if every < 1 else int(every)
        return step % every == 0 or (step == 1 and args.logging_first_step)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._model_loss_applies():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        labels = inputs["labels"]
        loss, outputs = Trainer.compute_loss(self, model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)  # fmt: skip
        if mode == "eval" or self._logs_this_step():  # every rank alike: a collective
            sums = self.accelerator.gather_for_metrics(completion_metrics(outputs.logits, labels))
            sums = sums.reshape(-1, 3).sum(0).tolist()
            window = self._window.setdefault(mode, [0.0, 0.0, 0.0])
            self._window[mode] = [a + b for a, b in zip(window, sums, strict=True)]
        if mode == "train":  # as TRL counts them: real tokens, or the packed row's length
            mask = inputs.get("attention_mask")
            local = mask.sum() if mask is not None else torch.tensor(inputs["position_ids"].size(1))
            total = self.accelerator.gather_for_metrics(local.to(self.args.device)).sum().item()
            self._total_train_tokens += total // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        window = self._window.pop(mode, None)
        if window is not None and window[2]:
            self._metrics[mode]["entropy"] = [window[1] / window[2]]
            self._metrics[mode]["mean_token_accuracy"] = [window[0] / window[2]]
        super().log(logs, start_time)
