"""LoRA targets chosen by architecture (``lora_target_modules: auto``) on a tiny Llama and a tiny
DeepSeek-V3.2 (the shipped config.json shrunk), what PEFT really wraps, and the tiny DeepSeek
trained (LoRA and QLoRA, smoke-test steps), merged and generating.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("trl")

from charlie.plan import plan_for, render_table, verdict
from charlie.training.config import load_train_config
from charlie.training.targets import (
    DEEPSEEK_TARGETS,
    LLAMA_TARGETS,
    resolve_targets,
)
from tests.test_train_paths import _config, tiny  # noqa: F401  (tiny: a fixture)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHIPPED_V32 = CONFIGS / "models/deepseek-ai__DeepSeek-V3.2-Exp/config.json"
INDEXER = {"wq_b", "wk", "weights_proj"}
SMALL_V32 = dict(
    hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
    first_k_dense_replace=1, n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1,
    n_shared_experts=1, num_attention_heads=2, num_key_value_heads=2, q_lora_rank=16,
    kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, index_n_heads=2,
    index_head_dim=8, index_topk=16, max_position_embeddings=256,
)  # fmt: skip
"""Layer 0 dense, layer 1 MoE (4 fused experts, a shared expert), MLA with q_lora_rank, indexer."""


def _shipped_v32() -> dict:
    return json.loads(SHIPPED_V32.read_text(encoding="utf-8"))


def tiny_v32_model(vocab_size: int, **ids: int):
    """DeepSeek-V3.2-Exp's config.json with :data:`SMALL_V32`'s widths, randomly initialised."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    keys = {k: v for k, v in _shipped_v32().items()
            if k not in ("quantization_config", "architectures", "torch_dtype", "rope_scaling")}  # fmt: skip
    model_type = keys.pop("model_type")
    config = AutoConfig.for_model(model_type, **{**keys, **SMALL_V32, "vocab_size": vocab_size,
                                                 **ids})  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="module")
def tiny_v32(tiny, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    """A tiny deepseek_v32 base dir, with the tiny Llama's tokenizer and tokenized dataset."""
    from transformers import AutoTokenizer

    base = tmp_path_factory.mktemp("v32") / "base"
    tok = AutoTokenizer.from_pretrained(tiny["base"])
    model = tiny_v32_model(len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)  # fmt: skip
    model.save_pretrained(base)
    tok.save_pretrained(base)
    return {"base": base, "data": tiny["data"]}


def _wrapped(base: Path, cfg) -> dict[str, set[str]]:
    """The module paths (layer-relative) PEFT gives LoRA weights, and the layers of each kind."""
    from peft import get_peft_model
    from peft.tuners.lora.layer import LoraLayer, ParamWrapper
    from transformers import AutoModelForCausalLM

    from charlie.training.sft import get_peft_config

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), get_peft_config(cfg))
    found: dict[str, set[str]] = {"modules": set(), "params": set()}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and ".layers." in name and not name.endswith("base_layer"):
            path = name.split(".layers.", 1)[1]
            found["params" if isinstance(module, ParamWrapper) else "modules"].add(path)
    return found


# --------------------------------------------------------------------------- resolving auto


def test_auto_resolves_by_model_type_and_falls_back_with_a_warning(caplog):
    assert resolve_targets("auto", {"model_type": "llama"}) == list(LLAMA_TARGETS)
    assert resolve_targets("auto", _shipped_v32()) == list(DEEPSEEK_TARGETS)
    assert not INDEXER & set(resolve_targets("auto", _shipped_v32()))
    with caplog.at_level(logging.WARNING, logger="charlie.train"):
        assert resolve_targets("auto", {"model_type": "gpt2"}) == "all-linear"
        assert resolve_targets("auto", None) == "all-linear"
    assert [r.message.count("'gpt2'") for r in caplog.records][:1] == [1]
    assert resolve_targets("all-linear", _shipped_v32()) == "all-linear"
    assert resolve_targets(("q_proj", "v_proj"), None) == ["q_proj", "v_proj"]


def test_shipped_gpu_configs_name_their_targets():
    for name in ("sft_config.yaml", "sft_config_multigpu.yaml"):
        assert load_train_config(CONFIGS / name).lora_target_modules == "auto"
    llama = load_train_config(CONFIGS / "sft_llama3_8b_qlora_1gpu.yaml")
    assert llama.lora_target_modules == list(LLAMA_TARGETS)


# --------------------------------------------------------------------------- what PEFT wraps


def test_tiny_llama_auto_wraps_attention_and_mlp(tiny, tmp_path):  # noqa: F811
    found = _wrapped(tiny["base"], _config(tiny, tmp_path, lora_target_modules="auto"))
    assert {p.split(".")[-1] for p in found["modules"]} == set(LLAMA_TARGETS)
    assert not found["params"]


def test_tiny_deepseek_v32_auto_wraps_mla_and_not_the_indexer_or_experts(tiny_v32, tmp_path):
    found = _wrapped(tiny_v32["base"], _config(tiny_v32, tmp_path, lora_target_modules="auto"))
    mla = {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"}
    assert found["modules"] == {f"{i}.self_attn.{m}" for i in (0, 1) for m in mla}
    assert not found["params"]  # no routed expert, no router
    assert not any("indexer" in p or "mlp" in p for p in found["modules"])


def test_peft_moves_mlp_targets_onto_the_fused_experts_of_deepseek_v32(tiny_v32):
    """Why auto leaves DeepSeek's MLPs alone (PEFT 0.21.2 on transformers 5): naming gate/up/down
    retargets the fused routed experts (ParamWrapper), drops the dense and shared MLPs, and
    refuses lora_dropout; all-linear also adapts the indexer and the router."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.layer import LoraLayer, ParamWrapper
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_v32["base"])

    def wrapped(**keys):
        model = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, task_type="CAUSAL_LM", **keys))
        return {n.split(".layers.", 1)[1]: isinstance(m, ParamWrapper)
                for n, m in model.named_modules()
                if isinstance(m, LoraLayer) and ".layers." in n and not n.endswith("base_layer")}  # fmt: skip

    mlp = wrapped(target_modules=["gate_proj", "up_proj", "down_proj"], lora_dropout=0.0)
    assert mlp == {"1.mlp.experts": True}  # not 0.mlp.*, not 1.mlp.shared_experts.*
    every = wrapped(target_modules="all-linear", lora_dropout=0.0)
    assert {"1.self_attn.indexer.wq_b", "1.mlp.gate", "1.mlp.experts"} <= set(every)
    assert not any(p.startswith("0.mlp") or "shared_experts" in p for p in every)
    with pytest.raises(ValueError, match="lora_dropout"):
        wrapped(target_modules="all-linear", lora_dropout=0.05)


# --------------------------------------------------------------------------- train, merge, generate


@pytest.mark.slow  # measured 3-12 s each on this CPU
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_tiny_deepseek_v32_smoke_trains_merges_and_generates(tiny_v32, tmp_path, method):
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charlie.training.sft import train

    out = tmp_path / method
    cfg = _config(tiny_v32, out, method=method, lora_target_modules="auto", smoke_test_steps=2,
                  eval_strategy="steps")  # fmt: skip
    metrics = train(cfg, smoke_test=True, merge=True)

    assert metrics["global_step"] == 2
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["eval_loss"])
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == set(DEEPSEEK_TARGETS)
    assert not adapter.get("target_parameters")

    merged = out / "merged"
    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert model.config.model_type == "deepseek_v32"
    assert not any("lora" in n for n, _ in model.named_parameters())
    prompt = tokenizer("AAPL close 101.00 rsi 40 trend up", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=4, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4


# --------------------------------------------------------------------------- the plan


def test_plan_shows_the_whole_embeddings_and_offers_trainable_token_indices():
    shipped = load_train_config(CONFIGS / "sft_config.yaml")
    assert shipped.trainable_embeddings == "new_tokens"  # the shipped DeepSeek configs' choice
    whole = shipped.model_copy(update={"trainable_embeddings": "whole"})
    plan = plan_for(whole, configs_dir=CONFIGS)
    assert plan.embedding_params == 2 * 129_280 * 7_168  # ~1.85B, trained whole
    assert plan.embedding_state == pytest.approx(plan.embedding_params * 16)  # bf16 + AdamW
    table = render_table(plan)
    assert "embed_tokens/lm_head trained whole (modules_to_save, new tokens added): 1.85B" in table
    row = f"{'  embed_tokens/lm_head in the three above':<42}{plan.embedding_state / 2**30:>9.1f}"
    assert row in table
    assert "q_a_proj" in table and "wq_b" not in table
    sentence = verdict(plan)
    assert "(trainable_embeddings: new_tokens)" in sentence and sentence.endswith("GiB per GPU.")
    cheaper = plan_for(shipped, configs_dir=CONFIGS)
    assert cheaper.embedding_params == 129_280 * 7_168  # lm_head alone stays whole
    assert plan.embedding_saving == pytest.approx(plan.embedding_state / 2)
    assert cheaper.total == pytest.approx(plan.total - plan.embedding_saving, rel=0.01)
    assert "embed_tokens in the new tokens' rows only" in render_table(cheaper)
