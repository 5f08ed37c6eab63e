import os
import stat
from pathlib import Path

import pytest

from charlie.io import atomic_outputs


def test_outputs_are_replaced_together(tmp_path):
    a, b = tmp_path / "out" / "a.txt", tmp_path / "out" / "b.txt"
    with atomic_outputs(a, b) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
        assert not a.exists()  # nothing is visible until the whole group is written
    assert a.read_text() == "new a" and b.read_text() == "new b"
    assert sorted(p.name for p in a.parent.iterdir()) == ["a.txt", "b.txt"]


def test_a_crash_leaves_previous_outputs_and_no_temporaries(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    b.write_text("old b")
    with pytest.raises(RuntimeError), atomic_outputs(a, b) as (ta, _):
        ta.write_text("half")
        raise RuntimeError("disk full")
    assert a.read_text() == "old a" and b.read_text() == "old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_outputs_follow_the_umask_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_outputs(tmp_path / "x") as (tmp,):
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o644


def test_a_dataset_read_by_a_stage_gets_no_cache_files(tmp_path):
    """map/filter results must not land in another stage's output (DVC would rerun it)."""
    from datasets import Dataset, DatasetDict

    from charlie.io import load_dataset_dir

    DatasetDict({"train": Dataset.from_dict({"x": list(range(50))})}).save_to_disk(tmp_path / "d")
    before = sorted(p.name for p in (tmp_path / "d").rglob("*"))
    loaded = load_dataset_dir(tmp_path / "d")
    doubled = loaded.map(lambda row: {"y": 2 * row["x"]}, num_proc=2).filter(lambda r: r["y"] > 9)
    assert doubled["train"]["y"][:2] == [10, 12]
    assert sorted(p.name for p in (tmp_path / "d").rglob("*")) == before


def test_stages_read_datasets_only_through_load_dataset_dir():
    src = Path(__file__).resolve().parents[1] / "src" / "charlie"
    direct = [str(p.relative_to(src)) for p in src.rglob("*.py")
              if "load_from_disk(" in p.read_text() and p.name != "io.py"]  # fmt: skip
    assert direct == [], "use charlie.io.load_dataset_dir, which keeps caches out of outputs"
