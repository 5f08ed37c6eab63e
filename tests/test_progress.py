import io

from charlie.progress import progress_bar


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar(monkeypatch):
    stream = Tty()
    monkeypatch.setattr("sys.stderr", stream)
    with progress_bar(total=4, desc="parse", file=stream, mininterval=0) as bar:
        bar.update(4)
    assert "parse: 100%" in stream.getvalue()


def test_logs_and_pipes_get_no_bar(monkeypatch, capsys):
    with progress_bar(total=4, desc="parse") as bar:
        bar.update(4)
    assert capsys.readouterr().err == ""


def test_logs_and_pipes_get_a_progress_line_every_so_often(monkeypatch, caplog):
    """Without a terminal (DVC, Kubeflow, CI) long work logs done/total, rate and ETA, to the
    console and the stage log alike, every $CHARLIE_PROGRESS_S seconds, and a last line."""
    import logging

    clock = iter(range(0, 1000, 10))  # every call to the clock: 10 s later
    monkeypatch.setattr("charlie.progress.time.monotonic", lambda: next(clock))
    monkeypatch.setenv("CHARLIE_PROGRESS_S", "25")
    with (
        caplog.at_level(logging.INFO, logger="charlie.progress"),
        progress_bar(total=8, desc="generate", unit="row") as bar,
    ):
        for _ in range(8):
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "generate: 3/8 rows (38%), 0.1 rows/s, ETA 50s"
    assert lines[-1] == "generate: 8/8 rows (100%), 0.1 rows/s, done in 1m30s"
    assert lines[1] == "generate: 6/8 rows (75%), 0.1 rows/s, ETA 20s" and len(lines) == 3


def test_a_short_job_logs_nothing(caplog):
    with progress_bar(total=2, desc="parse", unit="B") as bar:
        bar.update(2)
    assert caplog.records == []
