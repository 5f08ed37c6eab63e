"""Will a fine-tuning run fit? Per-GPU memory, estimated from the base model's config.json.

``charlie plan`` prints the estimate; ``charlie train`` calls :func:`check_fits` to refuse a run
that cannot fit before it loads anything. The core is pure arithmetic on a config dict
(:func:`model_shape`, :func:`estimate`, :func:`render_table`, :func:`verdict`); only
:func:`load_model_config`, :func:`load_gpu` and :func:`plan_for` read files.

Parameters (exact, from config.json)
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
    DeepSeek-V3's report, plus 0.85e9 of indexers). Other MoE layouts (Mixtral's
    ``num_local_experts``...) are refused rather than miscounted.

Memory per GPU (GiB = 2^30 bytes)
    weights: every base parameter at 2 bytes when ``bf16``/``fp16`` is on (TRL's default) or 4
        in fp32. QLoRA stores every linear weight (experts included) in 4-bit NF4 with double
        quantisation: 0.5 byte + 8-bit absmax per 64 weights + fp32 scale per 256 blocks =
        0.5159 byte/param; embeddings, lm_head, norms, routers and biases stay 16-bit. Trainable
        parameters that are copies (LoRA adapters, the ``modules_to_save`` copies of
        embed_tokens and lm_head) add their own weight bytes. Routers, which transformers keeps
        in fp32, are counted at 16 bits (< 0.2 GiB off for DeepSeek).
    trainable parameters: full fine-tuning trains everything. LoRA/QLoRA train r x (in + out)
        per targeted linear; ``all-linear`` targets every linear layer except lm_head, MoE
        experts and the indexer included (as PEFT does when experts are ``nn.Linear``); a list
        matches module names or dotted suffixes, a regex string is matched against
        ``model.layers.<first layer of each kind>.<module path>``. When special tokens are added
        (``charlie tokenize`` always adds the thesis tokens) embed_tokens and lm_head are
        trained whole, as ``modules_to_save``.
    gradients + optimizer: 16 bytes per trainable parameter in all, AdamW mixed precision as in
        the ZeRO paper: with 16-bit weights, 2 (weight, above) + 2 (gradient) + 12 (fp32 master
        copy and two fp32 moments); in fp32, 4 + 4 + 8. This is an upper bound for a plain
        bf16 Trainer run, whose bf16 states need 8 bytes.
    activations: a step holds ``per_device_train_batch_size x max_length`` tokens (the worst
        step: a full batch of maximal length). With ``max_length: auto`` the length is the one
        ``charlie tokenize`` chose (its report in the config's dataset_dir), or before that the
        base model's context length (the most auto can choose); the table says which. Per token and layer, the 16-bit elements saved
        for the backward pass: each RMSNorm 3 x width (its input plus the fp32 upcast it
        multiplies) and its output once; Llama attention 2q + 2kv (rotated q, k, v for the
        kernel, and the attention output for o_proj); MLA 4 q_lora_rank + 4 kv_lora_rank (latent
        norms) + 2 heads x qk_head_dim (q, k) + heads x (nope + v) (kv_b output) + heads x v
        (attention output); SwiGLU 4 x intermediate (gate, up, silu, product); MoE 2 hidden
        (router's fp32 input) + 4 experts (fp32 logits and scores) + top-k x (2 hidden + 4
        moe_intermediate) + the shared experts' SwiGLU. LoRA adds r per targeted linear a token
        passes through, plus 1.5 x in_features when ``lora_dropout`` > 0 (the dropped copy and
        its mask). The attention kernel is assumed memory-efficient (no seq x seq scores);
        eager attention or the reference DSA indexer need more. With gradient checkpointing
        the step keeps one hidden state per layer (the checkpoints) plus the largest layer's
        activations while it is recomputed; without it, every layer's. Logits cost 10 bytes per
        token per vocabulary entry (16-bit logits, the fp32 copy the loss takes, its fp32
        gradient) and no checkpointing avoids them. Activations are never sharded.
    ZeRO (DeepSpeed, across ``num_gpus``): stage 1 divides the optimizer state, stage 2 also the
        gradients, stage 3 also the weights, and stage 3 adds the largest unit it gathers whole
        for a forward/backward (the biggest layer with all its experts, or embed_tokens or
        lm_head). Without ZeRO every GPU holds everything (DDP).
    capacity: the GPU's memory x the usable fraction from configs/gpus.yaml (0.9 leaves room for
        the CUDA context and fragmentation). It fits when the total is at most the capacity.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from charlie.errors import CharlieError
from charlie.io import read_json_object
from charlie.training.config import REPORT, context_length, read_tokenize_report

if TYPE_CHECKING:
    from charlie.training.config import TrainConfig

GIB = 2**30
DEFAULT_CONFIGS_DIR = Path("configs")

# NF4 with double quantisation (bitsandbytes, blocksize 64): 4 bits per weight, an 8-bit absmax
# per 64 weights and an fp32 second-level scale per 256 absmax blocks.
QLORA_BYTES_PER_PARAM = 0.5 + (8 / 64 + 32 / (64 * 256)) / 8
TRAINABLE_BYTES = 16  # weight + gradient + AdamW state per trainable parameter, in all
LOGITS_BYTES = 10  # 16-bit logits + the loss's fp32 copy + its fp32 gradient, per token x vocab
ACTIVATION_BYTES = 2  # activations are 16-bit (the plan's element counts are 16-bit elements)

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


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know about a model: its parameters, grouped, and widths."""

    name: str
    hidden_size: int
    vocab_size: int
    embed_params: int
    lm_head_params: int  # 0 when tied to the embeddings
    final_norm_params: int
    kinds: tuple[LayerKind, ...]

    @property
    def num_layers(self) -> int:
        """Decoder layers."""
        return sum(kind.count for kind in self.kinds)

    @property
    def linear_weights(self) -> int:
        """Weights of the decoder layers' linears: what QLoRA quantises."""
        return sum(kind.count * sum(lin.weights for lin in kind.linears) for kind in self.kinds)

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


def model_shape(config: Mapping[str, Any], name: str = "model") -> ModelShape:
    """Group a model's parameters from its config.json (Llama-style dense or DeepSeek-V3 MoE).

    Args:
        config: The parsed config.json.
        name: The model's name, for messages and the table.

    Returns:
        The model's shape; ``total_params`` is exact for the supported families.

    Raises:
        CharlieError: A key the count needs is missing, or the MoE layout is not DeepSeek's.
    """
    if "text_config" in config and "hidden_size" not in config:
        config = config["text_config"]  # multimodal wrappers keep the language model here
    if "n_routed_experts" not in config and (
        config.get("num_local_experts") or config.get("num_experts")
    ):
        raise CharlieError(
            f"{name} is a mixture-of-experts model whose layout the planner does not know "
            "(it knows Llama-style dense models and DeepSeek-V3's n_routed_experts)."
        )
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
    )


# --------------------------------------------------------------------------- LoRA


def is_target(linear: Linear, targets: str | Sequence[str], layer_index: int = 0) -> bool:
    """Whether PEFT's ``target_modules`` would wrap this linear (lm_head is never one).

    Args:
        linear: A decoder layer's linear.
        targets: ``"all-linear"``, a regex matched against the module's full path, or a list of
            module names / dotted suffixes.
        layer_index: The decoder layer the path is built with, for regex targets.
    """
    if targets == "all-linear":
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, f"model.layers.{layer_index}.{linear.path}") is not None
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
            if is_target(lin, targets, kind.first_index):
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
    half_precision: bool = True  # bf16 or fp16 (TRL's default: bf16)
    gradient_checkpointing: bool = True  # TRL's default
    zero_stage: int = 0
    num_gpus: int = 1
    max_length_source: str = ""  # with max_length: auto, where the length came from


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

    @property
    def tokens(self) -> int:
        """Tokens one GPU holds in a step: per_device_train_batch_size x max_length."""
        return self.setup.batch_size * self.setup.max_length

    @property
    def activations(self) -> float:
        """Checkpoints + layer activations + logits."""
        return self.checkpoints + self.layer_activations + self.logits

    def min_gpus_zero3(self) -> int | None:
        """The fewest GPUs of this type that would fit with ZeRO-3, or None if none would.

        With ZeRO-3 a GPU holds its share of the model states plus what is never sharded
        (activations and the gathered unit), so more GPUs help only while that rest fits.
        """
        room = self.capacity - self.activations - self.gather_unit
        if room <= 0:
            return None
        return max(1, math.ceil(self.model_states / room))


def _layer_lora_activations(kind: LayerKind, setup: TrainingSetup) -> int:
    """Elements LoRA adds per token in one layer: lora_A's output, and dropout's input copy."""
    if setup.method == "full":
        return 0
    extra = 0
    for lin in kind.linears:
        if lin.active and is_target(lin, setup.lora_target_modules, kind.first_index):
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
    if setup.num_gpus < 1 or setup.zero_stage not in (0, 1, 2, 3):
        raise CharlieError(
            f"num_gpus must be at least 1 and the ZeRO stage 0-3 (got {setup.num_gpus} "
            f"and {setup.zero_stage})."
        )
    if setup.method not in ("full", "lora", "qlora"):
        raise CharlieError(f"method must be full, lora or qlora, not {setup.method!r}.")
    total = shape.total_params
    half = setup.half_precision or setup.method == "qlora"  # bnb computes in 16-bit
    wbytes = 2 if half else 4

    # ---- trainable parameters
    if setup.method == "full":
        adapters, embeddings, trainable = 0, 0, total
    else:
        adapters = lora_params(shape, setup.lora_r, setup.lora_target_modules)
        embeddings = shape.embed_params + shape.lm_head_params if setup.train_embeddings else 0
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
        linear_w = sum(lin.weights for lin in kind.linears)
        stored = linear_w * (QLORA_BYTES_PER_PARAM if setup.method == "qlora" else wbytes)
        return stored + (kind.params - linear_w) * wbytes

    unit = max(
        [layer_bytes(k) for k in shape.kinds]
        + [shape.embed_params * wbytes, shape.lm_head_params * wbytes]
    )

    # ---- activations
    tokens = setup.batch_size * setup.max_length
    per_layer = {
        k.name: k.activation_elements + _layer_lora_activations(k, setup) for k in shape.kinds
    }
    if setup.gradient_checkpointing:
        checkpoints = tokens * shape.num_layers * shape.hidden_size * ACTIVATION_BYTES
        layer_acts = tokens * max(per_layer.values()) * ACTIVATION_BYTES
    else:
        checkpoints = 0
        layer_acts = (
            tokens * sum(k.count * per_layer[k.name] for k in shape.kinds) * ACTIVATION_BYTES
        )
    logits = tokens * shape.vocab_size * LOGITS_BYTES

    # ---- ZeRO sharding
    n, stage = setup.num_gpus, setup.zero_stage
    model_states = weights + gradients + optimizer
    per_gpu_optimizer = optimizer / n if stage >= 1 else optimizer
    per_gpu_gradients = gradients / n if stage >= 2 else gradients
    per_gpu_weights = weights / n if stage >= 3 else weights
    gathered = unit if stage >= 3 else 0.0

    per_gpu = per_gpu_weights + gathered + per_gpu_gradients + per_gpu_optimizer
    per_gpu += checkpoints + layer_acts + logits
    return MemoryPlan(
        model=shape.name,
        setup=setup,
        gpu=gpu,
        total_params=total,
        trainable_params=trainable,
        lora_params=adapters,
        embedding_params=embeddings,
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
    )


# --------------------------------------------------------------------------- reporting


def _gib(value: float) -> str:
    gib = value / GIB
    return f"{gib:.0f}" if gib >= 10 else f"{gib:.1f}" if gib >= 1 else f"{gib:.2f}"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def _gpus(plan: MemoryPlan) -> str:
    n = plan.setup.num_gpus
    return f"one {plan.gpu.name}" if n == 1 else f"each of {n} {plan.gpu.name}"


def render_table(plan: MemoryPlan) -> str:
    """A small plain-text table of the plan, GiB per GPU by component."""
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
    rows = [
        ("weights", plan.weights),
        ("gradients", plan.gradients),
        ("optimizer", plan.optimizer),
        ("activations", plan.activations),
        ("  checkpoints (a hidden state per layer)", plan.checkpoints),
        ("  layer activations" + (" (largest layer)" if s.gradient_checkpointing else ""),
         plan.layer_activations),
        ("  logits", plan.logits),
    ]  # fmt: skip
    if s.zero_stage >= 3:
        rows.append(("ZeRO-3 gathered layer", plan.gathered))
    rows += [
        ("total", plan.total),
        (f"usable ({plan.gpu.memory_gib:g} GiB x {plan.gpu.usable_fraction:g})", plan.capacity),
    ]
    lines = [
        f"{plan.model}, {how}, {s.num_gpus} x {plan.gpu.name}, {zero}",
        f"parameters {_count(plan.total_params)}, trainable {trainable}",
        f"{plan.tokens:,} tokens per GPU per step (batch {s.batch_size} x max_length "
        f"{s.max_length}{f', {s.max_length_source}' if s.max_length_source else ''}), "
        f"gradient checkpointing {checkpointing}",
        "",
        f"{'':<42}{'GiB/GPU':>9}",
    ]
    lines += [f"{label:<42}{value / GIB:>9.1f}" for label, value in rows]
    lines.append(f"{'fits':<42}{'yes' if plan.fits else 'no':>9}")
    return "\n".join(lines)


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
    s = plan.setup
    need = plan.min_gpus_zero3()
    if need is None:
        shrink = "shorten max_length" + f" ({s.max_length})"
        if s.batch_size > 1:
            shrink += f", lower per_device_train_batch_size ({s.batch_size})"
        if not s.gradient_checkpointing:
            shrink += ", turn on gradient_checkpointing"
        unsharded = plan.activations + plan.gather_unit
        return (
            f"even sharded with ZeRO-3 its activations and largest layer ({_gib(unsharded)} GiB) "
            f"exceed one GPU, so {shrink} or use a smaller model"
        )
    if s.zero_stage == 3:
        return f"use at least {need} {plan.gpu.name} with ZeRO-3 or a smaller model"
    return f"use ZeRO-3 across at least {need} {plan.gpu.name} or a smaller model"


# --------------------------------------------------------------------------- loading


def model_config_path(base_model: str, models_dir: Path) -> Path:
    """Where a base model's config.json is read from: a local model directory, or the copy
    shipped in ``models_dir/<hub id with / as __>/`` (no machine here reaches the hub)."""
    local = Path(base_model).expanduser()
    if (local / "config.json").is_file():
        return local / "config.json"
    return models_dir / base_model.replace("/", "__") / "config.json"


def load_model_config(base_model: str, models_dir: Path = DEFAULT_CONFIGS_DIR / "models") -> dict:
    """Read a base model's config.json (see :func:`model_config_path`).

    Raises:
        CharlieError: It is not shipped, or is not a JSON object.
    """
    path = model_config_path(base_model, models_dir)
    if not path.is_file():
        raise CharlieError(
            f"no config.json for {base_model}: put a copy of it in {path.parent}/ "
            "(or point base_model at a local model directory)."
        )
    return read_json_object(path)


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
    cfg: TrainConfig, num_gpus: int | None = None, model_config: Mapping[str, Any] | None = None
) -> TrainingSetup:
    """The memory-relevant settings of a training config, TRL's defaults filling the gaps.

    Reads the DeepSpeed JSON the config names, for its ZeRO stage, and for ``max_length:
    auto`` the tokenize report or ``model_config``'s context (:func:`planned_max_length`).
    """
    max_length, source = planned_max_length(cfg, model_config)
    sft = cfg.sft_args
    targets = cfg.lora_target_modules
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
        # and are trained whole.
        train_embeddings=True,
        half_precision=half,
        gradient_checkpointing=True if checkpointing is None else bool(checkpointing),
        zero_stage=cfg.zero_stage(),
        num_gpus=cfg.num_gpus if num_gpus is None else num_gpus,
    )


def plan_for(
    cfg: TrainConfig,
    *,
    num_gpus: int | None = None,
    gpu_type: str | None = None,
    configs_dir: Path = DEFAULT_CONFIGS_DIR,
) -> MemoryPlan:
    """Plan a training config: read the model's config.json and the GPU type, then estimate.

    Args:
        cfg: The training config.
        num_gpus: Overrides ``cfg.num_gpus``.
        gpu_type: Overrides ``cfg.gpu_type``.
        configs_dir: Holds ``models/`` and ``gpus.yaml``.

    Raises:
        CharlieError: The model's config.json is not shipped, the GPU type is unknown, or a
            value is out of range.
    """
    gpu = load_gpu(gpu_type or cfg.gpu_type, configs_dir / "gpus.yaml")
    config = load_model_config(cfg.base_model, configs_dir / "models")
    name = Path(cfg.base_model.rstrip("/")).name or cfg.base_model
    return estimate(model_shape(config, name), training_setup(cfg, num_gpus, config), gpu)


def check_fits(
    cfg: TrainConfig,
    *,
    num_gpus: int | None = None,
    gpu_type: str | None = None,
    configs_dir: Path = DEFAULT_CONFIGS_DIR,
) -> MemoryPlan:
    """:func:`plan_for`, refusing a run that does not fit: call it before loading a model.

    Returns:
        The plan, when it fits.

    Raises:
        DoesNotFit: The verdict sentence (exit code 1).
        CharlieError: As :func:`plan_for`.
    """
    plan = plan_for(cfg, num_gpus=num_gpus, gpu_type=gpu_type, configs_dir=configs_dir)
    if not plan.fits:
        raise DoesNotFit(verdict(plan))
    return plan
