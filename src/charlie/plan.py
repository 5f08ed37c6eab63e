"""Will a fine-tuning run fit? Per-GPU memory, estimated from the base model's config.json.

``charlie plan`` prints the estimate; ``charlie train`` calls :func:`check_fits` to refuse a run
that cannot fit before it loads anything. The core is arithmetic on a config dict
(:func:`model_shape`, :func:`estimate`, :func:`render_table`, :func:`verdict`); only
:func:`resolve_model_config` (a local folder, one with a ``base_model.json``, the Hugging Face
cache, the hub, the copies shipped in configs/models/), :func:`load_gpu` and :func:`plan_for`
read files, and only :func:`meta_model_shape` imports torch and transformers (when called).

Parameters (exact, from config.json)
    Counted by arithmetic for ``model_type`` llama, mistral, deepseek_v3 and deepseek_v32 (and a
    config with no model_type); built on the meta device for any other (below).
    Llama-style dense models: token embeddings (vocab x hidden), per layer q/k/v/o projections
    (grouped-query: k and v have ``num_key_value_heads`` heads of ``head_dim``), a SwiGLU MLP
    (gate, up, down) and two RMSNorms, then a final norm and ``lm_head`` (none when
    ``tie_word_embeddings``, whose default here is false, as in LlamaConfig). Biases count when
    ``attention_bias`` / ``mlp_bias`` say so.
    DeepSeek-V3 family: MLA attention (q_a_proj, q_a_layernorm, q_b_proj, kv_a_proj_with_mqa,
    kv_a_layernorm, kv_b_proj, o_proj), plus V3.2's sparse-attention indexer when
    ``index_n_heads`` is set (wq_b, wk, k_norm with bias, weights_proj). Layers from
    ``first_k_dense_replace`` on (every ``moe_layer_freq``-th) are MoE: ``n_routed_experts``
    SwiGLU experts of ``moe_intermediate_size``, shared experts of ``moe_intermediate_size x
    n_shared_experts`` and a router (experts x hidden); the router's score-correction bias is a
    buffer, not a parameter. The multi-token-prediction module (``num_nextn_predict_layers``,
    ~11.5B more in the checkpoint) is excluded: transformers does not load it.
    That gives 8,030,261,248 for Llama-3.1-8B and ~671.9e9 for DeepSeek-V3.2-Exp (671.0e9 as in
    DeepSeek-V3's report, plus 0.85e9 of indexers); transformers' own count on the meta device
    agrees to the parameter for both.
    Any other architecture transformers knows (Qwen2 with its q/k/v biases, Mixtral, Gemma,
    Phi-3, GPT-NeoX...) is built with ``AutoModelForCausalLM.from_config`` under
    ``torch.device("meta")`` (no memory, no weights) and read off: ``total_params`` is
    transformers' own count (tied weights once). The decoder layers are the largest
    ModuleList, grouped by identical parameters; each nn.Linear (or GPT-2 Conv1D) is a linear
    at its module path, numbered copies (``experts.0.w1``...) folded into one with copies; a
    3-D parameter (fused experts, copies x out x in) is a *fused* linear; norms, routers and
    other layer parameters are the layer's other parameters; whatever lies outside the layers
    besides embed_tokens and lm_head (final norm, position embeddings) counts with the final
    norm. A token passes through ``num_experts_per_tok`` copies of an expert linear (all of
    them when the config does not say). A config with no model_type and an MoE layout other
    than DeepSeek's, or a model_type transformers does not know, is refused.

Memory per GPU (GiB = 2^30 bytes)
    weights: every base parameter at 2 bytes when ``bf16``/``fp16`` is on (TRL's default) or 4
        in fp32. QLoRA stores every nn.Linear weight of the decoder layers (experts included
        when they are linears) in 4-bit NF4 with double quantisation: 0.5 byte + 8-bit absmax
        per 64 weights + fp32 scale per 256 blocks = 0.5159 byte/param; embeddings, lm_head,
        norms, routers, biases and fused expert parameters (bitsandbytes replaces only
        nn.Linear) stay 16-bit. Trainable parameters that are copies (LoRA adapters, the
        ``modules_to_save`` copies of embed_tokens and lm_head) add their own weight bytes.
        Routers, which transformers keeps in fp32, are counted at 16 bits (< 0.2 GiB off for
        DeepSeek).
    trainable parameters: full fine-tuning trains everything. LoRA/QLoRA train r x (in + out)
        per targeted linear; ``all-linear`` targets every linear layer except lm_head, MoE
        experts and the indexer included (as PEFT does when experts are ``nn.Linear``, and for
        deepseek_v3/v32's fused experts through its ``target_parameters`` remap, whose router
        adapters are not counted); a list
        matches module names or dotted suffixes, a regex string is matched against
        ``<layers path>.<first layer of each kind>.<module path>`` (``model.layers`` for the
        families counted by arithmetic). Fused expert parameters are never targets: PEFT's
        target_modules wrap modules. ``auto`` is the list :mod:`charlie.training.targets` chooses
        for the config's model_type (``all-linear`` for one it does not know). When special
        tokens are added (``charlie tokenize`` always adds the thesis tokens) embed_tokens and
        lm_head are trained whole, as ``modules_to_save``: the table shows their share (weight
        copy, gradient and AdamW state), which PEFT's ``trainable_token_indices`` (only the new
        tokens' rows) would all but remove.
    gradients + optimizer: 16 bytes per trainable parameter in all, AdamW mixed precision as in
        the ZeRO paper: with 16-bit weights, 2 (weight, above) + 2 (gradient) + 12 (fp32 master
        copy and two fp32 moments); in fp32, 4 + 4 + 8. This is an upper bound for a plain
        bf16 Trainer run, whose bf16 states need 8 bytes.
    activations: a micro-batch holds ``per_device_train_batch_size x max_length`` tokens: with
        packing (TRL's bfd, padding-free) every row is filled with whole examples up to
        max_length; without, the worst micro-batch is a full batch of maximal-length examples
        (``charlie train`` refuses any longer one), whatever the typical example's length. An
        optimizer step adds ``gradient_accumulation_steps`` micro-batches on every GPU: the
        table shows its tokens (examples, unpacked) and, from the tokenize report's mean
        example, what packing changes. With ``max_length: auto`` the length is the one
        ``charlie tokenize`` chose (its report in the config's dataset_dir), or before that the
        base model's context length (the most auto can choose); the table says which. Per
        token and layer, the 16-bit elements saved for the backward pass: each RMSNorm 3 x
        width (its input plus the fp32 upcast it multiplies) and its output once; Llama
        attention 2q + 2kv (rotated q, k, v for the kernel, and the attention output for
        o_proj); MLA 4 q_lora_rank + 4 kv_lora_rank (latent norms) + 2 heads x qk_head_dim (q,
        k) + heads x (nope + v) (kv_b output) + heads x v (attention output); SwiGLU 4 x
        intermediate (gate, up, silu, product); MoE 2 hidden (router's fp32 input) + 4 experts
        (fp32 logits and scores) + top-k x (2 hidden + 4 moe_intermediate) + the shared
        experts' SwiGLU. Meta-built models, whose layers the planner does not know, use an
        approximation that is above the formula wherever the formula applies (1.3-1.4x it for
        Llama-3.1-8B and DeepSeek-V3.2): per linear a token passes through (x the copies it
        passes through), its input and its output; 4 x width per norm; and twice the widest
        output (the activation function's result and the gate product). LoRA adds r per
        targeted linear a token passes through, plus 1.5 x in_features when ``lora_dropout`` > 0
        (the dropped copy and its mask). Attention (``attn_implementation``): flash kernels and
        sdpa keep O(seq) per token (the output, counted above; their softmax statistics are
        negligible), except that sdpa on a padded batch (batch > 1 unpacked) or a packed row
        gets a dense mask from transformers, 1 byte (bool) per query-key pair of each row, which
        torch's memory-efficient kernel turns into a 16-bit bias in each layer and keeps for
        the backward pass; eager attention always builds a 16-bit additive mask and keeps, per
        head and pair, the fp32 softmax output and its 16-bit copy for the value product (6
        bytes): O(seq²). ``auto`` is planned as flash attention when the config packs (packing
        trains on nothing else) and as sdpa otherwise; the reference DSA indexer needs more.
        Layers keep their attention terms as they keep their activations. With gradient
        checkpointing the step keeps one hidden state per layer (the checkpoints)
        plus the largest layer's activations while it is recomputed; without it, every
        layer's. Through TRL's fused LM head (``fused_lm_head``: ``auto`` is fused on a GPU,
        and always for QLoRA) the full logits are never built: the head projects tiles of
        ``FUSED_TILE_TOKENS`` tokens x ``FUSED_TILE_VOCAB`` vocabulary entries, one for the
        forward and one for the backward pass (fp32 at most), and keeps an fp32 copy of the
        scored hidden states and their gradient (every position counted: on Triton only the
        completion's are scored). Without it, logits cost 10 bytes per token per vocabulary
        entry (16-bit logits, the fp32 copy the loss takes, its fp32 gradient), and no
        checkpointing avoids them. Activations are never sharded.
    ZeRO (DeepSpeed, across every GPU: nodes x ``num_gpus`` per node): stage 1 divides the
        optimizer state, stage 2 also the gradients, stage 3 also the weights, and stage 3 adds
        the largest unit it gathers whole for a forward/backward (the biggest layer with all
        its experts, or embed_tokens or lm_head). Without ZeRO every GPU holds everything
        (DDP).
    capacity: the GPU's memory x the usable fraction from configs/gpus.yaml (0.9 leaves room for
        the CUDA context and fragmentation). It fits when the total is at most the capacity.
        ``gpu_type: CPU`` has no GPU memory to check (:func:`is_cpu`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from charlie.errors import CharlieError
from charlie.io import read_json_object
from charlie.training.config import (
    REPORT,
    context_length,
    packing_problem,
    packs,
    read_tokenize_report,
    varlen,
)
from charlie.training.targets import AUTO, resolve_targets

if TYPE_CHECKING:
    from charlie.training.config import TrainConfig

GIB = 2**30
DEFAULT_CONFIGS_DIR = Path("configs")

# NF4 with double quantisation (bitsandbytes, blocksize 64): 4 bits per weight, an 8-bit absmax
# per 64 weights and an fp32 second-level scale per 256 absmax blocks.
QLORA_BYTES_PER_PARAM = 0.5 + (8 / 64 + 32 / (64 * 256)) / 8
TRAINABLE_BYTES = 16  # weight + gradient + AdamW state per trainable parameter, in all
LOGITS_BYTES = 10  # 16-bit logits + the loss's fp32 copy + its fp32 gradient, per token x vocab
# TRL's fused LM head (trl.kernels.chunked_logprob, TRL 1.16): TOKEN_CHUNK_SIZE tokens per tile,
# and the trainer's _CHUNKED_LOGPROB_CHUNK_SIZE vocabulary entries.
FUSED_TILE_TOKENS, FUSED_TILE_VOCAB = 4096, 32768
ACTIVATION_BYTES = 2  # activations are 16-bit (the plan's element counts are 16-bit elements)
EAGER_SCORE_BYTES = 6  # eager, per head and query-key pair kept: fp32 softmax + its 16-bit copy
BOOL_MASK_BYTES = 1  # transformers' sdpa mask: a bool per query-key pair of a row

Method = Literal["full", "lora", "qlora"]


class DoesNotFit(CharlieError):
    """The run needs more memory per GPU than the GPU has; the message is the verdict."""

    exit_code = 1


# --------------------------------------------------------------------------- model shape


@dataclass(frozen=True)
class Linear:
    """One linear layer of a decoder layer (or ``copies`` of it, for routed experts)."""

    path: str  # module path inside a decoder layer, e.g. "self_attn.q_proj"
    in_features: int
    out_features: int
    copies: int = 1  # per layer: n_routed_experts for the routed experts
    active: int = 1  # how many copies one token passes through with gradients (top-k; 0: none)
    bias: bool = False
    # A 3-D nn.Parameter holding every expert (copies x out x in), not an nn.Linear: counted,
    # but bitsandbytes does not quantise it and PEFT's target_modules never wrap it.
    fused: bool = False

    @property
    def name(self) -> str:
        """The module's own name, as ``lora_target_modules`` lists it."""
        return self.path.rsplit(".", 1)[-1]

    @property
    def weights(self) -> int:
        """Weight parameters of all copies."""
        return self.copies * self.in_features * self.out_features

    @property
    def biases(self) -> int:
        """Bias parameters of all copies."""
        return self.copies * self.out_features if self.bias else 0


@dataclass(frozen=True)
class LayerKind:
    """The decoder layers that share one shape (dense, or MoE)."""

    name: str
    count: int  # how many decoder layers have this shape
    first_index: int  # index of the first of them (regex targets are matched against it)
    linears: tuple[Linear, ...]
    other_params: int  # norms and router of one layer: never quantised
    activation_elements: int  # 16-bit elements one token saves for backward in one layer

    @property
    def params(self) -> int:
        """Parameters of one layer of this kind."""
        return self.other_params + sum(lin.weights + lin.biases for lin in self.linears)

    @property
    def quantisable_weights(self) -> int:
        """Weights of one layer's nn.Linear modules (fused experts excluded): what QLoRA
        stores in 4 bits."""
        return sum(lin.weights for lin in self.linears if not lin.fused)


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know about a model: its parameters, grouped, and widths."""

    name: str
    hidden_size: int
    vocab_size: int
    embed_params: int
    lm_head_params: int  # 0 when tied to the embeddings
    final_norm_params: int  # the final norm, and any other parameter outside the layers
    kinds: tuple[LayerKind, ...]
    layers_path: str = "model.layers"  # the decoder layers' module path (for regex targets)
    counted: str = "exact"  # "exact" (config.json arithmetic) or "meta" (built by transformers)
    attention_heads: int = 0  # query heads per layer (eager attention keeps scores per head)

    @property
    def num_layers(self) -> int:
        """Decoder layers."""
        return sum(kind.count for kind in self.kinds)

    @property
    def linear_weights(self) -> int:
        """Weights of the decoder layers' nn.Linear modules: what QLoRA quantises."""
        return sum(kind.count * kind.quantisable_weights for kind in self.kinds)

    @property
    def total_params(self) -> int:
        """Every parameter transformers loads."""
        layers = sum(kind.count * kind.params for kind in self.kinds)
        return self.embed_params + self.lm_head_params + self.final_norm_params + layers


def _int(config: Mapping[str, Any], key: str, name: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CharlieError(f"config.json of {name} has no usable '{key}' (got {value!r}).")
    return value


def _swiglu(prefix: str, hidden: int, inter: int, *, copies: int = 1, active: int = 1,
            bias: bool = False) -> tuple[Linear, ...]:  # fmt: skip
    return (
        Linear(f"{prefix}.gate_proj", hidden, inter, copies, active, bias),
        Linear(f"{prefix}.up_proj", hidden, inter, copies, active, bias),
        Linear(f"{prefix}.down_proj", inter, hidden, copies, active, bias),
    )


def _llama_attention(config: Mapping[str, Any], name: str) -> tuple[tuple[Linear, ...], int]:
    """Grouped-query attention: linears and saved elements per token (norm excluded)."""
    hidden = _int(config, "hidden_size", name)
    heads = _int(config, "num_attention_heads", name)
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    bias = bool(config.get("attention_bias", False))
    q, kv = heads * head_dim, kv_heads * head_dim
    linears = (
        Linear("self_attn.q_proj", hidden, q, bias=bias),
        Linear("self_attn.k_proj", hidden, kv, bias=bias),
        Linear("self_attn.v_proj", hidden, kv, bias=bias),
        Linear("self_attn.o_proj", q, hidden, bias=bias),
    )
    # rotated q, k and v for the attention kernel; its output for o_proj
    return linears, 2 * q + 2 * kv


def _mla_attention(config: Mapping[str, Any], name: str) -> tuple[tuple[Linear, ...], int, int]:
    """DeepSeek MLA (+ the V3.2 indexer): linears, latent-norm params, saved elements per token."""
    hidden = _int(config, "hidden_size", name)
    heads = _int(config, "num_attention_heads", name)
    q_rank = config.get("q_lora_rank") or 0
    kv_rank = _int(config, "kv_lora_rank", name)
    nope = _int(config, "qk_nope_head_dim", name)
    rope = _int(config, "qk_rope_head_dim", name)
    v_dim = _int(config, "v_head_dim", name)
    bias = bool(config.get("attention_bias", False))
    qk = nope + rope
    linears: list[Linear] = []
    norms = kv_rank  # kv_a_layernorm
    if q_rank:
        linears += [
            Linear("self_attn.q_a_proj", hidden, q_rank, bias=bias),
            Linear("self_attn.q_b_proj", q_rank, heads * qk),
        ]
        norms += q_rank  # q_a_layernorm
    else:
        linears.append(Linear("self_attn.q_proj", hidden, heads * qk))
    linears += [
        Linear("self_attn.kv_a_proj_with_mqa", hidden, kv_rank + rope, bias=bias),
        Linear("self_attn.kv_b_proj", kv_rank, heads * (nope + v_dim)),
        Linear("self_attn.o_proj", heads * v_dim, hidden, bias=bias),
    ]
    if config.get("index_n_heads"):  # V3.2's sparse-attention indexer
        index_heads = _int(config, "index_n_heads", name)
        index_dim = _int(config, "index_head_dim", name)
        # The indexer runs under no_grad: LoRA still wraps its linears, but no token's
        # gradient passes through them (active=0).
        linears += [
            Linear("self_attn.indexer.wq_b", q_rank or hidden, index_heads * index_dim, active=0),
            Linear("self_attn.indexer.wk", hidden, index_dim, active=0),
            Linear("self_attn.indexer.weights_proj", hidden, index_heads, active=0),
        ]
        norms += 2 * index_dim  # k_norm is a LayerNorm: weight and bias
    # latent norms (3x input + output each), q and k, kv_b's output (holds v), attention output
    saved = 4 * q_rank + 4 * kv_rank + 2 * heads * qk + heads * (nope + v_dim) + heads * v_dim
    return tuple(linears), norms, saved


EXACT_MODEL_TYPES = frozenset({"llama", "mistral", "deepseek_v3", "deepseek_v32"})
"""``model_type`` values counted by arithmetic on config.json; any other is built on meta."""
_FOREIGN_MOE_KEYS = ("num_local_experts", "num_experts")  # MoE layouts other than DeepSeek's
TOP_K_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_top_k", "top_k")
"""Where MoE configs keep how many experts a token is routed to (for meta-built models)."""


def model_shape(config: Mapping[str, Any], name: str = "model") -> ModelShape:
    """Group a model's parameters from its config.json.

    Llama-style dense models and the DeepSeek-V3 family (``model_type`` in
    :data:`EXACT_MODEL_TYPES`, or no ``model_type`` at all) are counted by arithmetic; any
    other architecture transformers knows is built on the meta device
    (:func:`meta_model_shape`), which needs torch and transformers.

    Args:
        config: The parsed config.json.
        name: The model's name, for messages and the table.

    Returns:
        The model's shape; ``total_params`` is exact (the arithmetic agrees with transformers
        for the families it covers).

    Raises:
        CharlieError: A key the count needs is missing, or the architecture is one neither the
            arithmetic nor transformers knows.
    """
    model_type = config.get("model_type")
    text = config
    if "text_config" in config and "hidden_size" not in config:
        text = config["text_config"]  # multimodal wrappers keep the language model here
    foreign_moe = "n_routed_experts" not in text and any(text.get(k) for k in _FOREIGN_MOE_KEYS)
    if model_type is None and foreign_moe:
        raise CharlieError(
            f"{name} is a mixture-of-experts model whose layout the planner does not know and "
            "whose config.json has no model_type to build it by (it counts Llama-style dense "
            "models and DeepSeek-V3's n_routed_experts itself)."
        )
    if model_type is None or (model_type in EXACT_MODEL_TYPES and not foreign_moe):
        return _exact_shape(text, name)
    return meta_model_shape(config, name)


def _exact_shape(config: Mapping[str, Any], name: str) -> ModelShape:
    """The arithmetic count: Llama-style dense layers, DeepSeek MLA and MoE layers."""
    hidden = _int(config, "hidden_size", name)
    layers = _int(config, "num_hidden_layers", name)
    vocab = _int(config, "vocab_size", name)
    if "kv_lora_rank" in config:
        attention, attention_norms, attention_saved = _mla_attention(config, name)
    else:
        attention, attention_saved = _llama_attention(config, name)
        attention_norms = 0
    # Two RMSNorms per layer (before attention and before the MLP): each saves 3x its input
    # (16-bit input + fp32 upcast) and its output once, for the linears that read it.
    norm_saved = 2 * (3 * hidden + hidden)

    dense_inter = _int(config, "intermediate_size", name)
    dense_mlp = _swiglu("mlp", hidden, dense_inter, bias=bool(config.get("mlp_bias", False)))
    dense = dict(
        linears=attention + dense_mlp,
        other_params=2 * hidden + attention_norms,
        activation_elements=norm_saved + attention_saved + 4 * dense_inter,
    )
    moe_layers: list[int] = []
    if config.get("n_routed_experts"):
        first = (
            _int(config, "first_k_dense_replace", name) if "first_k_dense_replace" in config else 0
        )
        freq = config.get("moe_layer_freq") or 1
        moe_layers = [i for i in range(layers) if i >= first and i % freq == 0]
    dense_layers = [i for i in range(layers) if i not in set(moe_layers)]

    kinds = []
    if dense_layers:
        kinds.append(LayerKind("dense", len(dense_layers), dense_layers[0], **dense))
    if moe_layers:
        experts = _int(config, "n_routed_experts", name)
        top_k = _int(config, "num_experts_per_tok", name)
        moe_inter = _int(config, "moe_intermediate_size", name)
        shared_inter = moe_inter * (config.get("n_shared_experts") or 0)
        moe_mlp = _swiglu("mlp.experts", hidden, moe_inter, copies=experts, active=top_k)
        if shared_inter:
            moe_mlp += _swiglu("mlp.shared_experts", hidden, shared_inter)
        # router: fp32 copy of its input, fp32 logits and scores; each chosen expert: its
        # gathered input, gate/up/silu/product, its output (kept for the weighting)
        moe_saved = 2 * hidden + 4 * experts + top_k * (2 * hidden + 4 * moe_inter)
        kinds.append(
            LayerKind(
                "moe",
                len(moe_layers),
                moe_layers[0],
                linears=attention + moe_mlp,
                other_params=2 * hidden + attention_norms + experts * hidden,  # + router
                activation_elements=norm_saved + attention_saved + moe_saved + 4 * shared_inter,
            )
        )
    tied = bool(config.get("tie_word_embeddings", False))
    return ModelShape(
        name=name,
        hidden_size=hidden,
        vocab_size=vocab,
        embed_params=vocab * hidden,
        lm_head_params=0 if tied else vocab * hidden,
        final_norm_params=hidden,
        kinds=tuple(kinds),
        attention_heads=_int(config, "num_attention_heads", name),
    )


def meta_model_shape(config: Mapping[str, Any], name: str = "model") -> ModelShape:
    """Build the model on the meta device (no memory, no weights) and read its shape off it.

    Decoder layers are the largest ``nn.ModuleList``; layers with the same parameters form one
    :class:`LayerKind`. Every ``nn.Linear`` (or GPT-2 ``Conv1D``) in a layer is a
    :class:`Linear` at its module path, numbered copies (``experts.0.w1``...) folded into one
    with ``copies``; a 3-D parameter (fused experts) is a ``fused`` Linear with its first
    dimension as copies; everything else in a layer (norms, routers, fused biases) is
    ``other_params``. Activations: the approximation in the module docstring.

    Raises:
        CharlieError: torch/transformers are missing, transformers does not know the
            ``model_type``, or cannot build a causal LM from the config.
    """
    model_type = config.get("model_type")
    try:
        import torch
        import transformers
        from transformers import CONFIG_MAPPING, AutoModelForCausalLM
    except ImportError:
        raise CharlieError(
            f"counting {name} ({model_type}) builds it on the meta device, which needs torch "
            "and transformers installed."
        ) from None
    if model_type not in CONFIG_MAPPING:
        raise CharlieError(
            f"{name} has model_type {model_type!r}, which transformers {transformers.__version__} "
            "does not know, so its parameters cannot be counted: upgrade transformers or put a "
            "config.json with a known model_type in the model folder."
        )
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its warnings about token ids and the like
    try:
        hf_config = CONFIG_MAPPING[model_type].from_dict(kwargs)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
    except Exception as exc:  # whatever transformers raises becomes one sentence
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        raise CharlieError(
            f"transformers cannot build {name} ({model_type}) as a causal LM from its "
            f"config.json: {first}."
        ) from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    return _shape_of_module(model, config, name)


def _shape_of_module(model: Any, config: Mapping[str, Any], name: str) -> ModelShape:
    """:func:`meta_model_shape`'s reading of a built (meta) model."""
    from torch import nn

    total = sum(p.numel() for p in model.parameters())  # shared (tied) parameters once
    lists = [(path, m) for path, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise CharlieError(f"{name} has no decoder layers the planner can find (no ModuleList).")
    layers_path, layers = max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    embed = model.get_input_embeddings()
    out = model.get_output_embeddings()
    embed_params = embed.weight.numel()
    tied = out is None or out.weight is embed.weight
    lm_head_params = 0 if tied else sum(p.numel() for p in out.parameters())
    text = config.get("text_config") if "hidden_size" not in config else None
    top_k = next(
        (v for key in TOP_K_KEYS if isinstance(v := (text or config).get(key), int) and v > 0),
        None,
    )

    groups: dict[tuple, list[int]] = {}
    for index, layer in enumerate(layers):
        groups.setdefault(_layer_signature(layer, top_k), []).append(index)
    kinds: list[LayerKind] = []
    for (linears, other, norms), indices in groups.items():
        base = "moe" if any(lin.copies > 1 for lin in linears) else "dense"
        label = base if all(k.name != base for k in kinds) else f"{base}-{len(kinds) + 1}"
        widest = max((lin.active * lin.out_features for lin in linears), default=0)
        saved = sum(lin.active * (lin.in_features + lin.out_features) for lin in linears)
        kinds.append(
            LayerKind(
                label,
                len(indices),
                indices[0],
                linears=linears,
                other_params=other,
                activation_elements=saved + 4 * norms + 2 * widest,
            )
        )
    in_layers = sum(kind.count * kind.params for kind in kinds)
    return ModelShape(
        name=name,
        hidden_size=embed.weight.shape[-1],
        vocab_size=out.weight.shape[0] if out is not None else embed.weight.shape[0],
        embed_params=embed_params,
        lm_head_params=lm_head_params,
        final_norm_params=total - embed_params - lm_head_params - in_layers,
        kinds=tuple(kinds),
        layers_path=layers_path,
        counted="meta",
        attention_heads=_heads(text or config),
    )


def _heads(config: Mapping[str, Any]) -> int:
    """Query heads per layer from a config.json (Llama-style or GPT-2's name; 0 if neither)."""
    return int(config.get("num_attention_heads") or config.get("n_head") or 0)


def _layer_signature(layer: Any, top_k: int | None) -> tuple[tuple[Linear, ...], int, int]:
    """One decoder layer's linears (numbered copies folded), other parameters, norm widths."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    found: dict[tuple[str, int, int, bool], int] = {}  # (path, in, out, bias) -> copies
    owned: set[int] = set()
    for path, module in layer.named_modules():
        if isinstance(module, nn.Linear):
            dims = (module.in_features, module.out_features)
        elif isinstance(module, Conv1D):  # GPT-2's linear, weight stored (in, out)
            dims = (module.weight.shape[0], module.nf)
        else:
            continue
        folded = re.sub(r"\.\d+(?=\.|$)", "", path)  # experts.3.w1 -> experts.w1
        key = (folded, *dims, module.bias is not None)
        found[key] = found.get(key, 0) + 1
        owned.update(id(p) for p in module.parameters())
    linears = []
    for (path, fan_in, fan_out, bias), copies in found.items():
        active = copies if top_k is None or copies == 1 else min(top_k, copies)
        linears.append(Linear(path, fan_in, fan_out, copies, active, bias))
    other = norms = 0
    modules = dict(layer.named_modules())
    for path, param in layer.named_parameters():
        if id(param) in owned:
            continue
        if param.dim() == 3:  # fused experts: copies x out x in, as nn.Linear stores weights
            copies = param.shape[0]
            active = copies if top_k is None else min(top_k, copies)
            linears.append(Linear(path, param.shape[2], param.shape[1], copies, active, fused=True))
            continue
        other += param.numel()
        owner = modules.get(path.rpartition(".")[0])
        if param.dim() == 1 and path.endswith("weight") and "norm" in type(owner).__name__.lower():
            norms += param.numel()
    return tuple(linears), other, norms


# --------------------------------------------------------------------------- LoRA


def is_target(
    linear: Linear,
    targets: str | Sequence[str],
    layer_index: int = 0,
    layers_path: str = "model.layers",
) -> bool:
    """Whether PEFT's ``target_modules`` would wrap this linear (lm_head is never one, nor a
    fused expert parameter: PEFT wraps modules).

    Args:
        linear: A decoder layer's linear.
        targets: ``"all-linear"``, a regex matched against the module's full path, or a list of
            module names / dotted suffixes.
        layer_index: The decoder layer the path is built with, for regex targets.
        layers_path: The decoder layers' module path, for regex targets.
    """
    if linear.fused:
        return False
    if targets == "all-linear":
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, f"{layers_path}.{layer_index}.{linear.path}") is not None
    return any(linear.path == t or linear.path.endswith("." + t) for t in targets)


def lora_params(shape: ModelShape, r: int, targets: str | Sequence[str]) -> int:
    """LoRA adapter parameters: r x (in + out) for every targeted linear (every copy).

    Raises:
        CharlieError: The targets name lm_head, or match no linear layer.
    """
    if not isinstance(targets, str) and "lm_head" in targets:
        raise CharlieError(
            "lora_target_modules names lm_head, which PEFT refuses; it is trained whole "
            "(modules_to_save) when tokens are added."
        )
    total, matched = 0, False
    for kind in shape.kinds:
        for lin in kind.linears:
            if is_target(lin, targets, kind.first_index, shape.layers_path):
                matched = True
                total += kind.count * lin.copies * r * (lin.in_features + lin.out_features)
    if not matched:
        names = sorted({lin.name for kind in shape.kinds for lin in kind.linears})
        raise CharlieError(
            f"lora_target_modules {targets!r} matches no linear layer of {shape.name}; "
            f"its linears are: {', '.join(names)}."
        )
    return total


# --------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class Gpu:
    """A GPU type: its memory and the share of it a training step can use."""

    name: str
    memory_gib: float
    usable_fraction: float = 0.9

    @property
    def capacity_bytes(self) -> float:
        """Usable bytes: memory x usable fraction."""
        return self.memory_gib * GIB * self.usable_fraction


@dataclass(frozen=True)
class TrainingSetup:
    """The parts of a training config that decide memory (see the module docstring)."""

    method: Method = "lora"
    max_length: int = 2048
    batch_size: int = 8  # per_device_train_batch_size (TRL's default: 8)
    lora_r: int = 8
    lora_target_modules: str | tuple[str, ...] = "all-linear"
    lora_dropout: float = 0.05
    train_embeddings: bool = True  # special tokens added: embed_tokens/lm_head in modules_to_save
    embedding_rows_only: bool = False  # trainable_embeddings: new_tokens (lm_head still whole)
    half_precision: bool = True  # bf16 or fp16 (TRL's default: bf16)
    gradient_checkpointing: bool = True  # TRL's default
    zero_stage: int = 0
    num_gpus: int = 1  # GPUs per node
    max_length_source: str = ""  # with max_length: auto, where the length came from
    num_nodes: int = 1
    accumulation: int = 1  # gradient_accumulation_steps
    packing: bool = False  # padding-free rows (TRL's packing with bfd, or padding_free)
    attention: str = "auto"  # attn_implementation
    mean_example_tokens: float | None = None  # the tokenize report's train mean, if any
    fused_lm_head: bool = True  # the loss through TRL's fused LM head (TRL's own path)

    @property
    def world_size(self) -> int:
        """GPUs in all: nodes x GPUs per node (what ZeRO shards across)."""
        return self.num_nodes * self.num_gpus

    @property
    def attention_kind(self) -> Literal["flash", "sdpa", "eager"]:
        """The kernel memory is planned for: ``auto`` as flash when packing (which trains on
        nothing else), as sdpa otherwise."""
        if self.attention == "auto":
            return "flash" if self.packing else "sdpa"
        if varlen(self.attention):
            return "flash"
        return "eager" if self.attention == "eager" else "sdpa"


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU memory of one training step, by component, in bytes."""

    model: str
    setup: TrainingSetup
    gpu: Gpu
    total_params: int
    trainable_params: int
    lora_params: int
    embedding_params: int  # trained whole (modules_to_save), within trainable_params
    savable_embedding_params: int  # of those, what trainable_embeddings: new_tokens would spare
    weights: float
    gathered: float  # ZeRO-3: the largest unit gathered whole
    gradients: float
    optimizer: float
    checkpoints: float  # activations: one hidden state per layer (gradient checkpointing)
    layer_activations: float  # activations: every layer's, or the largest one's when recomputed
    logits: float
    model_states: float  # weights + gradients + optimizer on one unsharded GPU (for ZeRO math)
    gather_unit: float  # the largest unit ZeRO-3 would gather whole, whether or not it is on
    total: float
    capacity: float
    fits: bool
    counted: str = "exact"  # how the parameters were counted (ModelShape.counted)
    config_source: str = ""  # where config.json was read (plan_for fills it in)
    attention: float = 0.0  # activations: seq² attention masks and scores (sdpa padded, eager)

    @property
    def tokens(self) -> int:
        """Tokens one GPU holds in a micro-batch: per_device_train_batch_size x max_length."""
        return self.setup.batch_size * self.setup.max_length

    @property
    def step_tokens(self) -> int:
        """Tokens of one optimizer step at most: every GPU's accumulated micro-batches."""
        return self.tokens * self.setup.accumulation * self.setup.world_size

    @property
    def step_examples(self) -> int:
        """Examples (unpacked) or packed rows of one optimizer step."""
        s = self.setup
        return s.batch_size * s.accumulation * s.world_size

    @property
    def activations(self) -> float:
        """Checkpoints + layer activations + logits + attention masks and scores."""
        return self.checkpoints + self.layer_activations + self.logits + self.attention

    @property
    def embedding_state(self) -> float:
        """Per-GPU bytes of the whole embed_tokens/lm_head training (``modules_to_save``): the
        trainable copy, its gradient and AdamW state, sharded as the rest (within weights,
        gradients and optimizer)."""
        s = self.setup
        wbytes = 2 if s.half_precision or s.method == "qlora" else 4
        n, stage = s.world_size, s.zero_stage
        return self.embedding_params * (
            wbytes / (n if stage >= 3 else 1)
            + wbytes / (n if stage >= 2 else 1)
            + (TRAINABLE_BYTES - 2 * wbytes) / (n if stage >= 1 else 1)
        )

    @property
    def embedding_saving(self) -> float:
        """Per-GPU bytes that ``trainable_embeddings: new_tokens`` would spare."""
        if not self.embedding_params:
            return 0.0
        return self.embedding_state * self.savable_embedding_params / self.embedding_params

    def min_gpus_zero3(self) -> int | None:
        """The fewest GPUs of this type that would fit with ZeRO-3, or None if none would.

        With ZeRO-3 a GPU holds its share of the model states plus what is never sharded
        (activations and the gathered unit), so more GPUs help only while that rest fits.
        """
        room = self.capacity - self.activations - self.gather_unit
        if room <= 0:
            return None
        return max(1, math.ceil(self.model_states / room))


def _layer_lora_activations(kind: LayerKind, setup: TrainingSetup, layers_path: str) -> int:
    """Elements LoRA adds per token in one layer: lora_A's output, and dropout's input copy."""
    if setup.method == "full":
        return 0
    extra = 0
    for lin in kind.linears:
        if lin.active and is_target(lin, setup.lora_target_modules, kind.first_index, layers_path):
            dropped = 1.5 * lin.in_features if setup.lora_dropout > 0 else 0
            extra += lin.active * (setup.lora_r + dropped)
    return int(extra)


def estimate(shape: ModelShape, setup: TrainingSetup, gpu: Gpu) -> MemoryPlan:
    """Estimate one training step's memory per GPU (conventions: the module docstring).

    Args:
        shape: The model, from :func:`model_shape`.
        setup: Method, lengths, precision, checkpointing and sharding.
        gpu: The GPU type.

    Returns:
        The plan, component by component, with the total, the capacity and whether it fits.

    Raises:
        CharlieError: A setup value is out of range, or the LoRA targets match nothing.
    """
    if setup.num_gpus < 1 or setup.num_nodes < 1 or setup.zero_stage not in (0, 1, 2, 3):
        raise CharlieError(
            f"num_gpus and the number of nodes must be at least 1 and the ZeRO stage 0-3 (got "
            f"{setup.num_gpus}, {setup.num_nodes} and {setup.zero_stage})."
        )
    if setup.method not in ("full", "lora", "qlora"):
        raise CharlieError(f"method must be full, lora or qlora, not {setup.method!r}.")
    total = shape.total_params
    half = setup.half_precision or setup.method == "qlora"  # bnb computes in 16-bit
    wbytes = 2 if half else 4

    # ---- trainable parameters
    savable = 0  # embed_tokens trained whole, where only its new rows could be
    if setup.method == "full":
        adapters, embeddings, trainable = 0, 0, total
    else:
        adapters = lora_params(shape, setup.lora_r, setup.lora_target_modules)
        embeddings = 0
        if setup.train_embeddings:
            rows_only = setup.embedding_rows_only and shape.lm_head_params > 0  # untied head
            embeddings = shape.lm_head_params + (0 if rows_only else shape.embed_params)
            savable = 0 if rows_only or not shape.lm_head_params else shape.embed_params
        trainable = adapters + embeddings

    # ---- weights (unsharded): the base model as stored, plus trainable copies
    if setup.method == "qlora":
        quantised = shape.linear_weights
        base = quantised * QLORA_BYTES_PER_PARAM + (total - quantised) * wbytes
    else:
        base = total * wbytes
    weights = base + (0 if setup.method == "full" else trainable * wbytes)
    gradients = trainable * wbytes
    optimizer = trainable * (TRAINABLE_BYTES - 2 * wbytes)

    # ZeRO-3 gathers one layer (all its experts), or embed_tokens / lm_head, whole at a time.
    def layer_bytes(kind: LayerKind) -> float:
        linear_w = kind.quantisable_weights
        stored = linear_w * (QLORA_BYTES_PER_PARAM if setup.method == "qlora" else wbytes)
        return stored + (kind.params - linear_w) * wbytes

    unit = max(
        [layer_bytes(k) for k in shape.kinds]
        + [shape.embed_params * wbytes, shape.lm_head_params * wbytes]
    )

    # ---- activations
    tokens = setup.batch_size * setup.max_length
    per_layer = {
        k.name: k.activation_elements + _layer_lora_activations(k, setup, shape.layers_path)
        for k in shape.kinds
    }
    if setup.gradient_checkpointing:
        checkpoints = tokens * shape.num_layers * shape.hidden_size * ACTIVATION_BYTES
        layer_acts = tokens * max(per_layer.values()) * ACTIVATION_BYTES
    else:
        checkpoints = 0
        layer_acts = (
            tokens * sum(k.count * per_layer[k.name] for k in shape.kinds) * ACTIVATION_BYTES
        )
    logits = logits_bytes(tokens, shape.vocab_size, shape.hidden_size, setup.fused_lm_head)
    attention = attention_bytes(shape, setup)

    # ---- ZeRO sharding
    n, stage = setup.world_size, setup.zero_stage
    model_states = weights + gradients + optimizer
    per_gpu_optimizer = optimizer / n if stage >= 1 else optimizer
    per_gpu_gradients = gradients / n if stage >= 2 else gradients
    per_gpu_weights = weights / n if stage >= 3 else weights
    gathered = unit if stage >= 3 else 0.0

    per_gpu = per_gpu_weights + gathered + per_gpu_gradients + per_gpu_optimizer
    per_gpu += checkpoints + layer_acts + logits + attention
    return MemoryPlan(
        model=shape.name,
        setup=setup,
        gpu=gpu,
        total_params=total,
        trainable_params=trainable,
        lora_params=adapters,
        embedding_params=embeddings,
        savable_embedding_params=savable,
        weights=per_gpu_weights,
        gathered=gathered,
        gradients=per_gpu_gradients,
        optimizer=per_gpu_optimizer,
        checkpoints=checkpoints,
        layer_activations=layer_acts,
        logits=logits,
        model_states=model_states,
        gather_unit=unit,
        total=per_gpu,
        capacity=gpu.capacity_bytes,
        fits=per_gpu <= gpu.capacity_bytes,
        counted=shape.counted,
        attention=attention,
    )


def logits_bytes(tokens: int, vocab: int, hidden: int, fused: bool) -> float:
    """What the LM head and the loss hold for a micro-batch of ``tokens`` (module docstring):
    through the fused head, two fp32 tiles and an fp32 copy of the hidden states with its
    gradient; without it, the whole logits three times over (10 bytes per entry)."""
    if not fused:
        return tokens * vocab * LOGITS_BYTES
    tile = min(tokens, FUSED_TILE_TOKENS) * min(vocab, FUSED_TILE_VOCAB) * 4
    return 2 * tile + tokens * hidden * 8


def attention_bytes(shape: ModelShape, setup: TrainingSetup) -> float:
    """The seq² part of attention for one GPU's micro-batch (the module docstring's rule).

    Flash kernels keep none; sdpa none on an unpadded row (batch 1, unpacked: transformers
    passes no mask and torch runs its own flash kernel), else a bool mask per row and, per
    layer kept, the 16-bit bias made of it; eager a 16-bit mask per row and, per layer kept,
    6 bytes per head and query-key pair. A layer is kept while it waits for the backward pass:
    all of them, or the one being recomputed under gradient checkpointing.
    """
    pairs = setup.batch_size * setup.max_length**2
    kept = 1 if setup.gradient_checkpointing else shape.num_layers
    kind = setup.attention_kind
    if kind == "eager":
        return pairs * (ACTIVATION_BYTES + kept * shape.attention_heads * EAGER_SCORE_BYTES)
    if kind == "sdpa" and (setup.batch_size > 1 or setup.packing):
        return pairs * (BOOL_MASK_BYTES + kept * ACTIVATION_BYTES)
    return 0.0


# --------------------------------------------------------------------------- reporting


def _gib(value: float) -> str:
    gib = value / GIB
    return f"{gib:.0f}" if gib >= 10 else f"{gib:.1f}" if gib >= 1 else f"{gib:.2f}"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def _gpus(plan: MemoryPlan) -> str:
    s = plan.setup
    if s.world_size == 1:
        return f"one {plan.gpu.name}"
    return f"each of {s.world_size} {plan.gpu.name}" + (
        f" ({_nodes(s)})" if s.num_nodes > 1 else ""
    )


def _nodes(setup: TrainingSetup) -> str:
    gpus = "GPU" if setup.num_gpus == 1 else "GPUs"
    return f"{setup.num_nodes} nodes × {setup.num_gpus} {gpus}"


def _hardware(plan: MemoryPlan) -> str:
    s = plan.setup
    if s.num_nodes > 1:
        return f"{_nodes(s)} ({s.world_size} x {plan.gpu.name})"
    return f"{s.num_gpus} x {plan.gpu.name}"


def _counted(plan: MemoryPlan) -> str:
    return " (counted on the meta device by transformers)" if plan.counted == "meta" else ""


def _header(plan: MemoryPlan) -> list[str]:
    """The table's first lines: model, method, hardware; parameters; tokens per step."""
    s = plan.setup
    how = s.method if s.method == "full" else f"{s.method} (r={s.lora_r}, {_targets(s)})"
    zero = f"ZeRO-{s.zero_stage}" if s.zero_stage else "no ZeRO"
    trainable = _count(plan.trainable_params)
    if plan.embedding_params:
        trainable += (
            f" (LoRA {_count(plan.lora_params)} + embed_tokens/lm_head "
            f"{_count(plan.embedding_params)})"
        )
    checkpointing = "on" if s.gradient_checkpointing else "off"
    lines = [
        f"{plan.model}, {how}, {_hardware(plan)}, {zero}",
        f"parameters {_count(plan.total_params)}{_counted(plan)}, trainable {trainable}",
        f"{plan.tokens:,} tokens per GPU per micro-batch (batch {s.batch_size} x max_length "
        f"{s.max_length}{f', {s.max_length_source}' if s.max_length_source else ''}), "
        f"gradient checkpointing {checkpointing}, attention {_attention(s)}",
        _per_step(plan),
    ]
    if plan.embedding_params:
        which = (
            "embed_tokens/lm_head trained whole (modules_to_save, new tokens added)"
            if plan.savable_embedding_params or not s.embedding_rows_only
            else "lm_head trained whole, embed_tokens in the new tokens' rows only"
        )
        lines.append(
            f"{which}: {_count(plan.embedding_params)} parameters, "
            f"{_gib(plan.embedding_state)} GiB per GPU with gradients and AdamW state"
            + (
                "; trainable_embeddings: new_tokens (PEFT's trainable_token_indices) would train "
                f"only embed_tokens' new rows ({_gib(plan.embedding_saving)} GiB less)"
                if plan.savable_embedding_params
                else ""
            )
        )
    if plan.config_source:
        lines.append(f"config.json: {plan.config_source}")
    return lines


def _attention(setup: TrainingSetup) -> str:
    """The attention implementation, and for ``auto`` what it is planned as."""
    if setup.attention != "auto":
        return setup.attention
    if setup.packing:
        return (
            "auto (planned as flash attention, which packing needs; without flash-attn "
            "charlie train trains unpacked)"
        )
    return "auto (planned as sdpa; flash attention, where installed, needs no more)"


def _per_step(plan: MemoryPlan) -> str:
    """What an optimizer step trains on, and what packing changes (the tokenize report's mean
    example, when there is one, turns rows into examples)."""
    s = plan.setup
    n = s.max_length
    mean = s.mean_example_tokens
    step = f"x {s.accumulation} accumulation x {s.world_size} GPU{'s' if s.world_size > 1 else ''}"
    if s.packing:
        line = (
            f"packing (padding-free): a micro-batch is {s.batch_size} row"
            f"{'s' if s.batch_size > 1 else ''} of whole examples filled to at most {n:,} "
            f"tokens; an optimizer step ({step}) trains on up to {plan.step_tokens:,} tokens"
        )
        if mean:
            line += (
                f", ~{plan.step_tokens / mean:,.0f} examples of the tokenize report's mean "
                f"{mean:,.0f} tokens (~{n / mean:,.0f} per row)"
            )
        return line
    batch = "1 example" if s.batch_size == 1 else f"{s.batch_size} examples padded to the longest"
    line = (
        f"no packing: a micro-batch is {batch}; an optimizer step ({step}) trains on "
        f"{plan.step_examples:,} example{'s' if plan.step_examples > 1 else ''}, up to "
        f"{plan.step_tokens:,} tokens"
    )
    if mean:
        return line + (
            f" (~{plan.step_examples * mean:,.0f} tokens at the tokenize report's mean of "
            f"{mean:,.0f}; "
            f"packed, each row of {n:,} tokens would hold ~{n / mean:,.0f} examples)"
        )
    return line + f"; packing would fill each row with whole examples up to {n:,} tokens"


def _rows(plan: MemoryPlan) -> list[tuple[str, float]]:
    s = plan.setup
    rows = [
        ("weights", plan.weights),
        ("gradients", plan.gradients),
        ("optimizer", plan.optimizer),
    ]
    if plan.embedding_params:
        rows.append(("  embed_tokens/lm_head in the three above", plan.embedding_state))
    rows += [
        ("activations", plan.activations),
        ("  checkpoints (a hidden state per layer)", plan.checkpoints),
        ("  layer activations" + (" (largest layer)" if s.gradient_checkpointing else ""),
         plan.layer_activations),
        ("  logits" + (" (fused LM head: tiles)" if s.fused_lm_head else ""), plan.logits),
        (f"  attention masks and scores ({s.attention_kind})", plan.attention),
    ]  # fmt: skip
    if s.zero_stage >= 3:
        rows.append(("ZeRO-3 gathered layer", plan.gathered))
    rows += [
        ("total", plan.total),
        (f"usable ({plan.gpu.memory_gib:g} GiB x {plan.gpu.usable_fraction:g})", plan.capacity),
    ]
    return rows


def render_table(plan: MemoryPlan) -> str:
    """A small plain-text table of the plan, GiB per GPU by component."""
    lines = [*_header(plan), "", f"{'':<42}{'GiB/GPU':>9}"]
    lines += [f"{label:<42}{value / GIB:>9.1f}" for label, value in _rows(plan)]
    lines.append(f"{'fits':<42}{'yes' if plan.fits else 'no':>9}")
    return "\n".join(lines)


def render_markdown(plan: MemoryPlan) -> str:
    """The table and the verdict as Markdown (for Kubeflow's UI)."""
    lines = ["# Memory plan", "", *(f"- {line}" for line in _header(plan)), ""]
    lines += ["| per GPU | GiB |", "| --- | ---: |"]
    lines += [f"| {label.strip()} | {value / GIB:.1f} |" for label, value in _rows(plan)]
    lines += [f"| fits | {'yes' if plan.fits else 'no'} |", "", f"**{verdict(plan)}**", ""]
    return "\n".join(lines)


def plan_metrics(plan: MemoryPlan) -> dict[str, float]:
    """The plan's numbers for Kubeflow's metrics table (GiB per GPU; fits as 0/1)."""
    s = plan.setup
    return {
        "fits": int(plan.fits),
        "total_gib_per_gpu": round(plan.total / GIB, 3),
        "capacity_gib_per_gpu": round(plan.capacity / GIB, 3),
        "weights_gib_per_gpu": round(plan.weights / GIB, 3),
        "gradients_gib_per_gpu": round(plan.gradients / GIB, 3),
        "optimizer_gib_per_gpu": round(plan.optimizer / GIB, 3),
        "activations_gib_per_gpu": round(plan.activations / GIB, 3),
        "gathered_gib_per_gpu": round(plan.gathered / GIB, 3),
        "params": plan.total_params,
        "trainable_params": plan.trainable_params,
        "nodes": s.num_nodes,
        "gpus_per_node": s.num_gpus,
        "gpus": s.world_size,
        "zero_stage": s.zero_stage,
        "tokens_per_gpu_per_step": plan.tokens,
        "tokens_per_optimizer_step": plan.step_tokens,
        "packing": int(s.packing),
        "attention_gib_per_gpu": round(plan.attention / GIB, 3),
    }


def _targets(setup: TrainingSetup) -> str:
    targets = setup.lora_target_modules
    return targets if isinstance(targets, str) else "+".join(targets)


def verdict(plan: MemoryPlan) -> str:
    """One sentence: what the run needs per GPU, what the GPU has, and what to do if short."""
    parts = [
        f"weights {_gib(plan.weights)}",
        f"gradients {_gib(plan.gradients)}",
        f"optimizer {_gib(plan.optimizer)}",
        f"activations {_gib(plan.activations)}",
    ]
    if plan.gathered:
        parts.append(f"ZeRO-3 gathered layer {_gib(plan.gathered)}")
    head = (
        f"{plan.model} with {plan.setup.method} needs about {_gib(plan.total)} GiB per GPU "
        f"({', '.join(parts)})"
    )
    usable = f"{_gpus(plan)} has {_gib(plan.capacity)} GiB usable"
    if plan.fits:
        return f"{head} and {usable}: it fits."
    return f"{head} but {usable}: it does not fit; {_advice(plan)}."


def _advice(plan: MemoryPlan) -> str:
    """What to change when the plan does not fit (ending with the cheaper embeddings option)."""
    advice = _scale_advice(plan)
    if plan.savable_embedding_params:
        advice += (
            f"; training only embed_tokens' new rows (trainable_embeddings: new_tokens) instead "
            f"of the whole table would save about {_gib(plan.embedding_saving)} GiB per GPU"
        )
    return advice


def _scale_advice(plan: MemoryPlan) -> str:
    s = plan.setup
    need = plan.min_gpus_zero3()
    if need is None:
        shrink = "shorten max_length" + f" ({s.max_length})"
        if s.batch_size > 1:
            shrink += f", lower per_device_train_batch_size ({s.batch_size})"
        if not s.gradient_checkpointing:
            shrink += ", turn on activation_checkpointing"
        if s.attention_kind == "eager":
            shrink += ", attend with sdpa or flash attention instead of eager"
        unsharded = plan.activations + plan.gather_unit
        return (
            f"even sharded with ZeRO-3 its activations and largest layer ({_gib(unsharded)} GiB) "
            f"exceed one GPU, so {shrink} or use a smaller model"
        )
    gpus = f"{need} {plan.gpu.name}"
    if s.num_nodes > 1:  # whole nodes of num_gpus each
        nodes = math.ceil(need / s.num_gpus)
        gpus = f"{nodes * s.num_gpus} {plan.gpu.name} ({nodes} nodes × {s.num_gpus} GPUs)"
    if s.zero_stage == 3:
        return f"use at least {gpus} with ZeRO-3 or a smaller model"
    return f"use ZeRO-3 across at least {gpus} or a smaller model"


# --------------------------------------------------------------------------- loading


BASE_MODEL_FILE = "base_model.json"
"""A model folder's reference to where its weights came from: ``{"ref": hub id or s3:// URI,
"path": local folder of the weights, "revision": ...}``; the plan shows the ``ref``."""
HUB_TIMEOUT = 10  # seconds for the one HEAD request that finds out whether the hub answers
_TRUE = ("1", "on", "yes", "true")


@dataclass(frozen=True)
class ModelConfig:
    """A base model's config.json, the name the plan shows, and where it was read."""

    config: dict
    name: str
    source: str  # "local folder", "Hugging Face cache", "Hugging Face hub" or "shipped copy"
    path: Path


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it, read now: ``HF_HUB_CACHE``,
    else ``HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache``)."""
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    xdg = env.get("XDG_CACHE_HOME") or str(Path("~/.cache"))
    return Path(env.get("HF_HOME") or str(Path(xdg) / "huggingface")).expanduser() / "hub"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(flag.strip().lower() in _TRUE for flag in flags)


def shipped_config_dir(model_id: str, models_dir: Path) -> Path:
    """The folder a hub model's shipped config.json lives in: ``<id with / as __>``."""
    return models_dir / model_id.replace("/", "__")


def _is_repo_id(text: str) -> bool:
    if "://" in text or text.startswith(("/", ".", "~")) or text.count("/") > 1:
        return False
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text) is not None and ".." not in text


def resolve_model_config(
    base_model: str, models_dir: Path = DEFAULT_CONFIGS_DIR / "models"
) -> ModelConfig:
    """Find a base model's config.json, in order (the first that has it wins):

    1. a local model folder (``base_model`` is a directory holding config.json). A folder with
       a :data:`BASE_MODEL_FILE` is named by its ``ref``; without a config.json of its own, its
       ``path`` folder's is read, else the ``ref`` is looked up as a hub id (steps 2-4);
    2. the Hugging Face cache (``huggingface_hub.try_to_load_from_cache``, in
       :func:`hf_cache_dir`);
    3. the hub, unless :func:`hub_offline`: one HEAD request, then ``hf_hub_download`` with
       ``HF_TOKEN``. Unreachable: on to 4 quietly; gated, missing or private: on to 4 too, but
       without a shipped copy that is the error;
    4. the copy shipped in ``models_dir/<hub id with / as __>/``, for machines without the hub.

    Raises:
        CharlieError: None of them has it (one sentence naming each place tried), or the
            file is not a JSON object.
    """
    name = Path(base_model.rstrip("/")).name or base_model
    model_id, revision = base_model, None
    tried: list[str] = []
    local = Path(base_model).expanduser()
    if local.is_dir():
        reference = local / BASE_MODEL_FILE
        if reference.is_file():
            ref = read_json_object(reference)
            model_id = str(ref.get("ref") or base_model)
            name = model_id
            revision = ref.get("revision") or None
            weights = Path(str(ref["path"])).expanduser() if ref.get("path") else None
            for folder in (local, weights):
                if folder is not None and (folder / "config.json").is_file():
                    path = folder / "config.json"
                    return ModelConfig(read_json_object(path), name, "local folder", path)
            tried.append(f"the folder {local} ({BASE_MODEL_FILE} names {model_id})")
        elif (local / "config.json").is_file():
            path = local / "config.json"
            return ModelConfig(read_json_object(path), name, "local folder", path)
        else:
            tried.append(f"the folder {local} (no config.json in it)")
    else:
        tried.append(f"a local folder (there is no {base_model})")

    hub_problem = ""
    if _is_repo_id(model_id):
        cache = hf_cache_dir()
        cached = _from_cache(model_id, revision, cache)
        if cached is not None:
            return ModelConfig(read_json_object(cached), name, "Hugging Face cache", cached)
        tried.append(f"the Hugging Face cache {cache}")
        if hub_offline():
            tried.append("the hub (HF_HUB_OFFLINE is set)")
        else:
            downloaded, hub_problem = _from_hub(model_id, revision, cache)
            if downloaded is not None:
                return ModelConfig(read_json_object(downloaded), name, "Hugging Face hub",
                                   downloaded)  # fmt: skip
            tried.append("the hub (unreachable)")

    if not _is_repo_id(model_id):  # an s3:// reference, or a path that is not there
        raise CharlieError(
            f"no config.json for {base_model}: tried {_and(tried)}, and {model_id} is not a hub "
            "id; point base_model at a model folder holding config.json."
        )
    shipped = shipped_config_dir(model_id, models_dir)
    if (shipped / "config.json").is_file():
        path = shipped / "config.json"
        return ModelConfig(read_json_object(path), name, "shipped copy", path)
    if hub_problem:
        raise CharlieError(f"{hub_problem}, or put a copy of its config.json in {shipped}/.")
    tried.append(f"the shipped copies in {models_dir}/ (no {shipped.name}/)")
    raise CharlieError(
        f"no config.json for {base_model}: tried {_and(tried)}; point base_model at a model "
        f"folder, download it where the hub is reachable (`hf download {model_id} config.json`) "
        f"or put a copy of it in {shipped}/."
    )


def _and(items: list[str]) -> str:
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else "".join(items)


def _from_cache(model_id: str, revision: str | None, cache: Path) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(model_id, "config.json", cache_dir=cache, revision=revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _from_hub(model_id: str, revision: str | None, cache: Path) -> tuple[Path | None, str]:
    """config.json downloaded from the hub, or None and why not ("" when unreachable)."""
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        return None, ""
    token = os.environ.get("HF_TOKEN") or None
    try:
        # One HEAD request first: hf_hub_download retries an unreachable hub for ~20 s.
        url = hf_hub_url(model_id, "config.json", revision=revision)
        get_hf_file_metadata(url, token=token, timeout=HUB_TIMEOUT)
        path = hf_hub_download(model_id, "config.json", revision=revision, cache_dir=cache,
                               token=token, etag_timeout=HUB_TIMEOUT)  # fmt: skip
    except GatedRepoError:
        how = "set HF_TOKEN to a token of an account that has accepted its licence"
        return None, f"{model_id} is gated on the Hugging Face hub: {how}"
    except RepositoryNotFoundError:
        how = "check base_model (set HF_TOKEN if it is private)"
        return None, f"{model_id} is not a model on the Hugging Face hub: {how}"
    except RevisionNotFoundError:
        return None, f"{model_id} has no revision {revision} on the Hugging Face hub: fix it"
    except RemoteEntryNotFoundError:
        return None, f"{model_id} on the Hugging Face hub has no config.json: check base_model"
    except LocalEntryNotFoundError:
        return None, ""
    except Exception:  # the hub did not answer (DNS, proxy, timeout): fall through
        return None, ""
    return Path(path), ""


def load_model_config(base_model: str, models_dir: Path = DEFAULT_CONFIGS_DIR / "models") -> dict:
    """Read a base model's config.json (see :func:`resolve_model_config`).

    Raises:
        CharlieError: No place has it, or it is not a JSON object.
    """
    return resolve_model_config(base_model, models_dir).config


def load_gpu(gpu_type: str, gpus_file: Path = DEFAULT_CONFIGS_DIR / "gpus.yaml") -> Gpu:
    """Look a GPU type up in configs/gpus.yaml.

    Raises:
        CharlieError: The file is missing or malformed, or the type is not in it.
    """
    try:
        data = yaml.safe_load(gpus_file.read_text(encoding="utf-8"))
        gpus = {str(k): float(v) for k, v in data["gpus"].items()}
        fraction = float(data.get("usable_fraction", 0.9))
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError):
        raise CharlieError(
            f"{gpus_file} cannot be read as a 'gpus' mapping of GPU type to GiB."
        ) from None
    if gpu_type not in gpus:
        raise CharlieError(f"unknown gpu_type '{gpu_type}'; known types: {', '.join(gpus)}.")
    if not 0 < fraction <= 1:
        raise CharlieError(f"{gpus_file}: usable_fraction must be in (0, 1], not {fraction}.")
    return Gpu(gpu_type, gpus[gpu_type], fraction)


def planned_max_length(
    cfg: TrainConfig, model_config: Mapping[str, Any] | None = None
) -> tuple[int, str]:
    """The max_length to plan for, and where it came from ("" when the config sets it).

    ``auto``: the length in ``<dataset_dir>/tokenize_report.json`` when tokenize has run, else
    the base model's context length (the most auto can choose).

    Raises:
        CharlieError: ``auto`` with neither a report nor a known context length.
    """
    if cfg.max_length != "auto":
        return cfg.max_length, ""
    report = read_tokenize_report(cfg.dataset_dir) or {}
    chosen = report.get("max_length")
    if isinstance(chosen, int) and not isinstance(chosen, bool) and chosen > 0:
        return chosen, f"auto: from {Path(cfg.dataset_dir) / REPORT}"
    context = context_length(model_config or {})
    if context is None:
        raise CharlieError(
            f"max_length is auto but {cfg.dataset_dir} has no {REPORT} and the base model's "
            "config.json has no max_position_embeddings: run `charlie tokenize` first or set "
            "max_length."
        )
    return context, "auto: the base model's context; no tokenize report yet"


def training_setup(
    cfg: TrainConfig,
    num_gpus: int | None = None,
    model_config: Mapping[str, Any] | None = None,
    num_nodes: int = 1,
) -> TrainingSetup:
    """The memory-relevant settings of a training config, TRL's defaults filling the gaps.

    Reads the DeepSpeed JSON the config names, for its ZeRO stage, and for ``max_length:
    auto`` the tokenize report or ``model_config``'s context (:func:`planned_max_length`); the
    report's mean train example, when there is one, for what packing changes.
    ``num_gpus`` (default: the config's) is per node, ``num_nodes`` the nodes.

    Raises:
        CharlieError: As :func:`planned_max_length`, or packing ``charlie train`` would refuse
            (wrapped, or on an sdpa or eager attention the config names).
    """
    implementation = cfg.attn_implementation
    # auto packs on the flash kernel it needs, or not at all: only wrapped is refused then
    if problem := packing_problem(cfg, "flash" if implementation == "auto" else implementation):
        raise CharlieError(problem)
    max_length, source = planned_max_length(cfg, model_config)
    sft = cfg.sft_args
    targets = cfg.lora_target_modules
    if targets == AUTO:  # the list `charlie train` will use (all-linear for unknown types)
        targets = resolve_targets(targets, model_config, warn=False)
    checkpointing = sft.get("activation_checkpointing", sft.get("gradient_checkpointing"))
    bf16 = sft.get("bf16")  # TRL: None means bf16 unless fp16 is set
    half = bool(sft.get("fp16")) or (bf16 if bf16 is not None else True)
    return TrainingSetup(
        method=cfg.method,
        max_length=max_length,
        max_length_source=source,
        batch_size=int(sft.get("per_device_train_batch_size", 8)),
        lora_r=cfg.lora_r,
        lora_target_modules=targets if isinstance(targets, str) else tuple(targets),
        lora_dropout=cfg.lora_dropout,
        # charlie tokenize adds the thesis tokens to any base tokenizer, so the embeddings grow
        # and are trained whole (embed_tokens only in the new rows with new_tokens).
        train_embeddings=True,
        embedding_rows_only=cfg.trainable_embeddings == "new_tokens",
        half_precision=half,
        gradient_checkpointing=True if checkpointing is None else bool(checkpointing),
        zero_stage=cfg.zero_stage(),
        num_gpus=cfg.num_gpus if num_gpus is None else num_gpus,
        num_nodes=num_nodes,
        accumulation=int(sft.get("gradient_accumulation_steps", 1)),
        packing=packs(cfg),
        attention=implementation,
        mean_example_tokens=mean_example_tokens(cfg),
        # a plan is for GPUs: auto is fused there (charlie.training.trainer.use_fused_lm_head)
        fused_lm_head=cfg.fused_lm_head is not False,
    )


def mean_example_tokens(cfg: TrainConfig) -> float | None:
    """The mean tokens of a train example in the config's tokenize report, or None."""
    report = read_tokenize_report(cfg.dataset_dir) or {}
    train = (report.get("splits") or {}).get("train") or {}
    mean = (train.get("tokens") or {}).get("mean")
    return float(mean) if isinstance(mean, int | float) and mean > 0 else None


def is_cpu(gpu_type: str) -> bool:
    """Whether a gpu_type means the CPU (``CPU``, any case): no GPU memory to plan."""
    return gpu_type.strip().upper() == "CPU"


def no_gpu_sentence(cfg: TrainConfig) -> str:
    """What the plan says for a CPU run, in one sentence."""
    return (
        f"{cfg.base_model} trains on the CPU (gpu_type {cfg.gpu_type}): there is no GPU memory "
        "to check."
    )


def plan_for(
    cfg: TrainConfig,
    *,
    num_gpus: int | None = None,
    gpu_type: str | None = None,
    configs_dir: Path = DEFAULT_CONFIGS_DIR,
    num_nodes: int = 1,
) -> MemoryPlan:
    """Plan a training config: find the model's config.json and the GPU type, then estimate.

    Args:
        cfg: The training config.
        num_gpus: Overrides ``cfg.num_gpus`` (GPUs per node).
        gpu_type: Overrides ``cfg.gpu_type``.
        configs_dir: Holds ``models/`` and ``gpus.yaml``.
        num_nodes: Nodes of ``num_gpus`` GPUs each; ZeRO shards across all of them.

    Raises:
        CharlieError: No config.json is found (:func:`resolve_model_config`), the GPU type is
            unknown (``CPU`` included: see :func:`is_cpu`), or a value is out of range.
    """
    gpu = load_gpu(gpu_type or cfg.gpu_type, configs_dir / "gpus.yaml")
    found = resolve_model_config(cfg.base_model, configs_dir / "models")
    setup = training_setup(cfg, num_gpus, found.config, num_nodes)
    plan = estimate(model_shape(found.config, found.name), setup, gpu)
    return replace(plan, config_source=f"{found.source}, {found.path}")


def check_fits(
    cfg: TrainConfig,
    *,
    num_gpus: int | None = None,
    gpu_type: str | None = None,
    configs_dir: Path = DEFAULT_CONFIGS_DIR,
    num_nodes: int = 1,
) -> MemoryPlan:
    """:func:`plan_for`, refusing a run that does not fit: call it before loading a model.

    Returns:
        The plan, when it fits.

    Raises:
        DoesNotFit: The verdict sentence (exit code 1).
        CharlieError: As :func:`plan_for`.
    """
    plan = plan_for(
        cfg, num_gpus=num_gpus, gpu_type=gpu_type, configs_dir=configs_dir, num_nodes=num_nodes
    )
    if not plan.fits:
        raise DoesNotFit(verdict(plan))
    return plan
