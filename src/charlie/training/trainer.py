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

from typing import Any

import torch
from transformers import Trainer
from trl import SFTTrainer as TRLSFTTrainer


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


class SFTTrainer(TRLSFTTrainer):
    """TRL's SFTTrainer; with ``fused_lm_head=False``, the model's own loss (see the module)."""

    def __init__(self, *args: Any, fused_lm_head: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fused_lm_head = fused_lm_head
        self._window: dict[str, list[float]] = {}  # mode -> [correct, entropy, tokens]

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
