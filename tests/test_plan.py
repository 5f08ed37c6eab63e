"""charlie.plan: parameter counts and memory arithmetic by hand, the shipped configs, bad input."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from charlie import cli
from charlie import plan as plan_core
from charlie.errors import CharlieError
from charlie.plan import (
    GIB,
    QLORA_BYTES_PER_PARAM,
    DoesNotFit,
    Gpu,
    TrainingSetup,
    check_fits,
    estimate,
    load_gpu,
    load_model_config,
    lora_params,
    meta_model_shape,
    model_shape,
    plan_for,
    render_markdown,
    render_table,
    resolve_model_config,
    verdict,
)
from charlie.stages import plan as plan_stage
from charlie.training.config import load_train_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# A tiny Llama: hidden 16, 4 heads of 4 (q width 16), 2 kv heads (k/v width 8), MLP 40.
TINY = {
    "model_type": "llama",
    "vocab_size": 100,
    "hidden_size": 16,
    "intermediate_size": 40,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": False,
}
# per layer: q 16*16 + k 16*8 + v 16*8 + o 16*16 = 768; MLP 3*16*40 = 1920; 2 norms 2*16 = 32
TINY_LAYER = 256 + 128 + 128 + 256 + 1920 + 32  # 2720
TINY_LINEAR_WEIGHTS = 2 * (768 + 1920)  # 5376: what QLoRA quantises
TINY_TOTAL = 2 * TINY_LAYER + 100 * 16 + 100 * 16 + 16  # layers + embed + lm_head + norm = 8656
# LoRA r=4 on every linear of a layer: r * (in + out)
TINY_LORA_R4 = 2 * (
    4 * (16 + 16)  # q_proj
    + 4 * (16 + 8)  # k_proj
    + 4 * (16 + 8)  # v_proj
    + 4 * (16 + 16)  # o_proj
    + 4 * (16 + 40) * 2  # gate_proj, up_proj
    + 4 * (40 + 16)  # down_proj
)  # 2240
GPU = Gpu("TEST-1GB", 1.0, 0.9)
# Qwen2.5-7B-Instruct's published architecture (its config.json on the hub).
QWEN25_7B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
    "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151645,
    "torch_dtype": "bfloat16",
}  # fmt: skip
QWEN25_7B_PARAMS = 7_615_616_512  # the published count


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch, tmp_path_factory):
    """No test reaches the hub or reads this machine's Hugging Face cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)


def setup(**changes) -> TrainingSetup:
    base = TrainingSetup(
        method="lora",
        max_length=10,
        batch_size=2,
        lora_r=4,
        lora_target_modules="all-linear",
        lora_dropout=0.0,
        train_embeddings=False,
        half_precision=True,
        gradient_checkpointing=False,
        zero_stage=0,
        num_gpus=1,
    )
    return replace(base, **changes)


# --------------------------------------------------------------------------- parameters


def test_tiny_llama_parameters_by_hand():
    shape = model_shape(TINY, "tiny")
    assert TINY_TOTAL == 8656
    assert shape.total_params == TINY_TOTAL
    assert shape.linear_weights == TINY_LINEAR_WEIGHTS
    assert shape.num_layers == 2


def test_tied_embeddings_and_biases_count():
    tied = model_shape({**TINY, "tie_word_embeddings": True, "attention_bias": True})
    # no lm_head; q, k, v, o biases per layer: 16 + 8 + 8 + 16
    assert tied.total_params == TINY_TOTAL - 1600 + 2 * (16 + 8 + 8 + 16)


def test_lora_trainable_counts_by_hand():
    shape = model_shape(TINY)
    assert lora_params(shape, 4, "all-linear") == TINY_LORA_R4 == 2240
    assert lora_params(shape, 4, ["q_proj", "v_proj"]) == 2 * (4 * 32 + 4 * 24)
    assert lora_params(shape, 4, r".*\.(q_proj|v_proj)") == 2 * (4 * 32 + 4 * 24)
    assert lora_params(shape, 8, ["mlp.down_proj"]) == 2 * 8 * (40 + 16)


def test_moe_experts_and_mla_by_hand():
    # 2 layers, the first dense; MoE: 4 experts of 8, 1 shared; MLA ranks q 6, kv 4.
    config = {
        "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2,
        "num_attention_heads": 2, "q_lora_rank": 6, "kv_lora_rank": 4, "qk_nope_head_dim": 2,
        "qk_rope_head_dim": 1, "v_head_dim": 2, "n_routed_experts": 4, "n_shared_experts": 1,
        "num_experts_per_tok": 2, "moe_intermediate_size": 8, "first_k_dense_replace": 1,
        "tie_word_embeddings": False,
    }  # fmt: skip
    attention = (
        8 * 6  # q_a_proj
        + 6  # q_a_layernorm
        + 6 * 2 * 3  # q_b_proj: heads x (nope + rope)
        + 8 * (4 + 1)  # kv_a_proj_with_mqa: kv rank + rope
        + 4  # kv_a_layernorm
        + 4 * 2 * (2 + 2)  # kv_b_proj: heads x (nope + v)
        + 2 * 2 * 8  # o_proj
    )
    dense = attention + 3 * 8 * 12 + 2 * 8
    moe = attention + 4 * 3 * 8 * 8 + 3 * 8 * 8 + 4 * 8 + 2 * 8  # experts, shared, router, norms
    shape = model_shape(config)
    assert shape.total_params == dense + moe + 2 * 10 * 8 + 8
    # all-linear LoRA covers every expert's linears too
    expert_lora = 4 * 3 * 2 * (8 + 8)
    assert lora_params(shape, 2, ["experts.gate_proj", "experts.up_proj", "experts.down_proj"]) == (
        expert_lora
    )


def test_llama_3_1_8b_is_8_03_billion():
    shape = model_shape(load_model_config("meta-llama/Llama-3.1-8B-Instruct", CONFIGS / "models"))
    assert shape.total_params == 8_030_261_248  # the published count
    assert abs(shape.total_params - 8.03e9) / 8.03e9 < 0.01


def test_deepseek_v3_2_exp_is_671_billion_without_mtp():
    config = load_model_config("deepseek-ai/DeepSeek-V3.2-Exp", CONFIGS / "models")
    shape = model_shape(config)
    assert abs(shape.total_params - 671e9) / 671e9 < 0.02
    # The MTP module (num_nextn_predict_layers, ~11.5B in the checkpoint) is not counted: the
    # total is V3's 671.0B plus V3.2's indexers, 61 x (wq_b + wk + k_norm + weights_proj).
    assert config["num_nextn_predict_layers"] == 1
    no_indexer = {k: v for k, v in config.items() if not k.startswith("index_")}
    indexers = 61 * (1536 * 64 * 128 + 7168 * 128 + 2 * 128 + 7168 * 64)
    assert shape.total_params - model_shape(no_indexer).total_params == indexers
    assert 670.5e9 < model_shape(no_indexer).total_params < 671.5e9


def test_counts_match_transformers_on_the_meta_device():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tiny_v32 = {
        "vocab_size": 50, "hidden_size": 32, "intermediate_size": 64, "moe_intermediate_size": 8,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
        "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2,
        "first_k_dense_replace": 1, "q_lora_rank": 12, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 4, "v_head_dim": 8, "n_group": 2, "topk_group": 1,
        "index_n_heads": 2, "index_head_dim": 8, "tie_word_embeddings": False,
    }  # fmt: skip
    cases = [
        (transformers.LlamaConfig, {**TINY, "attention_bias": True, "mlp_bias": True}),
        (transformers.DeepseekV32Config, tiny_v32),
    ]
    for config_class, config in cases:
        kwargs = {k: v for k, v in config.items() if k != "model_type"}
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config_class(**kwargs))
        assert model_shape(config).total_params == sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- bytes


def test_weights_gradients_optimizer_for_full_lora_qlora():
    shape = model_shape(TINY)
    full = estimate(shape, setup(method="full"), GPU)
    assert full.trainable_params == TINY_TOTAL
    assert (full.weights, full.gradients, full.optimizer) == (
        TINY_TOTAL * 2,
        TINY_TOTAL * 2,
        TINY_TOTAL * 12,  # fp32 master + two fp32 moments
    )
    fp32 = estimate(shape, setup(method="full", half_precision=False), GPU)
    assert (fp32.weights, fp32.gradients, fp32.optimizer) == (
        TINY_TOTAL * 4,
        TINY_TOTAL * 4,
        TINY_TOTAL * 8,
    )

    lora = estimate(shape, setup(method="lora"), GPU)
    assert lora.trainable_params == TINY_LORA_R4
    assert lora.weights == TINY_TOTAL * 2 + TINY_LORA_R4 * 2  # frozen base + adapters
    assert (lora.gradients, lora.optimizer) == (TINY_LORA_R4 * 2, TINY_LORA_R4 * 12)

    qlora = estimate(shape, setup(method="qlora"), GPU)
    assert QLORA_BYTES_PER_PARAM == 0.5 + (8 / 64 + 32 / (64 * 256)) / 8  # 0.5159
    assert qlora.weights == pytest.approx(
        TINY_LINEAR_WEIGHTS * QLORA_BYTES_PER_PARAM  # 4-bit NF4, double-quantised
        + (TINY_TOTAL - TINY_LINEAR_WEIGHTS) * 2  # embeddings, lm_head, norms in 16-bit
        + TINY_LORA_R4 * 2
    )
    assert qlora.optimizer == lora.optimizer


def test_added_tokens_train_embeddings_and_lm_head_whole():
    shape = model_shape(TINY)
    plan = estimate(shape, setup(method="lora", train_embeddings=True), GPU)
    assert plan.embedding_params == 100 * 16 * 2
    assert plan.trainable_params == TINY_LORA_R4 + 3200
    assert plan.optimizer == (TINY_LORA_R4 + 3200) * 12


def test_zero_stages_shard_across_gpus():
    shape = model_shape(TINY)
    one = estimate(shape, setup(method="full"), GPU)
    stage = {
        s: estimate(shape, setup(method="full", zero_stage=s, num_gpus=4), GPU) for s in (1, 2, 3)
    }
    assert stage[1].optimizer == one.optimizer / 4 and stage[1].gradients == one.gradients
    assert stage[2].gradients == one.gradients / 4 and stage[2].weights == one.weights
    assert stage[3].weights == one.weights / 4
    # ZeRO-3 gathers the largest unit whole: a layer (2720 params) beats embed_tokens (1600)
    assert stage[3].gathered == TINY_LAYER * 2 and stage[2].gathered == 0
    assert stage[3].activations == one.activations  # activations are never sharded


def test_activations_and_gradient_checkpointing():
    shape = model_shape(TINY)
    tokens = 2 * 10
    # per token per layer: 2 norms x (3h + h) + 2q + 2kv + 4I = 128 + 32 + 16 + 160 = 336
    per_layer = 2 * (3 * 16 + 16) + 2 * 16 + 2 * 8 + 4 * 40
    plain = estimate(shape, setup(method="full", fused_lm_head=False), GPU)
    assert plain.layer_activations == tokens * 2 * per_layer * 2
    assert plain.checkpoints == 0
    assert plain.logits == tokens * 100 * 10  # 16-bit logits, the loss's fp32 copy, its gradient
    # TRL's fused head: a forward and a backward fp32 tile (20 tokens x the 100-entry vocabulary
    # here), and the scored hidden states' fp32 copy and gradient
    fused = estimate(shape, setup(method="full"), GPU)
    assert fused.logits == 2 * tokens * 100 * 4 + tokens * 16 * 8
    ckpt = estimate(shape, setup(method="full", gradient_checkpointing=True), GPU)
    assert ckpt.checkpoints == tokens * 2 * 16 * 2  # one hidden state per layer
    assert ckpt.layer_activations == tokens * per_layer * 2  # one layer's, recomputed
    assert ckpt.activations < plain.activations
    # LoRA with dropout: r per targeted linear, and 1.5 x its input (dropped copy + mask)
    lora = estimate(shape, setup(lora_dropout=0.05, gradient_checkpointing=True), GPU)
    extra = 7 * 4 + 1.5 * (6 * 16 + 40)
    assert lora.layer_activations == tokens * (per_layer + extra) * 2


def test_checkpointing_shrinks_8b_activations_several_fold():
    shape = model_shape(load_model_config("meta-llama/Llama-3.1-8B-Instruct", CONFIGS / "models"))
    on = estimate(
        shape,
        setup(method="qlora", max_length=8192, batch_size=1, gradient_checkpointing=True),
        GPU,
    )
    off = replace(on.setup, gradient_checkpointing=False)
    off_plan = estimate(shape, off, GPU)
    layers_on = on.checkpoints + on.layer_activations
    assert off_plan.layer_activations > 10 * layers_on
    # the fused head never holds 8192 x 128256 logits (10.5 GB at 10 bytes): two 4096 x 32768
    # fp32 tiles and the hidden states' fp32 copy and gradient
    assert on.logits == off_plan.logits == 2 * 4096 * 32768 * 4 + 8192 * 4096 * 8
    unfused = estimate(shape, replace(on.setup, fused_lm_head=False), GPU)
    assert unfused.logits == 8192 * 128256 * 10
    assert unfused.total - on.total == pytest.approx(8192 * 128256 * 10 - on.logits)


def test_a_config_that_turns_the_fused_head_off_is_planned_with_the_whole_logits():
    cfg = load_train_config(CONFIGS / "sft_llama3_8b_qlora_1gpu.yaml")
    assert cfg.fused_lm_head == "auto"
    fused = plan_for(cfg, configs_dir=CONFIGS)
    whole = plan_for(cfg.model_copy(update={"fused_lm_head": False}), configs_dir=CONFIGS)
    assert fused.setup.fused_lm_head and not whole.setup.fused_lm_head
    tokens = fused.setup.batch_size * fused.setup.max_length
    assert whole.logits == tokens * 128256 * 10 > 7 * fused.logits
    assert "logits (fused LM head: tiles)" in render_table(fused)
    assert "logits (fused" not in render_table(whole)


# --------------------------------------------------------------------------- shipped configs


def test_sft_config_deepseek_on_one_h100_does_not_fit():
    plan = plan_for(load_train_config(CONFIGS / "sft_config.yaml"), configs_dir=CONFIGS)
    assert not plan.fits
    assert plan.capacity == pytest.approx(72 * GIB)
    sentence = verdict(plan)
    assert sentence.startswith("DeepSeek-V3.2-Exp with qlora needs about ")
    assert f"about {plan.total / GIB:.0f} GiB per GPU" in sentence
    assert f"weights {plan.weights / GIB:.0f}" in sentence
    assert "one H100-80GB has 72 GiB usable: it does not fit" in sentence
    assert sentence.endswith(".") and "\n" not in sentence
    with pytest.raises(DoesNotFit) as refused:
        check_fits(load_train_config(CONFIGS / "sft_config.yaml"), configs_dir=CONFIGS)
    assert str(refused.value) == sentence and refused.value.exit_code == 1


def test_llama_8b_qlora_profile_fits_its_gpu(tmp_path):
    cfg = load_train_config(CONFIGS / "sft_llama3_8b_qlora_1gpu.yaml")
    cfg = cfg.model_copy(update={"dataset_dir": tmp_path})  # no tokenize report: no mean
    plan = check_fits(cfg, configs_dir=CONFIGS)
    assert plan.fits and plan.gpu.name == "L40S-48GB"
    assert plan.setup.method == "qlora" and plan.setup.gradient_checkpointing
    assert verdict(plan).endswith("it fits.")
    assert "fits" in render_table(plan)
    # packed 8k rows on flash attention, 2 accumulated: 16,384 tokens an optimizer step
    s = plan.setup
    assert (s.packing, s.attention, s.attention_kind) == (True, "auto", "flash")
    assert plan.attention == 0 and plan.step_tokens == 8192 * 2 == 16_384
    assert (
        "packing (padding-free): a micro-batch is 1 row of whole examples filled to at most "
        "8,192 tokens; an optimizer step (x 2 accumulation x 1 GPU) trains on up to 16,384 "
        "tokens\n"
    ) in render_table(plan)
    # the config's comment: checkpointing is on because memory needs it
    off = estimate(model_shape(load_model_config(cfg.base_model, CONFIGS / "models")),
                   replace(s, gradient_checkpointing=False), plan.gpu)  # fmt: skip
    assert not off.fits and off.total > 2 * plan.capacity


def test_multigpu_config_shards_by_the_zero3_factor_and_fits(monkeypatch):
    monkeypatch.chdir(REPO)  # the config names configs/deepspeed/zero3.json relative to the repo
    cfg = load_train_config(CONFIGS / "sft_config_multigpu.yaml")
    many = plan_for(cfg, configs_dir=CONFIGS)
    one = plan_for(cfg, num_gpus=1, configs_dir=CONFIGS)
    assert (many.setup.zero_stage, many.setup.num_gpus) == (3, 32)
    for part in ("weights", "gradients", "optimizer"):
        assert getattr(many, part) == pytest.approx(getattr(one, part) / 32)
    assert many.gathered == one.gathered > 0
    assert many.activations == one.activations
    assert many.total < one.total
    assert many.fits and not one.fits
    assert not plan_for(cfg, num_gpus=4, configs_dir=CONFIGS).fits  # the seed's 4 GPUs: refused


def test_attention_masks_and_scores_by_hand():
    """flash: none; sdpa: a bool mask per padded or packed row plus a 16-bit bias per layer
    kept; eager: a 16-bit mask plus 6 bytes per head and query-key pair per layer kept."""
    shape = model_shape(TINY)
    assert shape.attention_heads == 4
    pairs = 2 * 10 * 10  # batch 2 x max_length 10 squared
    cases = {  # (attention, batch, packing, checkpointing): bytes
        ("flash_attention_2", 2, False, False): 0,
        ("kernels-community/flash-attn2", 2, True, False): 0,
        ("sdpa", 1, False, False): 0,  # no padding, no mask: torch's own flash kernel
        ("sdpa", 2, False, False): pairs * (1 + 2 * 2),  # 2 layers kept
        ("sdpa", 2, False, True): pairs * (1 + 1 * 2),  # one layer recomputed at a time
        ("sdpa", 1, True, True): 100 * (1 + 2),  # a packed row: transformers' block mask
        ("eager", 2, False, False): pairs * (2 + 2 * 4 * 6),  # 10,000
        ("eager", 2, False, True): pairs * (2 + 1 * 4 * 6),  # 5,200
        ("auto", 2, True, False): 0,  # auto packs on flash attention only
        ("auto", 2, False, False): pairs * (1 + 2 * 2),  # unpacked: planned as sdpa
    }
    flash = estimate(shape, setup(attention="flash_attention_2"), GPU)
    for (attention, batch, packing, ckpt), expected in cases.items():
        plan = estimate(shape, setup(attention=attention, batch_size=batch, packing=packing,
                                     gradient_checkpointing=ckpt), GPU)  # fmt: skip
        assert plan.attention == expected, (attention, batch, packing, ckpt)
        if (batch, ckpt) == (2, False):
            assert plan.total - flash.total == expected
            assert plan.activations - flash.activations == expected
    assert estimate(shape, setup(attention="eager"), GPU).attention == 10_000
    row = "  attention masks and scores (eager)"
    assert f"{row:<42}{10_000 / GIB:>9.1f}" in render_table(
        estimate(shape, setup(attention="eager"), GPU)
    )


def test_tokens_per_optimizer_step_and_what_packing_changes():
    shape = model_shape(TINY, "tiny")
    base = setup(batch_size=2, accumulation=3, num_gpus=2, mean_example_tokens=5.0)
    unpacked = estimate(shape, base, GPU)
    packed = estimate(shape, replace(base, packing=True), GPU)
    # 2 rows or examples x max_length 10 x 3 accumulated x 2 GPUs
    assert unpacked.step_tokens == packed.step_tokens == 120
    assert unpacked.step_examples == 12
    assert packed.tokens == unpacked.tokens == 20  # the worst micro-batch either way
    assert (
        "no packing: a micro-batch is 2 examples padded to the longest; an optimizer step (x 3 "
        "accumulation x 2 GPUs) trains on 12 examples, up to 120 tokens (~60 tokens at the "
        "tokenize report's mean of 5; packed, each row of 10 tokens would hold ~2 examples)"
    ) in render_table(unpacked)
    assert (
        "packing (padding-free): a micro-batch is 2 rows of whole examples filled to at most 10 "
        "tokens; an optimizer step (x 3 accumulation x 2 GPUs) trains on up to 120 tokens, ~24 "
        "examples of the tokenize report's mean 5 tokens (~2 per row)"
    ) in render_table(packed)
    plain = estimate(shape, setup(batch_size=1), GPU)
    assert (
        "no packing: a micro-batch is 1 example; an optimizer step (x 1 accumulation x 1 GPU) "
        "trains on 1 example, up to 10 tokens; packing would fill each row with whole examples "
        "up to 10 tokens"
    ) in render_table(plain)
    metrics = plan_core.plan_metrics(packed)
    assert (metrics["tokens_per_optimizer_step"], metrics["packing"]) == (120, 1)
    assert metrics["attention_gib_per_gpu"] == 0


def test_configs_packing_attention_and_report_reach_the_plan(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY))
    data = tmp_path / "tokenized"
    data.mkdir()
    (data / "tokenize_report.json").write_text(json.dumps(
        {"max_length": 20, "splits": {"train": {"tokens": {"mean": 6.5}}}}))  # fmt: skip
    config = tmp_path / "sft.yaml"

    def plan(extra: str):
        config.write_text(f"base_model: {model}\ndataset_dir: {data}\noutput_dir: out\n"
                          f"max_length: 20\ngpu_type: H100-80GB\n{extra}")  # fmt: skip
        return plan_for(load_train_config(config), configs_dir=CONFIGS)

    packed = plan("packing: true\ngradient_accumulation_steps: 4\nper_device_train_batch_size: 1\n")
    s = packed.setup
    assert (s.packing, s.attention_kind, s.accumulation, s.mean_example_tokens) == (
        True, "flash", 4, 6.5,
    )  # fmt: skip
    assert packed.step_tokens == 80 and "(~3 per row)" in render_table(packed)
    assert plan("padding_free: true\n").setup.packing  # padding-free without packing counts too
    assert not plan("packing: false\n").setup.packing
    eager = plan("attn_implementation: eager\nper_device_train_batch_size: 1\n")
    # 20 x 20 pairs: the mask, and one recomputed layer's scores (checkpointing: TRL's default)
    assert eager.setup.attention_kind == "eager" and eager.attention == 400 * (2 + 4 * 6)
    # charlie train would refuse these: so does the plan, in the same sentence
    with pytest.raises(CharlieError, match=r"^packing \(padding-free batches\) needs a flash-"
                       r"attention kernel, and sdpa is none"):  # fmt: skip
        plan("packing: true\nattn_implementation: sdpa\n")
    with pytest.raises(CharlieError, match=r"^packing_strategy wrapped cuts examples"):
        plan("packing: true\npacking_strategy: wrapped\n")


# --------------------------------------------------------------------------- bad input


def test_unknown_gpu_type_lists_the_known_ones():
    with pytest.raises(CharlieError) as error:
        load_gpu("B300-288GB", CONFIGS / "gpus.yaml")
    message = str(error.value)
    assert message.startswith("unknown gpu_type 'B300-288GB'; known types: H100-80GB, ")
    assert "T4-16GB." in message and "\n" not in message


def test_missing_model_config_names_every_place_tried_in_one_sentence(tmp_path):
    with pytest.raises(CharlieError) as error:
        load_model_config("acme/NoSuchModel-7B", tmp_path / "models")
    message = str(error.value)
    assert message.startswith(
        "no config.json for acme/NoSuchModel-7B: tried a local folder (there is no "
        "acme/NoSuchModel-7B), the Hugging Face cache "
    )
    assert str(plan_core.hf_cache_dir()) in message
    assert "the hub (HF_HUB_OFFLINE is set) and the shipped copies in " in message
    assert str(tmp_path / "models" / "acme__NoSuchModel-7B") in message
    assert "`hf download acme/NoSuchModel-7B config.json`" in message
    assert message.endswith(".") and "\n" not in message
    with pytest.raises(CharlieError, match=r"is not a hub id; point base_model at a model folder"):
        load_model_config("s3://bucket/models/base", tmp_path / "models")


def test_a_local_model_directory_is_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    assert model_shape(load_model_config(str(tmp_path), tmp_path / "nowhere")).total_params == (
        TINY_TOTAL
    )


def test_lm_head_target_and_unmatched_targets_are_refused():
    shape = model_shape(TINY)
    with pytest.raises(CharlieError, match="PEFT refuses"):
        lora_params(shape, 4, ["q_proj", "lm_head"])
    with pytest.raises(CharlieError, match="matches no linear layer"):
        lora_params(shape, 4, ["query_key_value"])


def test_unknown_moe_layout_and_unknown_model_type_are_refused():
    no_type = {k: v for k, v in TINY.items() if k != "model_type"}
    with pytest.raises(CharlieError, match="has no model_type to build it by"):
        model_shape({**no_type, "num_local_experts": 8}, "mixtral")
    pytest.importorskip("transformers")
    with pytest.raises(CharlieError) as error:
        model_shape({**TINY, "model_type": "acme_lm"}, "acme")
    message = str(error.value)
    assert message.startswith("acme has model_type 'acme_lm', which transformers ")
    assert message.endswith(".") and "\n" not in message


# --------------------------------------------------------------------------- the stage


def _main(monkeypatch, argv):
    monkeypatch.chdir(REPO)
    return cli.main(["plan", *argv])


def test_stage_exit_codes_and_output(monkeypatch, capsys):
    assert _main(monkeypatch, ["--config", "configs/sft_llama3_8b_qlora_1gpu.yaml"]) == 0
    out = capsys.readouterr().out
    assert (
        "Llama-3.1-8B-Instruct, qlora (r=16, q_proj+k_proj+v_proj+o_proj+gate_proj+up_proj+"
        "down_proj), 1 x L40S-48GB"
    ) in out
    assert out.rstrip().endswith("it fits.")

    assert _main(monkeypatch, ["--config", "configs/sft_config.yaml"]) == 1
    captured = capsys.readouterr()
    assert "DeepSeek-V3.2-Exp" in captured.out and "usable (80 GiB x 0.9)" in captured.out
    assert "it does not fit" in captured.err and "it does not fit" not in captured.out


def test_stage_overrides_gpus_and_gpu_type(monkeypatch, capsys):
    argv = ["--config", "configs/sft_llama3_8b_qlora_1gpu.yaml", "--gpu-type", "T4-16GB"]
    assert _main(monkeypatch, argv) == 1
    assert "one T4-16GB has 14 GiB usable" in capsys.readouterr().err
    argv = ["--config", "configs/sft_config_multigpu.yaml", "--gpus", "2"]
    assert _main(monkeypatch, argv) == 1
    assert "2 x H200-141GB, ZeRO-3" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--gpu-type", "B300-288GB"], "unknown gpu_type 'B300-288GB'; known types: H100-80GB"),
        (["--gpus", "0"], "--gpus: 'num_gpus' = 0 is not allowed"),
    ],
)
def test_stage_bad_input_is_one_sentence_and_exit_2(monkeypatch, capsys, argv, expected):
    config = ["--config", "configs/sft_llama3_8b_qlora_1gpu.yaml"]
    assert _main(monkeypatch, config + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("charlie plan: error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_stage_missing_model_config(monkeypatch, tmp_path, capsys):
    config = tmp_path / "sft.yaml"
    config.write_text("base_model: acme/NoSuchModel-7B\noutput_dir: out\n")
    assert _main(monkeypatch, ["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "no config.json for acme/NoSuchModel-7B: tried a local folder" in err
    assert "the hub (HF_HUB_OFFLINE is set)" in err
    assert "put a copy of it in configs/models/acme__NoSuchModel-7B/." in err
    assert err.count("\n") == 1


def test_run_can_be_called_directly(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    parser = argparse.ArgumentParser()
    plan_stage.add_arguments(parser)
    args = parser.parse_args(["--config", "configs/sft_llama3_8b_qlora_1gpu.yaml"])
    assert plan_stage.run(args) == 0
    assert "GiB/GPU" in capsys.readouterr().out


# --------------------------------------------------------------------------- max_length: auto


def test_auto_plans_the_tokenize_reports_length_else_the_models_context(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({**TINY, "max_position_embeddings": 1024}))
    data = tmp_path / "tokenized"
    config = tmp_path / "sft.yaml"
    config.write_text(f"base_model: {model}\ndataset_dir: {data}\noutput_dir: out\n"
                      "max_length: auto\ngpu_type: H100-80GB\nper_device_train_batch_size: 2\n")  # fmt: skip
    before = plan_for(load_train_config(config), configs_dir=CONFIGS)
    assert before.setup.max_length == 1024 and before.tokens == 2048
    assert "max_length 1024, auto: the base model's context; no tokenize report yet)" in (
        render_table(before)
    )
    data.mkdir()
    (data / "tokenize_report.json").write_text(json.dumps({"max_length": 957}))
    after = plan_for(load_train_config(config), configs_dir=CONFIGS)
    assert after.setup.max_length == 957 and after.tokens == 1914
    assert f"max_length 957, auto: from {data / 'tokenize_report.json'})" in render_table(after)
    assert after.activations < before.activations


def test_auto_with_neither_a_report_nor_a_context_is_one_sentence(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY))  # no max_position_embeddings
    config = tmp_path / "sft.yaml"
    config.write_text(f"base_model: {model}\ndataset_dir: {tmp_path / 'none'}\noutput_dir: out\n"
                      "max_length: auto\n")  # fmt: skip
    with pytest.raises(CharlieError, match=r"run `charlie tokenize` first or set max_length\.$"):
        plan_for(load_train_config(config), configs_dir=CONFIGS)


# --------------------------------------------------------------------------- meta-built models


def _transformers_count(config: dict) -> int:
    """transformers' own parameter count of the architecture, built on the meta device."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    hf_config = transformers.CONFIG_MAPPING[config["model_type"]].from_dict(kwargs)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    return model.num_parameters()


@pytest.mark.parametrize(
    "model", ["meta-llama/Llama-3.1-8B-Instruct", "deepseek-ai/DeepSeek-V3.2-Exp"]
)
def test_meta_path_agrees_with_the_arithmetic_on_the_shipped_configs(model):
    pytest.importorskip("transformers")
    config = load_model_config(model, CONFIGS / "models")
    exact, meta = model_shape(config, model), meta_model_shape(config, model)
    assert exact.counted == "exact" and meta.counted == "meta"
    # to the parameter (DeepSeek-V3.2-Exp's 671B builds on meta in well under a second)
    assert meta.total_params == exact.total_params == _transformers_count(config)
    assert (meta.embed_params, meta.lm_head_params, meta.final_norm_params) == (
        exact.embed_params, exact.lm_head_params, exact.final_norm_params,
    )  # fmt: skip
    assert [(k.count, k.first_index, k.params) for k in meta.kinds] == [
        (k.count, k.first_index, k.params) for k in exact.kinds
    ]
    # the activation approximation is above the documented formula where the formula applies
    for m, e in zip(meta.kinds, exact.kinds, strict=True):
        assert e.activation_elements <= m.activation_elements <= 1.5 * e.activation_elements


def test_transformers_fused_experts_are_counted_as_copies_but_not_quantised_or_targeted():
    pytest.importorskip("transformers")
    config = load_model_config("deepseek-ai/DeepSeek-V3.2-Exp", CONFIGS / "models")
    meta = meta_model_shape(config)
    moe = next(k for k in meta.kinds if k.name == "moe")
    fused = {lin.path: lin for lin in moe.linears if lin.fused}
    gate_up, down = fused["mlp.experts.gate_up_proj"], fused["mlp.experts.down_proj"]
    assert (gate_up.copies, gate_up.active, gate_up.in_features, gate_up.out_features) == (
        256, 8, 7168, 2 * 2048,
    )  # fmt: skip
    assert (down.copies, down.in_features, down.out_features) == (256, 2048, 7168)
    assert moe.quantisable_weights == moe.params - moe.other_params - gate_up.weights - down.weights
    names = {lin.name for lin in moe.linears if not lin.fused}
    assert lora_params(meta, 1, "all-linear") == lora_params(meta, 1, sorted(names))


@pytest.mark.parametrize(
    ("model_type", "extra"),
    [
        ("qwen2", {}),
        ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}),
        ("gemma", {"head_dim": 4}),
        ("phi3", {"vocab_size": 32064, "pad_token_id": 0}),
        ("gpt_neox", {}),
        ("mistral", {}),
        ("deepseek_v3", {}),
    ],
)
def test_other_architectures_are_counted_as_transformers_counts_them(model_type, extra):
    config = {**TINY, "model_type": model_type, **extra}
    if model_type == "deepseek_v3":
        config.update(q_lora_rank=12, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
                      v_head_dim=8, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
                      moe_intermediate_size=8, first_k_dense_replace=1, n_group=2, topk_group=1,
                      num_key_value_heads=4)  # fmt: skip
    shape = model_shape(config, model_type)
    assert shape.total_params == _transformers_count(config)
    exact = model_type in ("mistral", "deepseek_v3")
    assert shape.counted == ("exact" if exact else "meta")
    plan = estimate(shape, setup(method="qlora"), GPU)  # LoRA targets, QLoRA bytes, ZeRO: as usual
    assert plan.trainable_params > 0 and plan.total > 0
    if model_type == "mixtral":
        (kind,) = shape.kinds
        experts = [lin for lin in kind.linears if lin.copies == 4]
        assert experts and all(lin.fused and lin.active == 2 for lin in experts)


def test_qwen2_5_7b_plans_with_transformers_count(tmp_path, capsys, monkeypatch):
    model = tmp_path / "Qwen2.5-7B-Instruct"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(QWEN25_7B))
    shape = model_shape(load_model_config(str(model)), "Qwen2.5-7B-Instruct")
    assert shape.counted == "meta"
    assert shape.total_params == _transformers_count(QWEN25_7B) == QWEN25_7B_PARAMS
    (kind,) = shape.kinds
    biased = {lin.name for lin in kind.linears if lin.bias}
    assert biased == {"q_proj", "k_proj", "v_proj"}  # Qwen2's attention biases, not o_proj's
    assert shape.lm_head_params == shape.embed_params == 152064 * 3584  # not tied

    config = tmp_path / "sft.yaml"
    config.write_text(f"base_model: {model}\noutput_dir: out\nmethod: qlora\nlora_r: 16\n"
                      "max_length: 2048\nper_device_train_batch_size: 1\ngpu_type: L40S-48GB\n")  # fmt: skip
    plan = check_fits(load_train_config(config), configs_dir=CONFIGS)
    assert plan.total_params == QWEN25_7B_PARAMS
    assert "parameters 7.62B (counted on the meta device by transformers)" in render_table(plan)
    assert f"config.json: local folder, {model / 'config.json'}" in render_table(plan)

    # the same model by hub id, through --base-model, from the shipped-copies folder
    shipped = tmp_path / "configs"
    (shipped / "models" / "Qwen__Qwen2.5-7B-Instruct").mkdir(parents=True)
    (shipped / "gpus.yaml").write_text((CONFIGS / "gpus.yaml").read_text())
    (shipped / "models" / "Qwen__Qwen2.5-7B-Instruct" / "config.json").write_text(
        json.dumps(QWEN25_7B)
    )
    monkeypatch.chdir(tmp_path)
    argv = ["plan", "--config", str(config), "--base-model", "Qwen/Qwen2.5-7B-Instruct"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("Qwen2.5-7B-Instruct, qlora (r=16, all-linear), 1 x L40S-48GB")
    assert "config.json: shipped copy, configs/models/Qwen__Qwen2.5-7B-Instruct/" in out


def test_plan_core_imports_without_torch_or_transformers():
    code = (
        "import sys, charlie.plan, charlie.stages.plan; "
        "print(sorted(m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------- where config.json is


def _fake_hf_cache(hub: Path, repo: str, config: dict, sha: str = "a" * 40) -> Path:
    """The hub cache layout: models--Org--Name/{refs/main, snapshots/<sha>/config.json}."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / sha).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(sha)
    path = folder / "snapshots" / sha / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_the_hugging_face_cache_is_read_with_the_hub_offline(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))  # read when planning, not when imported
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _fake_hf_cache(home / "hub", "Qwen/Qwen2.5-7B-Instruct", QWEN25_7B)
    found = resolve_model_config("Qwen/Qwen2.5-7B-Instruct", tmp_path / "no-models")
    assert (found.source, found.path, found.name) == (
        "Hugging Face cache", path, "Qwen2.5-7B-Instruct",
    )  # fmt: skip
    assert found.config["hidden_size"] == 3584
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))  # HF_HUB_CACHE wins
    with pytest.raises(CharlieError, match=str(tmp_path / "elsewhere")):
        resolve_model_config("Qwen/Qwen2.5-7B-Instruct", tmp_path / "no-models")


def test_fall_back_order_folder_cache_hub_shipped(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    repo = "acme/Base-1B"
    models = tmp_path / "models"
    (models / "acme__Base-1B").mkdir(parents=True)
    (models / "acme__Base-1B" / "config.json").write_text(json.dumps({**TINY, "vocab_size": 4}))
    hub_calls = []

    def hub(model_id, revision, cache, answer=(None, "")):
        hub_calls.append(model_id)
        return answer

    monkeypatch.setattr(plan_core, "_from_hub", hub)
    monkeypatch.delenv("HF_HUB_OFFLINE")

    # 4. only the shipped copy: the hub was asked (unreachable) and it fell through quietly
    assert resolve_model_config(repo, models).source == "shipped copy"
    assert hub_calls == [repo]
    # 3. the hub answers
    downloaded = tmp_path / "downloaded.json"
    downloaded.write_text(json.dumps({**TINY, "vocab_size": 3}))
    monkeypatch.setattr(plan_core, "_from_hub", lambda *a: (downloaded, ""))
    assert resolve_model_config(repo, models).config["vocab_size"] == 3
    # 2. the cache beats the hub (which is not asked)
    monkeypatch.setattr(plan_core, "_from_hub", lambda *a: pytest.fail("asked the hub"))
    _fake_hf_cache(plan_core.hf_cache_dir(), repo, {**TINY, "vocab_size": 2})
    assert resolve_model_config(repo, models).config["vocab_size"] == 2
    # 1. a local folder beats everything
    local = tmp_path / "acme" / "Base-1B"
    local.mkdir(parents=True)
    (local / "config.json").write_text(json.dumps({**TINY, "vocab_size": 1}))
    monkeypatch.chdir(tmp_path)
    assert resolve_model_config(repo, models).config["vocab_size"] == 1


def test_gated_or_missing_repo_is_one_sentence_unless_a_copy_is_shipped(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    gated = "acme/Gated-1B is gated on the Hugging Face hub: set HF_TOKEN to a token of an account"
    monkeypatch.setattr(plan_core, "_from_hub", lambda *a: (None, gated + " that has accepted"))
    with pytest.raises(CharlieError) as error:
        resolve_model_config("acme/Gated-1B", tmp_path / "models")
    message = str(error.value)
    assert message.startswith(gated)
    assert message.endswith(
        f"or put a copy of its config.json in {tmp_path}/models/acme__Gated-1B/."
    )
    assert "\n" not in message
    (tmp_path / "models" / "acme__Gated-1B").mkdir(parents=True)
    (tmp_path / "models" / "acme__Gated-1B" / "config.json").write_text(json.dumps(TINY))
    assert resolve_model_config("acme/Gated-1B", tmp_path / "models").source == "shipped copy"


def test_hub_problems_become_sentences(monkeypatch, tmp_path):
    hf = pytest.importorskip("huggingface_hub")
    from huggingface_hub import errors

    response = type("R", (), {"status_code": 401, "headers": {}, "request": None})()

    def refuse(error):
        def metadata(*args, **kwargs):
            raise error

        return metadata

    cases = [
        (errors.GatedRepoError("gated", response=response), "is gated on the Hugging Face hub"),
        (errors.RepositoryNotFoundError("nope", response=response), "is not a model on the"),
        (ConnectionError("no network"), ""),
    ]
    for error, expected in cases:
        monkeypatch.setattr(hf, "get_hf_file_metadata", refuse(error))
        path, problem = plan_core._from_hub("acme/X", None, tmp_path)
        assert path is None and expected in problem and (problem == "") == (expected == "")


def test_a_base_model_json_folder_is_named_by_its_ref(tmp_path):
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    ref = {"ref": "s3://models/acme/base-1b", "path": str(folder), "revision": "v1"}
    (folder / "base_model.json").write_text(json.dumps(ref))
    found = resolve_model_config(str(folder), tmp_path / "models")
    assert (found.name, found.source) == ("s3://models/acme/base-1b", "local folder")
    # a reference folder without a config.json of its own reads the weights folder's
    pointer = tmp_path / "pointer"
    pointer.mkdir()
    (pointer / "base_model.json").write_text(json.dumps({**ref, "ref": "acme/Base-1B"}))
    found = resolve_model_config(str(pointer), tmp_path / "models")
    assert (found.name, found.path) == ("acme/Base-1B", folder / "config.json")
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"base_model: {folder}\noutput_dir: out\ngpu_type: H100-80GB\n")
    plan = plan_for(load_train_config(cfg), configs_dir=CONFIGS)
    assert render_table(plan).startswith("s3://models/acme/base-1b, lora")
    assert verdict(plan).startswith("s3://models/acme/base-1b with lora needs about")


# --------------------------------------------------------------------------- nodes, --out, Kubeflow


def test_nodes_multiply_the_gpus_zero_shards_across(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_train_config(CONFIGS / "sft_config_multigpu.yaml")
    flat = plan_for(cfg, num_gpus=32, configs_dir=CONFIGS)
    nodes = plan_for(cfg, num_gpus=8, num_nodes=4, configs_dir=CONFIGS)
    assert nodes.setup.world_size == 32 and nodes.total == flat.total
    assert "4 nodes × 8 GPUs (32 x H200-141GB), ZeRO-3" in render_table(nodes)
    assert "each of 32 H200-141GB (4 nodes × 8 GPUs) has 127 GiB usable: it fits." in verdict(nodes)
    short = plan_for(cfg, num_gpus=2, num_nodes=2, configs_dir=CONFIGS)
    assert not short.fits
    need = short.min_gpus_zero3()
    assert f"use at least {2 * -(-need // 2)} H200-141GB ({-(-need // 2)} nodes × 2 GPUs)" in (
        verdict(short)
    )


def _executor_input(tmp_path: Path) -> str:
    def artifact(name, kind):
        return {"artifacts": [{"name": name, "uri": str(tmp_path / "kfp" / name),
                               "type": {"schemaTitle": kind}, "metadata": {}}]}  # fmt: skip

    return json.dumps({"outputs": {
        "artifacts": {"plan": artifact("plan", "system.Markdown"),
                      "metrics": artifact("metrics", "system.Metrics")},
        "outputFile": str(tmp_path / "kfp" / "executor_output.json"),
    }})  # fmt: skip


def test_stage_nodes_out_markdown_and_kubeflow_outputs(monkeypatch, tmp_path, capsys):
    out = tmp_path / "plan.md"
    argv = ["--config", "configs/sft_config_multigpu.yaml", "--nodes", "4", "--gpus", "8",
            "--out", str(out), "--kfp-executor-input", _executor_input(tmp_path)]  # fmt: skip
    assert _main(monkeypatch, argv) == 0
    printed = capsys.readouterr().out
    assert "4 nodes × 8 GPUs (32 x H200-141GB)" in printed
    markdown = out.read_text()
    assert markdown.startswith("# Memory plan\n") and "| total |" in markdown
    assert markdown.rstrip().endswith("it fits.**")
    assert (tmp_path / "kfp" / "plan").read_text() == markdown
    metrics = json.loads((tmp_path / "kfp" / "metrics").read_text())
    assert metrics["fits"] == 1 and metrics["gpus"] == 32 and metrics["nodes"] == 4
    assert metrics["params"] == 671_877_929_216
    assert 0 < metrics["total_gib_per_gpu"] <= metrics["capacity_gib_per_gpu"]
    written = json.loads((tmp_path / "kfp" / "executor_output.json").read_text())
    assert set(written["artifacts"]) == {"plan", "metrics"}


def test_stage_that_does_not_fit_still_fills_kubeflow_outputs_and_exits_1(
    monkeypatch, tmp_path, capsys
):
    argv = ["--config", "configs/sft_config_multigpu.yaml", "--nodes", "2", "--gpus", "2",
            "--kfp-executor-input", _executor_input(tmp_path)]  # fmt: skip
    assert _main(monkeypatch, argv) == 1
    err = capsys.readouterr().err
    assert "each of 4 H200-141GB (2 nodes × 2 GPUs) has 127 GiB usable: it does not fit" in err
    assert json.loads((tmp_path / "kfp" / "metrics").read_text())["fits"] == 0
    assert "it does not fit" in (tmp_path / "kfp" / "plan").read_text()


def test_stage_cpu_config_has_no_gpu_to_check(monkeypatch, tmp_path, capsys):
    out = tmp_path / "plan.md"
    assert (
        _main(monkeypatch, ["--config", "configs/sft_tiny_lora_cpu.yaml", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert (
        printed
        == "models/tiny trains on the CPU (gpu_type CPU): there is no GPU memory to check.\n"
    )
    assert "no GPU memory to check" in out.read_text()


def test_stage_rejects_fewer_than_one_node(monkeypatch, capsys):
    argv = ["--config", "configs/sft_llama3_8b_qlora_1gpu.yaml", "--nodes", "0"]
    assert _main(monkeypatch, argv) == 2
    assert capsys.readouterr().err == "charlie plan: error: --nodes must be at least 1, not 0.\n"


def test_markdown_has_the_table_and_verdict():
    plan = estimate(model_shape(TINY, "tiny"), setup(), GPU)
    markdown = render_markdown(plan)
    assert "| weights |" in markdown and "| usable (1 GiB x 0.9) |" in markdown
    assert f"**{verdict(plan)}**" in markdown


def test_stage_as_the_kubeflow_plan_component_calls_it(monkeypatch, tmp_path, capsys):
    # fetch-model's reference folder (config.json + base_model.json), tokenize's report
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN25_7B))
    (folder / "base_model.json").write_text(json.dumps(
        {"ref": "Qwen/Qwen2.5-7B-Instruct", "path": str(tmp_path / "weights"), "revision": "abc",
         "source": "hub"}))  # fmt: skip
    tokenized = tmp_path / "tokenized"
    tokenized.mkdir()
    (tokenized / "tokenize_report.json").write_text(json.dumps({"max_length": 1024}))
    spec = json.loads(_executor_input(tmp_path))
    outputs = spec["outputs"]["artifacts"]
    outputs["summary"] = outputs.pop("plan")
    report = {"name": "report", "uri": str(tmp_path / "kfp" / "report"),
              "type": {"schemaTitle": "system.Artifact"}, "metadata": {}}  # fmt: skip
    outputs["report"] = {"artifacts": [report]}
    config = tmp_path / "sft.yaml"
    config.write_text("base_model: models/tiny\noutput_dir: out\nmethod: qlora\nmax_length: auto\n"
                      "gpu_type: L40S-48GB\nper_device_train_batch_size: 1\n")  # fmt: skip
    argv = ["--config", str(config), "--base-model", str(folder), "--dataset-dir", str(tokenized),
            "--gpus", "1", "--nodes", "1", "--out", f"{tmp_path / 'kfp' / 'report'}/plan.md",
            "--kfp-executor-input", json.dumps(spec)]  # fmt: skip
    assert _main(monkeypatch, argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("Qwen/Qwen2.5-7B-Instruct, qlora")
    assert "max_length 1024, auto: from " in out
    markdown = (tmp_path / "kfp" / "report" / "plan.md").read_text()
    assert (tmp_path / "kfp" / "plan").read_text() == markdown  # the summary output's URI
    metrics = json.loads((tmp_path / "kfp" / "metrics").read_text())
    assert metrics["params"] == QWEN25_7B_PARAMS and metrics["fits"] == 1
