"""LoRA target modules chosen for the base model's architecture (``lora_target_modules: auto``).

``all-linear`` wraps every ``nn.Linear`` but the output layer, which on DeepSeek-V3.2 includes
the sparse-attention indexer (``wq_b``, ``wk``, ``weights_proj``: DeepSeek trains it with its own
objective and transformers runs it under ``no_grad``). Its routed experts are no ``nn.Linear``
in transformers 5 but fused 3-D ``nn.Parameter`` tensors (``experts.gate_up_proj``,
``experts.down_proj``), which PEFT reaches only as ``target_parameters`` (below). ``auto``
looks the ``model_type`` of the base model's config.json up in :data:`ARCHITECTURE_TARGETS`:

* Llama-style (llama, mistral, qwen2, qwen3): ``q_proj k_proj v_proj o_proj gate_proj up_proj
  down_proj`` (module names, matched as PEFT does: the name or a dotted suffix).
* DeepSeek-V3 / V3.2 (deepseek_v3, deepseek_v32): the MLA projections of ``self_attn``
  (``q_a_proj``, ``q_b_proj``, or ``q_proj`` when there is no ``q_lora_rank``,
  ``kv_a_proj_with_mqa``, ``kv_b_proj``, ``o_proj``). Never the indexer
  (``self_attn.indexer.*``), and no MLP, because of what PEFT 0.21.2 does on transformers 5
  for these model types (``peft.utils.transformers_weight_conversion``, which maps them like
  qwen2_moe): any target named ``gate_proj``, ``up_proj`` or ``down_proj`` (or ``gate``) is
  moved off ``target_modules`` onto the fused routed experts as ``target_parameters``
  (``mlp.experts.gate_up_proj`` at twice the rank, ``mlp.experts.down_proj``; ``gate`` onto
  the router's weight), so the dense and shared-expert MLPs lose their adapters, and the
  experts' ``ParamWrapper`` refuses ``lora_dropout`` != 0. ``all-linear`` is resolved the same
  way: on deepseek_v32 it adapts the indexer, the router and the routed experts, no dense or
  shared MLP, and fails outright with the shipped ``lora_dropout: 0.05``.

Any other ``model_type`` (or a config that cannot be read) falls back to ``all-linear`` with a
warning. Pure: no torch, no transformers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("charlie.train")

AUTO = "auto"
FALLBACK = "all-linear"
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEEPSEEK_TARGETS = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
"""MLA projections only: not the indexer, the router, the experts or (see above) any MLP."""

ARCHITECTURE_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": LLAMA_TARGETS,
    "mistral": LLAMA_TARGETS,
    "qwen2": LLAMA_TARGETS,
    "qwen3": LLAMA_TARGETS,
    "deepseek_v3": DEEPSEEK_TARGETS,
    "deepseek_v32": DEEPSEEK_TARGETS,
}
"""``model_type`` -> PEFT ``target_modules`` (module names or dotted suffixes)."""


def model_type_of(config: Mapping[str, Any] | None) -> str | None:
    """The config.json's ``model_type``, or its ``text_config``'s when only that one is known."""
    if not config:
        return None
    model_type = config.get("model_type")
    text = config.get("text_config")
    if model_type not in ARCHITECTURE_TARGETS and isinstance(text, Mapping):
        model_type = text.get("model_type") or model_type
    return model_type if isinstance(model_type, str) else None


def resolve_targets(
    targets: str | list[str] | tuple[str, ...],
    config: Mapping[str, Any] | None,
    *,
    warn: bool = True,
) -> str | list[str]:
    """PEFT's ``target_modules`` for a config's ``lora_target_modules``.

    Args:
        targets: ``auto``, ``all-linear``, a regex or a list of module names.
        config: The base model's config.json (only ``auto`` reads it).
        warn: Log a warning when ``auto`` falls back to ``all-linear``.

    Returns:
        ``targets`` unchanged (a list as a new list) unless it is ``auto``; for ``auto`` the
        architecture's list, or ``all-linear`` for a ``model_type`` not in
        :data:`ARCHITECTURE_TARGETS`.
    """
    if targets != AUTO:
        return targets if isinstance(targets, str) else list(targets)
    model_type = model_type_of(config)
    chosen = ARCHITECTURE_TARGETS.get(model_type or "")
    if chosen is None:
        if warn:
            log.warning(
                "lora_target_modules: auto knows no target list for model_type %r; using %s "
                "(known: %s)",
                model_type,
                FALLBACK,
                ", ".join(ARCHITECTURE_TARGETS),
            )
        return FALLBACK
    return list(chosen)
