"""Hardware truth: `charlie train`'s real paths and generation on one GPU, timed, with MFU and
the memory plan beside the measured peak.

    python benchmarks/bench_gpu.py --out bench_gpu.json            # on a CUDA machine (minutes)
    python benchmarks/bench_gpu.py --dry-run [--out FILE]          # tiny models, seconds, any CPU
    bash benchmarks/gpu_check.sh                                   # on a lent GPU machine
    python benchmarks/bench_gpu.py --wheels .gpu-wheels            # (make gpu-wheels) sizes

Nothing is downloaded. The tokenizer is trained as ``charlie init-model`` trains it
(:func:`charlie.training.tokens.train_tokenizer`, on synthetic text), the thesis tokens are
added as ``charlie tokenize`` adds them, and two random-weight base models are saved locally:
a ~1.1B Llama (:func:`charlie.training.tokens.build_tiny_model` at Llama-3.2-1B's widths: 16
layers of 2048, GQA 32/8 heads, SwiGLU 8192, untied 32k vocabulary) and a tiny
``deepseek_v32`` (the shipped config.json, configs/models/deepseek-ai__DeepSeek-V3.2-Exp,
shrunk: MLA, the DSA indexer, fused MoE experts). The tokenized examples are random ids of the
base vocabulary (throughput does not depend on which tokens), every one ``max_length`` long,
its second half the completion: no padding, and the planner's worst case is the real case.

Each training row is :func:`charlie.training.sft.train`, the function ``charlie train`` calls,
on a shipped config (configs/sft_llama3_8b_qlora_1gpu.yaml for LoRA/QLoRA,
configs/sft_config_multigpu.yaml for ZeRO-3 with configs/deepspeed/zero3.json,
configs/sft_config.yaml for DeepSeek) with the base model, data, lengths, batch, steps and the
row's switches overridden: ``max_steps`` = warm-up + timed steps, no evaluation or checkpoint
during the run. The pipeline's SFTTrainer is subclassed only to add a timer: the tokens of
each micro-batch (non-padding) and a synchronised clock at each optimizer step's end. Peak GPU
memory is ``torch.cuda.max_memory_allocated`` from before loading to the end of training
(before saving and the final evaluation), beside ``charlie plan``'s estimate
(:func:`charlie.plan.plan_for`, H200-141GB, one GPU) and their ratio. Packing and padding-free
rows run only where :func:`charlie.training.config.choose_attention` keeps them (a flash,
varlen kernel); elsewhere they are reported as skipped, with the project's reason. Generation
is :func:`charlie.inference.generate` (what ``greedy_complete`` and ``charlie evaluate`` call)
at batch 1, 16 and 64 on the Llama, loaded as evaluation loads a base
(:func:`charlie.models.load_base_model`) and moved to the GPU in bf16 (``charlie evaluate``
itself never moves its model off the CPU), with the stop tokens' output rows zeroed so that a
random model runs to ``max_new_tokens`` rather than stopping by chance.

On CUDA each row runs in its own Python process (a CUDA fault, an out-of-memory or ZeRO-3's
process-wide state cannot reach the next row; each peak is its own); without a GPU, and with
``--isolate none``, in this one. Rows are run most important first and the JSON is
rewritten after each, so a run cut short by ``--budget-s`` (or the machine's limit) keeps what
it measured. ``--dry-run``: the same rows with tiny models and a couple of steps, on the CPU
where there is no GPU: bf16 rows train in fp32 (as ``charlie train`` does there) and rows that
need CUDA (QLoRA's 4-bit NF4 kernels, ZeRO-3 on a GPU) are reported as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import importlib.metadata as metadata
import importlib.util
import json
import logging
import math
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("charlie") is None:  # the GPU machine: the tree's src/, no install
    sys.path.insert(0, str(REPO / "src"))

PEAK_TFLOPS = 790.0
"""The H200's dense bf16 rate as measured on this workplace's machines (an 8192^3 bf16 matmul:
769-798 TFLOP/s; the datasheet's 989 is not reached by any real kernel)."""
GPU_TYPE = "H200-141GB"  # configs/gpus.yaml: what `charlie plan` plans for
GIB = 2**30
LIMIT_MIB = 64  # what travels to a lent GPU machine: the working tree and carried paths
VERSIONS = ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "bitsandbytes",
            "deepspeed", "tokenizers", "huggingface_hub", "pydantic", "pyarrow", "numpy")  # fmt: skip
CARRIED = ("transformers", "peft", "trl", "datasets", "dill", "multiprocess", "bitsandbytes",
           "pydantic", "pydantic_core", "annotated-types", "typing-inspection",
           "typing_extensions", "hjson")  # fmt: skip
"""Downloaded as wheels for the GPU machine (`make gpu-wheels`), at constraints.txt's pins:
what its image lacks (trl, datasets and their dill/multiprocess, bitsandbytes, pydantic for
Charlie's configs and DeepSpeed, hjson for DeepSpeed) or has at a version Charlie cannot run
on (transformers 5.17 there has no ``activation_checkpointing`` training argument; peft).
DeepSpeed has no wheel on PyPI: the target builds one (pure Python, ops compiled on use).
Charlie itself is not a wheel: its src/ travels with the working tree on every run (a wheel
would be a stale copy, and pyproject's requires-python refuses the machine's 3.12)."""
FORMULA = (
    "MFU = FLOPs/s over {peak:g} TFLOP/s (the H200's dense bf16 as measured here). Training: "
    "6 x N x tokens/s, N = every parameter of the model (the base's, frozen, plus LoRA's; "
    "embeddings included), tokens = the real (non-padding) tokens of the timed steps; 6 = 2 "
    "FLOPs per multiply-add x (forward + backward's 2), the convention that makes runs "
    "comparable, not the work done: LoRA computes no weight gradient of the frozen base (~4N), "
    "and checkpointing's recomputed forward (+2N) is not counted (MFU, not HFU). Generation: "
    "2 x N x new tokens/s, decode only (the prompts' prefill not counted)."
)


# --------------------------------------------------------------------------- what is measured


@dataclasses.dataclass(frozen=True)
class Scale:
    """Model widths, lengths and step counts: the real run's or the dry run's."""

    name: str
    llama: dict[str, int]  # build_tiny_model's keyword arguments
    deepseek: dict[str, int]  # overrides of the shipped DeepSeek-V3.2 config.json
    vocab_size: int  # the BPE tokenizer's target size
    corpus: int  # synthetic texts it is trained on
    max_length: int
    batch: int
    deepseek_max_length: int
    deepseek_batch: int
    warmup: int
    steps: int
    new_tokens: int  # generation's max_new_tokens
    prompt_words: int
    row_timeout_s: float
    threads: int | None = None  # torch's CPU threads (the config's num_threads); None: torch's


FULL = Scale(
    name="full",
    llama=dict(hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8,
               intermediate_size=8192, max_positions=4096),
    deepseek=dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                  num_hidden_layers=4, first_k_dense_replace=1, n_routed_experts=16,
                  num_experts_per_tok=4, n_group=4, topk_group=2, n_shared_experts=1,
                  num_attention_heads=4, num_key_value_heads=4, q_lora_rank=128,
                  kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
                  index_n_heads=4, index_head_dim=32, index_topk=256,
                  max_position_embeddings=4096),
    vocab_size=32_000, corpus=2_000, max_length=2048, batch=8, deepseek_max_length=1024,
    deepseek_batch=4, warmup=3, steps=10, new_tokens=128, prompt_words=150, row_timeout_s=240,
)  # fmt: skip
DRY = Scale(
    name="dry-run",
    llama=dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
               max_positions=256),
    deepseek=dict(hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                  num_hidden_layers=2, first_k_dense_replace=1, n_routed_experts=4,
                  num_experts_per_tok=2, n_group=2, topk_group=1, n_shared_experts=1,
                  num_attention_heads=2, num_key_value_heads=2, q_lora_rank=16, kv_lora_rank=8,
                  qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, index_n_heads=2,
                  index_head_dim=8, index_topk=16, max_position_embeddings=256),
    vocab_size=400, corpus=100, max_length=64, batch=2, deepseek_max_length=48,
    deepseek_batch=2, warmup=1, steps=2, new_tokens=4, prompt_words=20, row_timeout_s=120,
    threads=1,  # tiny matrices: a second thread only waits, and on a busy machine for long
)  # fmt: skip

LLAMA_CONFIG = "sft_llama3_8b_qlora_1gpu.yaml"
ZERO3_CONFIG = "sft_config_multigpu.yaml"
DEEPSEEK_CONFIG = "sft_config.yaml"


@dataclasses.dataclass(frozen=True)
class Row:
    """One measurement: a training run of a shipped config with switches, or generation."""

    slug: str
    kind: str  # "train" or "generate"
    model: str = "llama"  # or "deepseek"
    config: str = LLAMA_CONFIG
    method: str = "lora"
    checkpointing: bool = True
    zero3: bool = False
    packing: str = ""  # "", "packing" (bfd) or "padding_free"
    batch: int = 0  # generation's batch size

    @property
    def label(self) -> str:
        if self.kind == "generate":
            return f"generate, batch {self.batch}"
        what = {"lora": "LoRA", "qlora": "QLoRA NF4"}[self.method]
        parts = [what, *(["ZeRO-3"] if self.zero3 else [])]
        parts += [{"packing": "packed (bfd)", "padding_free": "padding-free"}.get(self.packing, "")]
        parts += ["ckpt" if self.checkpointing else "no ckpt"]
        return " ".join(p for p in parts if p)


ROWS: tuple[Row, ...] = (  # most important first: a run cut short keeps these
    Row("llama-lora", "train"),
    Row("llama-qlora", "train", method="qlora"),
    Row("llama-zero3", "train", config=ZERO3_CONFIG, zero3=True),
    Row("gen-b1", "generate", batch=1),
    Row("gen-b16", "generate", batch=16),
    Row("gen-b64", "generate", batch=64),
    Row("v32-lora", "train", model="deepseek", config=DEEPSEEK_CONFIG),
    Row("v32-qlora", "train", model="deepseek", config=DEEPSEEK_CONFIG, method="qlora"),
    Row("llama-lora-nockpt", "train", checkpointing=False),
    Row("llama-qlora-nockpt", "train", method="qlora", checkpointing=False),
    Row("llama-zero3-nockpt", "train", config=ZERO3_CONFIG, zero3=True, checkpointing=False),
    Row("llama-packed", "train", packing="packing"),
    Row("llama-padfree", "train", packing="padding_free"),
)


# --------------------------------------------------------------------------- versions and pins


def pins(constraints: Path = REPO / "constraints.txt") -> dict[str, str]:
    """constraints.txt's ``name==version`` lines, by normalised name."""
    out = {}
    for line in constraints.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not name.startswith("#"):
            out[_norm(name)] = version.strip()
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def versions(names: Sequence[str] = VERSIONS) -> list[dict[str, Any]]:
    """Each package's installed version (without a local label), its pin, where it was found."""
    pinned = pins()
    rows = []
    for name in names:
        try:
            dist = metadata.distribution(name)
            found = dist.version
            where = str(dist.locate_file(""))
        except metadata.PackageNotFoundError:
            found, where = None, ""
        pin = pinned.get(_norm(name))
        base = found.split("+")[0] if found else None
        rows.append({"package": name, "found": found, "pinned": pin, "location": where,
                     "differs": found is None or (pin is not None and base != pin)})  # fmt: skip
    return rows


def print_versions(rows: list[dict[str, Any]]) -> None:
    print(f"{'package':<16}{'found':<16}{'pinned':<12}location")
    for r in rows:
        mark = "  <- differs" if r["differs"] else ""
        print(f"{r['package']:<16}{r['found'] or 'missing':<16}{r['pinned'] or '-':<12}"
              f"{r['location']}{mark}")  # fmt: skip
    differ = [f"{r['package']} ({r['found'] or 'missing'} vs {r['pinned'] or 'unpinned'})"
              for r in rows if r["differs"]]  # fmt: skip
    print("differ from constraints.txt: " + (", ".join(differ) if differ else "none"))


# --------------------------------------------------------------------------- wheels


def slim_bitsandbytes(wheel: Path, keep: str) -> tuple[int, int]:
    """Keep only bitsandbytes' CPU library and its CUDA ``keep``* libraries (``13``: 13.0 and
    13.2); the wheel's RECORD loses the same lines. Returns the sizes before and after.

    The wheel ships one native library per CUDA toolkit (11.8 to 13.2), ROCm and XPU release
    (41 MiB compressed); bitsandbytes loads the one of torch's CUDA version alone.
    """
    before = wheel.stat().st_size
    lib = re.compile(r"^bitsandbytes/libbitsandbytes_(\w+?)\.(so|dll|dylib)$")

    def dropped(name: str) -> bool:
        match = lib.match(name)
        return (
            bool(match) and match.group(1) != "cpu" and not match.group(1).startswith(f"cuda{keep}")
        )

    with zipfile.ZipFile(wheel) as src:
        names = src.namelist()
        if not any(dropped(n) for n in names):
            return before, before
        tmp = wheel.with_suffix(".slim")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                if dropped(info.filename):
                    continue
                data = src.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines()
                    data = (
                        "\n".join(x for x in lines if not dropped(x.split(",")[0])) + "\n"
                    ).encode()
                dst.writestr(info, data)
    tmp.replace(wheel)
    return before, wheel.stat().st_size


def travelling_tree_bytes(repo: Path = REPO) -> int:
    """Bytes of what a device run sends besides carried paths: tracked and untracked files that
    git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout  # fmt: skip
    paths = (repo / p for p in listed.decode().split("\0") if p)
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def wheels_report(folder: Path, keep: str = "13") -> int:
    """Slim bitsandbytes, list the wheels and their total beside the 64 MiB a run carries."""
    wheels = sorted(folder.glob("*.whl"))
    have = {_norm(w.name.split("-")[0]) for w in wheels}
    missing = [n for n in (*CARRIED, "deepspeed") if _norm(n) not in have]
    for wheel in wheels:
        if wheel.name.startswith("bitsandbytes-"):
            before, after = slim_bitsandbytes(wheel, keep)
            if after < before:
                print(f"{wheel.name}: {before / 2**20:.1f} MiB as published (a native library "
                      f"for every CUDA toolkit, ROCm and XPU release), over half of the "
                      f"{LIMIT_MIB} MiB a run carries; kept the CPU and CUDA {keep}.x libraries: "
                      f"{after / 2**20:.1f} MiB")  # fmt: skip
    total = 0
    for wheel in wheels:
        size = wheel.stat().st_size
        total += size
        print(f"  {size / 2**20:>6.2f} MiB  {wheel.name}")
    tree = travelling_tree_bytes()
    print(f"wheels {total / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = "
          f"{(total + tree) / 2**20:.1f} MiB of the {LIMIT_MIB} MiB a device run carries")  # fmt: skip
    if missing:
        print(f"missing wheels: {', '.join(missing)}")
    if total + tree > LIMIT_MIB * 2**20:
        print(f"over the {LIMIT_MIB} MiB limit: carry fewer wheels")
        return 1
    return 1 if missing else 0


# --------------------------------------------------------------------------- inputs


_CONSONANTS, _VOWELS = "bcdfghjklmnprstvwz", "aeiou"


def synthetic_text(rng: random.Random, words: int) -> str:
    """Pseudo-words and prices: enough distinct merges for a 32k BPE vocabulary."""

    def word() -> str:
        return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS)
                       + (rng.choice(_CONSONANTS) if rng.random() < 0.3 else "")
                       for _ in range(rng.randint(1, 4)))  # fmt: skip

    return " ".join(word() if rng.random() < 0.8 else f"{rng.uniform(1, 500):.2f}"
                    for _ in range(words))  # fmt: skip


def tiny_deepseek_v32(tokenizer: Any, widths: dict[str, int]) -> Any:
    """The shipped DeepSeek-V3.2-Exp config.json with ``widths``, randomly initialised (on the
    current default device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shipped = REPO / "configs/models/deepseek-ai__DeepSeek-V3.2-Exp/config.json"
    keys = {k: v for k, v in json.loads(shipped.read_text(encoding="utf-8")).items()
            if k not in ("quantization_config", "architectures", "torch_dtype", "rope_scaling")}  # fmt: skip
    model_type = keys.pop("model_type")
    config = AutoConfig.for_model(model_type, **{**keys, **widths, "vocab_size": len(tokenizer),
                                                 "bos_token_id": tokenizer.bos_token_id,
                                                 "eos_token_id": tokenizer.eos_token_id,
                                                 "pad_token_id": tokenizer.pad_token_id})  # fmt: skip
    return AutoModelForCausalLM.from_config(config)


def _examples(rng: random.Random, count: int, lengths: tuple[int, int], low: int, high: int):
    ids, masks = [], []
    for _ in range(count):
        n = rng.randint(*lengths)
        ids.append([rng.randrange(low, high) for _ in range(n)])
        masks.append([0] * (n // 2) + [1] * (n - n // 2))
    return {"input_ids": ids, "completion_mask": masks}


def build_inputs(scale: Scale, work: Path, cuda: bool) -> dict[str, Any]:
    """Tokenizer, the two base models and the tokenized datasets, saved under ``work``."""
    import torch
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    from charlie.training.tokens import add_thesis_tokens, build_tiny_model, train_tokenizer

    rng = random.Random(0)
    tokenizer = train_tokenizer(
        (synthetic_text(rng, 200) for _ in range(scale.corpus)), scale.vocab_size
    )
    base_vocab, specials = len(tokenizer), len(tokenizer.all_special_ids)
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    bases = {"llama": work / "llama", "deepseek": work / "deepseek_v32"}
    params = {}
    for name, folder in bases.items():
        torch.manual_seed(0)
        with torch.device(device):
            model = (build_tiny_model(tokenizer, **scale.llama, seed=0) if name == "llama"
                     else tiny_deepseek_v32(tokenizer, scale.deepseek))  # fmt: skip
        params[name] = sum(p.numel() for p in model.parameters())
        model.to(dtype).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del model
    if cuda:
        torch.cuda.empty_cache()

    data_tokenizer = AutoTokenizer.from_pretrained(bases["llama"])
    add_thesis_tokens(data_tokenizer)  # as `charlie tokenize` does
    steps = scale.warmup + scale.steps
    big, ds = scale.max_length, scale.deepseek_max_length
    sets = {  # name: (lengths, train examples, validation examples)
        "fixed": ((big, big), steps * scale.batch, scale.batch),
        "varied": ((big // 8, big // 2), 4 * steps * scale.batch, scale.batch),
        "deepseek": ((ds, ds), steps * scale.deepseek_batch, scale.deepseek_batch),
    }
    data = {}
    for name, (lengths, train_n, val_n) in sets.items():
        folder = work / f"data-{name}"
        split = DatasetDict(
            train=Dataset.from_dict(_examples(rng, train_n, lengths, specials, base_vocab)),
            validation=Dataset.from_dict(_examples(rng, val_n, lengths, specials, base_vocab)),
        )
        split.save_to_disk(str(folder))
        data_tokenizer.save_pretrained(folder / "tokenizer")
        data[name] = str(folder)
    return {"bases": {k: str(v) for k, v in bases.items()}, "data": data, "params": params,
            "vocab": len(data_tokenizer), "base_vocab": base_vocab}  # fmt: skip


# --------------------------------------------------------------------------- configs and plans


def train_config(row: Row, scale: Scale, inputs: dict[str, Any], out: Path, cuda: bool) -> Any:
    """The shipped config the row is named after, with this run's model, data and switches."""
    from charlie.training.config import TrainConfig, load_train_config

    shipped = load_train_config(REPO / "configs" / row.config)
    keys = {**shipped.model_dump(), **shipped.sft_args}
    deepseek = row.model == "deepseek"
    length = scale.deepseek_max_length if deepseek else scale.max_length
    batch = scale.deepseek_batch if deepseek else scale.batch
    data = "deepseek" if deepseek else "varied" if row.packing else "fixed"
    keys.update(
        base_model=inputs["bases"][row.model], trust_remote_code=False,
        dataset_dir=Path(inputs["data"][data]), output_dir=out, checkpoint_dir=None,
        method=row.method, max_length=length, merge=False, gpu_type=GPU_TYPE, num_gpus=1,
        per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
        gradient_accumulation_steps=1, max_steps=scale.warmup + scale.steps,
        logging_steps=scale.warmup + scale.steps, eval_strategy="no", save_strategy="no",
        report_to=["none"], disable_tqdm=True, dataloader_num_workers=0, bf16=cuda,
        activation_checkpointing=row.checkpointing, packing=row.packing == "packing",
        padding_free=row.packing == "padding_free", num_threads=scale.threads,
    )  # fmt: skip
    if row.zero3:
        keys["deepspeed"] = str(REPO / "configs" / "deepspeed" / "zero3.json")
    else:
        keys.pop("deepspeed", None)
    return TrainConfig(**keys)


def planned(cfg: Any) -> tuple[float | None, str]:
    """``charlie plan``'s total per GPU in GiB on an H200, or None and why not."""
    from charlie.errors import CharlieError
    from charlie.plan import plan_for

    try:
        plan = plan_for(cfg, gpu_type=GPU_TYPE, num_gpus=1)
    except CharlieError as exc:
        return None, str(exc)
    return plan.total / GIB, ""


def why_skipped(row: Row, cfg: Any, cuda: bool) -> str | None:
    """The reason a row cannot run here, before anything loads (None: it can)."""
    import torch

    from charlie.training.config import choose_attention, packing_problem
    from charlie.training.sft import installed_attention

    if row.method == "qlora" and not cuda:
        return "needs CUDA (bitsandbytes' 4-bit NF4 kernels on a GPU)"
    if row.zero3 and not cuda:
        return "needs CUDA (DeepSpeed ZeRO-3 on one GPU)"
    if row.method == "qlora":
        problem = bitsandbytes_problem(torch.version.cuda)
        if problem:
            return problem
    if row.zero3 and importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed (make gpu-wheels builds its wheel)"
    if row.packing:
        half = cuda and torch.cuda.is_bf16_supported()
        attention = choose_attention(cfg, cuda=cuda, half=half, installed=installed_attention())
        if not attention.packing:
            return f"{attention.reason}; {packing_problem(cfg, attention.implementation)}"
    return None


def bitsandbytes_problem(cuda_version: str | None) -> str | None:
    """Why bitsandbytes cannot run 4-bit layers on this CUDA, without importing it."""
    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None or not spec.submodule_search_locations:
        return "bitsandbytes is not installed (make gpu-wheels carries it)"
    wanted = os.environ.get("BNB_CUDA_VERSION") or (cuda_version or "").replace(".", "")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if wanted and not list(folder.glob(f"libbitsandbytes_cuda{wanted}.*")):
        have = sorted(p.name for p in folder.glob("libbitsandbytes_cuda*"))
        return (f"bitsandbytes has no library for CUDA {cuda_version} (it has "
                f"{', '.join(have) or 'none'}): make gpu-wheels GPU_BNB_CUDA=...")  # fmt: skip
    return None


# --------------------------------------------------------------------------- measuring


def count_params(model: Any) -> tuple[int, int]:
    """``(N, trainable)``: the model's parameters at full size (a 4-bit weight by its shape, a
    ZeRO-3 shard by its whole), the base's once (PEFT's trainable copies of embed_tokens and
    lm_head and its token-row deltas not again) plus the LoRA adapters'."""
    total = trainable = 0
    for name, param in model.named_parameters():
        state = getattr(param, "quant_state", None)
        n = int(getattr(param, "ds_numel", 0) or (state.shape.numel() if state else param.numel()))
        if param.requires_grad:
            trainable += n
        if "modules_to_save." in name or "trainable_tokens_delta" in name:
            continue
        total += n
    return total, trainable


def make_timer(warmup: int, steps: int, cuda: bool) -> Any:
    """A TrainerCallback that counts each micro-batch's tokens and clocks each step's end."""
    import torch
    from transformers import TrainerCallback

    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.tokens = self.computed = 0
            self.marks: list[tuple[int, float, int, int]] = []  # step, time, tokens, computed
            self.params = (0, 0)
            self.peak = self.reserved = None

        def count(self, inputs: dict[str, Any]) -> None:
            ids, mask = inputs["input_ids"], inputs.get("attention_mask")
            self.tokens += int(mask.sum()) if mask is not None else ids.numel()
            self.computed += ids.numel()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.params = count_params(model)
            sync()
            self.marks.append((state.global_step, time.perf_counter(), self.tokens,
                               self.computed))  # fmt: skip

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.marks.append((state.global_step, time.perf_counter(), self.tokens,
                               self.computed))  # fmt: skip

        def on_train_end(self, args, state, control, **kwargs):
            if cuda:
                sync()
                self.peak = torch.cuda.max_memory_allocated() / GIB
                self.reserved = torch.cuda.max_memory_reserved() / GIB

        def result(self) -> dict[str, Any]:
            marks = {m[0]: m for m in self.marks}
            if warmup not in marks or warmup + steps not in marks:
                raise RuntimeError(f"only steps {sorted(marks)} ran, not {warmup + steps}")
            (_, t0, k0, c0), (_, t1, k1, c1) = marks[warmup], marks[warmup + steps]
            times = [marks[s][1] - marks[s - 1][1] for s in range(warmup + 1, warmup + steps + 1)]
            return {"seconds": t1 - t0, "tokens": k1 - k0, "tokens_per_step": (k1 - k0) / steps,
                    "real_share": (k1 - k0) / max(1, c1 - c0),
                    "step_ms_median": 1000 * statistics.median(times),
                    "tokens_per_s": (k1 - k0) / (t1 - t0)}  # fmt: skip

    return StepTimer()


class _Lines(logging.Handler):
    """charlie.train's messages during a row: which attention, the cost line, warnings."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING or message.startswith(("attention:", "cost:")):
            self.lines.append(message[:400])


@contextlib.contextmanager
def timed_trainer(timer: Any) -> Iterator[None]:
    """The pipeline's SFTTrainer, with ``timer`` attached, for the train() calls inside."""
    from charlie.training import trainer as module

    original = module.SFTTrainer

    class TimedSFTTrainer(original):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.add_callback(timer)

        def training_step(self, model, inputs, num_items_in_batch=None):
            timer.count(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    module.SFTTrainer = TimedSFTTrainer  # train() imports it when it runs
    try:
        yield
    finally:
        module.SFTTrainer = original


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_env() -> dict[str, str]:
    """What `deepspeed --num_gpus 1` sets: one process, rank 0 of 1."""
    return {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}  # fmt: skip


@contextlib.contextmanager
def single_process_launch() -> Iterator[None]:
    """ZeRO-3 in this process: the launcher's variables, then its process-wide state undone."""
    saved = {k: os.environ.get(k) for k in (*launcher_env(), "ACCELERATE_USE_DEEPSPEED")}
    os.environ.update(launcher_env())
    try:
        yield
    finally:
        import torch.distributed as dist
        from accelerate.state import AcceleratorState
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        if dist.is_initialized():
            dist.destroy_process_group()
        unset_hf_deepspeed_config()
        AcceleratorState._reset_state(reset_partial_state=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_train(row: Row, scale: Scale, inputs: dict[str, Any], work: Path, cuda: bool) -> dict:
    """One training row through charlie.training.sft.train, timed."""
    import torch

    from charlie.training.sft import train

    cfg = train_config(row, scale, inputs, work / "runs" / row.slug, cuda)
    timer = make_timer(scale.warmup, scale.steps, cuda)
    lines = _Lines()
    logger = logging.getLogger("charlie.train")
    logger.addHandler(lines)
    level = logger.level
    logger.setLevel(min(level or logging.INFO, logging.INFO))
    launch = single_process_launch() if row.zero3 and "LOCAL_RANK" not in os.environ else None
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with timed_trainer(timer), launch or contextlib.nullcontext():
            metrics = train(cfg)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    out = timer.result()
    n, trainable = timer.params
    attention = next((m.split(" ", 2)[1] for m in lines.lines if m.startswith("attention:")), "")
    out.update(params=n, trainable_params=trainable, attention=attention,
               mfu=6 * n * out["tokens_per_s"] / (PEAK_TFLOPS * 1e12),
               peak_gpu_gib=timer.peak, reserved_gpu_gib=timer.reserved,
               train_loss=metrics.get("train_loss"), log=lines.lines)  # fmt: skip
    return out


def run_generate(rows: Sequence[Row], scale: Scale, inputs: dict[str, Any], cuda: bool) -> list:
    """The generation rows: charlie.inference.generate on the Llama, one batch each."""
    import torch
    from transformers import AutoTokenizer

    from charlie.inference import generate, prompt_tokens, stop_token_ids
    from charlie.models import load_base_model

    tokenizer = AutoTokenizer.from_pretrained(Path(inputs["data"]["fixed"]) / "tokenizer")
    model = load_base_model(inputs["bases"]["llama"], len(tokenizer))  # as evaluation loads it
    if cuda:
        model = model.to("cuda", torch.bfloat16)  # `charlie evaluate` itself stays on the CPU
    with torch.no_grad():  # a random model would stop by chance: the stop tokens never win
        model.get_output_embeddings().weight[stop_token_ids(tokenizer, model)] = 0
    n = sum(p.numel() for p in model.parameters())
    rng = random.Random(1)
    prompts = [synthetic_text(rng, scale.prompt_words) for _ in range(max(r.batch for r in rows))]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(scale.threads or threads)
    for row in rows:
        batch = prompts[: row.batch]
        try:
            generate(model, tokenizer, batch, batch_size=row.batch, max_new_tokens=4)  # warm-up
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            start = time.perf_counter()
            done = generate(model, tokenizer, batch, batch_size=row.batch,
                            max_new_tokens=scale.new_tokens)  # fmt: skip
            sync()
            seconds = time.perf_counter() - start
            tokens = sum(g.new_tokens for g in done)
            results.append({
                "status": "ok", "seconds": seconds, "tokens": tokens,
                "tokens_per_s": tokens / seconds, "params": n,
                "mfu": 2 * n * tokens / seconds / (PEAK_TFLOPS * 1e12),
                "prompt_tokens_mean": statistics.mean(prompt_tokens(tokenizer, p) for p in batch),
                "stopped_early": sum(g.finished for g in done),
                "peak_gpu_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
                "reserved_gpu_gib": torch.cuda.max_memory_reserved() / GIB if cuda else None,
                "attention": model.config._attn_implementation,
            })  # fmt: skip
        except Exception as exc:  # one batch's failure (out of memory) is that row's
            results.append(_failure(exc))
    torch.set_num_threads(threads)
    return results


def _failure(exc: BaseException) -> dict[str, Any]:
    first = (str(exc).strip().splitlines() or [""])[0][:400]
    return {"status": "failed", "reason": f"{type(exc).__name__}: {first}"}


def run_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one job (one training row, or every generation row), in this process."""
    import gc

    import torch

    rows = [Row(**r) for r in job["rows"]]
    scale, inputs, cuda = Scale(**job["scale"]), job["inputs"], job["cuda"]
    work = Path(job["work"])
    try:
        if rows[0].kind == "generate":
            return run_generate(rows, scale, inputs, cuda)
        return [{"status": "ok", **run_train(rows[0], scale, inputs, work, cuda)}]
    except Exception as exc:
        logging.getLogger("bench_gpu").exception("%s failed", rows[0].slug)
        return [_failure(exc) for _ in rows]
    finally:
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def run_child(job: dict[str, Any], work: Path, timeout: float, log: Path) -> list[dict]:
    """``run_job`` in a fresh Python process; its output appended to ``log``."""
    name = job["rows"][0]["slug"]
    path, result = work / f"job-{name}.json", work / f"job-{name}.result.json"
    path.write_text(json.dumps(job), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if any(r["zero3"] for r in job["rows"]):
        env.update(launcher_env(), DS_ACCELERATOR="cuda" if job["cuda"] else "cpu")
    with open(log, "a", encoding="utf-8") as sink:
        sink.write(f"\n===== {', '.join(r['slug'] for r in job['rows'])}\n")
        sink.flush()
        child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(path)], stdout=sink,
                                 stderr=subprocess.STDOUT, env=env, start_new_session=True)  # fmt: skip
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, 9)  # its own process group: the child and what it started
            child.wait()
            return [{"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
                    for _ in job["rows"]]  # fmt: skip
    if result.is_file():
        return json.loads(result.read_text(encoding="utf-8"))
    tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
    error = next((x for x in reversed(tail) if re.match(r"^\w+(\.\w+)*(Error|Exception)\b", x)),
                 f"exit code {child.returncode}")  # fmt: skip
    print("\n".join(f"    | {x}" for x in tail[-15:]))
    return [{"status": "failed", "reason": error[:400]} for _ in job["rows"]]


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """datasets' and transformers' progress bars off (saving, loading), then as they were."""
    import datasets
    from transformers.utils import logging as hf_logging

    shown = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown[0]:
            datasets.enable_progress_bars()
        if shown[1]:
            hf_logging.enable_progress_bar()


def child_main(path: Path) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    job = json.loads(path.read_text(encoding="utf-8"))
    with no_progress_bars():
        results = run_job(job)
    path.with_suffix(".result.json").write_text(json.dumps(results), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------- the run


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _fmt(value: Any, spec: str, width: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{'-':>{width}}"
    return f"{value:>{width}{spec}}"


def render(results: list[dict[str, Any]]) -> str:
    head = (f"{'row':<20}{'what':<28}{'dtype':<6}{'attn':<7}{'tokens/s':>11}{'step ms':>9}"
            f"{'peak GiB':>10}{'plan GiB':>10}{'peak/plan':>10}{'MFU':>11}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in results:
        start = f"{r['row']:<20}{r['what'][:27]:<28}"
        if r["status"] != "ok":
            plan = f" (plan {r['planned_gib']:.2f} GiB)" if r.get("planned_gib") else ""
            lines.append(f"{start}{r['status']}: {r.get('reason', '')}{plan}")
            continue
        mfu = f"{100 * r['mfu']:.3g}%" if r.get("mfu") is not None else "-"
        lines.append(
            f"{start}{r['dtype']:<6}{(r.get('attention') or '-')[:6]:<7}"
            f"{_fmt(r['tokens_per_s'], ',.0f', 11)}{_fmt(r.get('step_ms_median'), '.0f', 9)}"
            f"{_fmt(r.get('peak_gpu_gib'), '.2f', 10)}{_fmt(r.get('planned_gib'), '.2f', 10)}"
            f"{_fmt(r.get('peak_over_plan'), '.2f', 10)}{mfu:>11}"
        )
    return "\n".join(lines)


def select(patterns: str | None) -> list[Row]:
    if not patterns:
        return list(ROWS)
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    rows = [r for r in ROWS if any(fnmatch.fnmatch(r.slug, p) for p in wanted)]
    if not rows:
        raise SystemExit(
            f"--only {patterns}: no row matches; rows: {', '.join(r.slug for r in ROWS)}"
        )
    return rows


def entry_for(row: Row, scale: Scale, inputs: dict[str, Any], work: Path, cuda: bool) -> dict:
    """A row's table entry before it runs: what it is, the plan, and why it is skipped, if so."""
    train = row.kind == "train"
    deepseek = row.model == "deepseek"
    entry: dict[str, Any] = {
        "row": row.slug, "what": row.label, "kind": row.kind, "model": row.model,
        "method": row.method if train else None, "checkpointing": row.checkpointing if train
        else None, "zero3": row.zero3, "packing": row.packing or None,
        "batch": row.batch or (scale.deepseek_batch if deepseek else scale.batch),
        "max_length": (scale.deepseek_max_length if deepseek else scale.max_length) if train
        else None, "config": row.config if train else None,
        "dtype": ("nf4" if row.method == "qlora" and train else "bf16") if cuda else "fp32",
    }  # fmt: skip
    if train:
        cfg = train_config(row, scale, inputs, work / "runs" / row.slug, cuda)
        entry["planned_gib"], entry["plan_note"] = planned(cfg)
        if reason := why_skipped(row, cfg, cuda):
            entry.update(status="skipped", reason=reason)
    return entry


def progress(entry: dict[str, Any]) -> str:
    """One line as a row finishes (the table comes at the end, which a killed run never reaches)."""
    if entry["status"] != "ok":
        return f"{entry['row']}: {entry['status']}: {entry.get('reason', '')}"
    peak = entry.get("peak_gpu_gib")
    return (f"{entry['row']}: {entry['tokens_per_s']:,.0f} tokens/s, MFU {100 * entry['mfu']:.3g}%"
            + (f", peak {peak:.2f} GiB" if peak is not None else "")
            + (f" (plan {entry['planned_gib']:.2f})" if entry.get("planned_gib") else ""))  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny models, a couple of steps (CPU-sized: seconds)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    parser.add_argument("--log", type=Path, help="the rows' own output (isolated rows only)")
    parser.add_argument(
        "--only", help="comma-separated rows (globs): " + ", ".join(r.slug for r in ROWS)
    )
    parser.add_argument("--steps", type=int, help="timed steps (default: 10; dry run 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 3; dry run 1)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no row after this many seconds (the rest: skipped)")  # fmt: skip
    parser.add_argument("--isolate", choices=("auto", "process", "none"), default="auto",
                        help="a Python process per row (auto: on CUDA)")  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="models and data (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    parser.add_argument("--wheels", type=Path, metavar="DIR",
                        help="slim bitsandbytes' wheel in DIR, print sizes against 64 MiB, exit")  # fmt: skip
    parser.add_argument("--bnb-cuda", default="13", help="CUDA libraries --wheels keeps (13: 13.x)")
    parser.add_argument("--pins", action="store_true",
                        help="print the carried packages' constraints.txt pins, exit")  # fmt: skip
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.pins:
        pinned = pins()
        missing = [n for n in CARRIED if _norm(n) not in pinned]
        print("\n".join(f"{n}=={pinned[_norm(n)]}" for n in CARRIED if _norm(n) in pinned))
        return 1 if missing else 0
    if args.wheels:
        return wheels_report(args.wheels, args.bnb_cuda)

    started = time.perf_counter()
    found = versions()
    print_versions(found)
    import torch

    cuda = torch.cuda.is_available()
    scale = DRY if args.dry_run else FULL
    scale = dataclasses.replace(scale, steps=args.steps or scale.steps,
                                warmup=scale.warmup if args.warmup is None else args.warmup)  # fmt: skip
    if not cuda and not args.dry_run:
        print("no CUDA device: the full benchmark needs a GPU (--dry-run runs it small here)")
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_gpu-"))
    try:
        with no_progress_bars():
            return _run(args, scale, cuda, found, started, work)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, scale: Scale, cuda: bool, found: list, started: float,
         work: Path) -> int:  # fmt: skip
    import torch

    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    isolate = args.isolate == "process" or (args.isolate == "auto" and cuda)
    rows = select(args.only)
    work.mkdir(parents=True, exist_ok=True)
    log = args.log or work / "rows.log"
    print(f"device: {device}" + (f" (CUDA {torch.version.cuda}, capability "
                                 f"{'.'.join(map(str, torch.cuda.get_device_capability(0)))})"
                                 if cuda else "") + f"; scale {scale.name}; workdir {work}")  # fmt: skip

    inputs = build_inputs(scale, work, cuda)
    print(f"inputs: vocabulary {inputs['vocab']:,} ({inputs['base_vocab']:,} + thesis tokens); "
          f"llama {_count(inputs['params']['llama'])} parameters "
          f"({scale.llama['num_layers']} x {scale.llama['hidden_size']}), deepseek_v32 "
          f"{_count(inputs['params']['deepseek'])}; {time.perf_counter() - started:.0f} s")  # fmt: skip
    meta = {"device": device, "cuda": torch.version.cuda if cuda else None, "scale": scale.name,
            "peak_tflops": PEAK_TFLOPS, "formula": FORMULA.format(peak=PEAK_TFLOPS),
            "plan_gpu_type": GPU_TYPE, "versions": found, "max_length": scale.max_length,
            "batch": scale.batch, "warmup_steps": scale.warmup, "timed_steps": scale.steps,
            "generation_new_tokens": scale.new_tokens, "params": inputs["params"],
            "vocab": inputs["vocab"], "isolated": isolate}  # fmt: skip

    results: list[dict[str, Any]] = []
    jobs: list[list[Row]] = []  # each training row alone; the generation rows share a model
    for row in rows:
        if row.kind == "generate" and jobs and jobs[-1][0].kind == "generate":
            jobs[-1].append(row)
        else:
            jobs.append([row])
    for job in jobs:
        entries = [entry_for(row, scale, inputs, work, cuda) for row in job]
        runnable = [(row, e) for row, e in zip(job, entries, strict=True) if "status" not in e]
        left = None if args.budget_s is None else args.budget_s - (time.perf_counter() - started)
        if runnable and left is not None and left <= 0:
            for _, e in runnable:
                e.update(status="skipped", reason=f"--budget-s {args.budget_s:g} s was spent")
        elif runnable:
            spec = {"rows": [dataclasses.asdict(r) for r, _ in runnable],
                    "scale": dataclasses.asdict(scale), "inputs": inputs, "cuda": cuda,
                    "work": str(work)}  # fmt: skip
            t0 = time.perf_counter()
            if isolate:
                timeout = scale.row_timeout_s * len(runnable)
                if left is not None:
                    timeout = min(timeout, max(left, 30.0) + 30.0)
                measured = run_child(spec, work, timeout, log)
            else:
                measured = run_job(json.loads(json.dumps(spec)))  # as a child reads it
            wall = time.perf_counter() - t0
            for (_, e), m in zip(runnable, measured, strict=True):
                e.update(m, job_wall_s=wall)
                if e.get("peak_gpu_gib") and e.get("planned_gib"):
                    e["peak_over_plan"] = e["peak_gpu_gib"] / e["planned_gib"]
                print(f"  {progress(e)}", flush=True)
            print(f"  ({wall:.0f} s in all, loading included)", flush=True)
        results += entries
        if args.out:
            _write(args.out, meta, results)

    print()
    print(render(results))
    print()
    print(FORMULA.format(peak=PEAK_TFLOPS))
    print(f"peak GiB: torch.cuda.max_memory_allocated from loading to the end of training; plan "
          f"GiB: charlie.plan.plan_for on {GPU_TYPE} x 1 (peak/plan < 1: the planner is above "
          f"the measure). Tokens per step: {scale.batch} x {scale.max_length} (Llama), "
          f"{scale.deepseek_batch} x {scale.deepseek_max_length} (DeepSeek); {scale.warmup} "
          f"warm-up + {scale.steps} timed steps; generation {scale.new_tokens} new tokens per "
          f"row. {time.perf_counter() - started:.0f} s in all.")  # fmt: skip
    if args.out:
        _write(args.out, meta, results)
        print(f"wrote {args.out}")
    return 1 if any(r["status"] == "failed" for r in results) else 0


def _write(path: Path, meta: dict[str, Any], results: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": results}, indent=2, default=str) + "\n",
                   encoding="utf-8")  # fmt: skip
    tmp.replace(path)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; the GPU machine has no net
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
