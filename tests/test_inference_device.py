"""Where `charlie evaluate` and `charlie grpo` put the model they generate with."""

from __future__ import annotations

from types import SimpleNamespace

from charlie import models


def test_a_gpu_gets_the_model_in_half_precision_the_cpu_keeps_it():
    assert models.inference_placement(cuda=True, bf16=True) == ("cuda", "bfloat16")
    assert models.inference_placement(cuda=True, bf16=False) == ("cuda", "float16")
    assert models.inference_placement(cuda=False, bf16=False) == ("cpu", None)


class Recorder:
    def __init__(self):
        self.moves = []

    def to(self, **kwargs):
        self.moves.append(kwargs)
        return self


def fake_torch(cuda: bool, bf16: bool):
    return SimpleNamespace(
        cuda=SimpleNamespace(is_available=lambda: cuda, is_bf16_supported=lambda: bf16),
        bfloat16="torch.bfloat16", float16="torch.float16",
    )  # fmt: skip


def test_the_loaded_model_moves_only_where_there_is_a_gpu():
    on_gpu = models._placed(Recorder(), fake_torch(cuda=True, bf16=True))
    assert on_gpu.moves == [{"device": "cuda", "dtype": "torch.bfloat16"}]
    old_gpu = models._placed(Recorder(), fake_torch(cuda=True, bf16=False))
    assert old_gpu.moves == [{"device": "cuda", "dtype": "torch.float16"}]
    assert models._placed(Recorder(), fake_torch(cuda=False, bf16=False)).moves == []
