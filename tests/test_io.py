import os
import stat

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
