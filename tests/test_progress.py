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
