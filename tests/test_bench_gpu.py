"""benchmarks/bench_gpu.py, the GPU check: its dry run on the CPU (so the script a lent GPU runs
cannot rot), the bitsandbytes wheel it slims to fit the 64 MiB a run carries, and the launcher's
length."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_dry_run_measures_every_row_it_can_and_says_why_not_the_others(bench, tmp_path, capsys):
    out = tmp_path / "bench_gpu.json"
    code = bench.main(["--dry-run", "--isolate", "none", "--out", str(out),
                       "--workdir", str(tmp_path / "work")])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    table = json.loads(out.read_text(encoding="utf-8"))
    meta, rows = table["meta"], {r["row"]: r for r in table["rows"]}
    assert list(rows) == [r.slug for r in bench.ROWS]
    assert meta["peak_tflops"] == 790.0 and "6 x N x tokens/s" in meta["formula"]
    assert {v["package"] for v in meta["versions"]} >= {"torch", "transformers", "trl", "peft",
                                                         "accelerate", "datasets",
                                                         "bitsandbytes", "deepspeed"}  # fmt: skip

    ran = {slug for slug, r in rows.items() if r["status"] == "ok"}
    assert {"llama-lora", "llama-lora-nockpt", "v32-lora", "gen-b1", "gen-b16", "gen-b64"} <= ran
    for slug in ran:
        r = rows[slug]
        for key in ("tokens_per_s", "mfu", "params", "seconds"):
            assert math.isfinite(r[key]) and r[key] > 0, (slug, key, r[key])
        if r["kind"] == "train":
            assert math.isfinite(r["planned_gib"]) and r["planned_gib"] > 0
            assert math.isfinite(r["train_loss"])
            assert r["trainable_params"] < r["params"]
            # every example is max_length long: no padding, the planner's worst case
            assert r["real_share"] == 1.0 and r["tokens_per_step"] == r["batch"] * r["max_length"]
            assert r["mfu"] == pytest.approx(6 * r["params"] * r["tokens_per_s"] / 790e12)
        else:  # the stop tokens never win: every row runs to max_new_tokens
            assert r["tokens"] == r["batch"] * meta["generation_new_tokens"]
            assert r["stopped_early"] == 0
        if meta["cuda"]:
            assert r["peak_gpu_gib"] > 0
    if meta["cuda"] is None:  # the CPU: what needs CUDA is skipped, not faked
        assert all(r["dtype"] == "fp32" for r in rows.values())
        for slug in ("llama-qlora", "llama-zero3", "v32-qlora", "llama-qlora-nockpt",
                     "llama-zero3-nockpt"):  # fmt: skip
            assert rows[slug]["status"] == "skipped"
            assert rows[slug]["reason"].startswith("needs CUDA"), rows[slug]
        for slug in ("llama-packed", "llama-padfree"):
            assert rows[slug]["status"] == "skipped" and "flash" in rows[slug]["reason"]

    head = next(line for line in printed.splitlines() if line.startswith("row "))
    for column in ("tokens/s", "peak GiB", "plan GiB", "peak/plan", "MFU"):
        assert column in head
    for slug in rows:
        assert any(line.startswith(slug + " ") for line in printed.splitlines()), slug
    assert "differ from constraints.txt:" in printed


def test_the_bitsandbytes_wheel_keeps_the_cpu_and_the_chosen_cuda_libraries(bench, tmp_path):
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    libs = ["cpu", "cuda118", "cuda128", "cuda130", "cuda132", "rocm72", "xpu2026"]
    files = {f"bitsandbytes/libbitsandbytes_{lib}.so": b"\0" * 4096 for lib in libs}
    files["bitsandbytes/__init__.py"] = b"# bnb\n"
    record = "".join(f"{name},sha256=x,{len(data)}\n" for name, data in files.items())
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("bitsandbytes-0.50.2.dist-info/RECORD", record)

    before, after = bench.slim_bitsandbytes(wheel, "13")
    assert after < before
    with zipfile.ZipFile(wheel) as zf:
        kept = set(zf.namelist())
        record = zf.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    libs_kept = {n.split("_", 1)[1].split(".")[0] for n in kept if "libbitsandbytes_" in n}
    assert libs_kept == {"cpu", "cuda130", "cuda132"}
    assert "bitsandbytes/__init__.py" in kept
    assert {line.split(",")[0] for line in record.splitlines()} == (
        kept - {"bitsandbytes-0.50.2.dist-info/RECORD"}
    )
    assert bench.slim_bitsandbytes(wheel, "13") == (after, after)  # already slim


def test_the_launcher_fits_one_device_command_and_the_pins_cover_the_carried_wheels(bench, capsys):
    script = (REPO / "benchmarks" / "gpu_check.sh").read_text(encoding="utf-8")
    assert len(script) <= 2000 and "benchmarks/bench_gpu.py" in script
    assert bench.main(["--pins"]) == 0
    printed = capsys.readouterr().out.split()
    assert [line.split("==")[0] for line in printed] == list(bench.CARRIED)
    assert all(line.split("==")[1] for line in printed)
