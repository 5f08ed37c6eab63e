"""EodhdProvider against a real HTTP server on 127.0.0.1 (no mocking of requests).

Every test captures all log records at DEBUG, urllib3's included, and checks that the API key
shows up in none of them.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import ipaddress
import logging
import random
import socket
import traceback

import pandas as pd
import pytest

from charlie.prices.base import AuthError, NotAvailable, TransientError
from charlie.prices.eodhd import EodhdProvider

from .eodhd_server import FakeEodhd, make_bars

KEY = "SECRET-KEY-123"
DATES = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08"]
START, END = dt.date(2024, 1, 3), dt.date(2024, 1, 5)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy from the environment, and any connection to a non-loopback address fails."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    connect = socket.socket.connect

    def guarded(sock: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and not ipaddress.ip_address(host).is_loopback:
            raise AssertionError(f"test tried to reach {host}")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(autouse=True)
def _all_logs(caplog: pytest.LogCaptureFixture):
    """Captures every logger at DEBUG and, after the test, checks no record shows the key."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    yield
    # caplog.records only holds the current phase (teardown here), so ask for the test's own.
    records = caplog.get_records("setup") + caplog.get_records("call")
    leaks = [r.getMessage() for r in records if KEY in r.getMessage()]
    assert not leaks, f"API key in log records: {leaks}"


@pytest.fixture
def server():
    with FakeEodhd({"ACME.US": make_bars(DATES), "EMPTY.US": []}, api_key=KEY) as fake:
        yield fake


class Sleeps(list):
    """An injected ``sleep`` that records the waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def provider(server: FakeEodhd, sleeps: Sleeps | None = None, **kwargs) -> EodhdProvider:
    kwargs.setdefault("timeout_s", 2.0)
    return EodhdProvider(
        KEY,
        base_url=server.url,
        sleep=sleeps if sleeps is not None else Sleeps(),
        rng=random.Random(7),
        **kwargs,
    )


def assert_no_key(exc: BaseException) -> None:
    assert KEY not in str(exc)
    assert KEY not in "".join(traceback.format_exception(exc))


def test_fetch_returns_the_contract_frame(server, caplog):
    frame = provider(server).fetch("acme", START, END)

    assert list(frame.columns) == ["date", "open", "high", "low", "close", "adj_close", "volume"]
    assert str(frame["date"].dtype) == "datetime64[ns]"
    assert all(str(frame[c].dtype) == "float64" for c in frame.columns[1:])
    assert list(frame["date"]) == [pd.Timestamp(d) for d in DATES[1:4]]
    # OHLC are raw; adj_close is eodhd's adjusted_close (make_bars: close * 0.9)
    assert list(frame["close"]) == [101.0, 102.0, 103.0]
    assert list(frame["adj_close"]) == pytest.approx([90.9, 91.8, 92.7])
    assert list(frame["volume"]) == [2000.0, 3000.0, 4000.0]
    assert KEY not in frame.to_string() and KEY not in repr(frame.attrs)

    (request,) = server.requests
    assert request.path == "/api/eod/ACME.US"
    assert request.query == {
        "api_token": KEY,
        "fmt": "json",
        "from": "2024-01-03",
        "to": "2024-01-05",
    }
    assert any(
        r.levelno == logging.DEBUG and r.name == "charlie.prices.eodhd" for r in caplog.records
    )


def test_urllib3_request_lines_are_captured_and_redacted(server, caplog):
    provider(server).fetch("ACME", START, END)

    lines = [r.getMessage() for r in caplog.records if r.name == "urllib3.connectionpool"]
    request_lines = [line for line in lines if "/api/eod/ACME.US" in line]
    assert request_lines, f"urllib3 DEBUG records were not captured: {lines}"
    assert all("api_token=***" in line for line in request_lines)


def test_redaction_filter_is_installed_once_per_logger(server):
    for _ in range(3):
        EodhdProvider(KEY, base_url=server.url)
    for name in ("urllib3.connectionpool", "urllib3.util.retry"):
        filters = logging.getLogger(name).filters
        assert len([f for f in filters if type(f).__name__ == "RedactingFilter"]) == 1


def test_dotted_ticker_is_used_as_is(server):
    server.bars["BMW.XETRA"] = make_bars(DATES)
    frame = provider(server, exchange="US").fetch("BMW.XETRA", START, END)
    assert len(frame) == 3
    assert [r.path for r in server.requests] == ["/api/eod/BMW.XETRA"]


def test_429_waits_for_retry_after_then_succeeds(server, caplog):
    server.script("ACME.US", (429, {"Retry-After": "2"}))
    sleeps = Sleeps()

    frame = provider(server, sleeps).fetch("ACME", START, END)

    assert len(frame) == 3
    assert len(server.requests) == 2
    assert sleeps == [2.0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "eodhd ACME.US: HTTP 429, retry 1/4 in 2.0 s" in warnings


def test_retry_after_http_date_and_cap(server):
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)
    server.script(
        "ACME.US",
        (503, {"Retry-After": email.utils.format_datetime(soon, usegmt=True)}),
        (429, {"Retry-After": "120"}),
    )
    sleeps = Sleeps()

    provider(server, sleeps, max_backoff_s=30.0).fetch("ACME", START, END)

    assert len(server.requests) == 3
    assert 8.0 <= sleeps[0] <= 10.0
    assert sleeps[1] == 30.0


def test_500s_back_off_with_growing_jittered_waits(server):
    server.script("ACME.US", (500, {}), (500, {}))
    sleeps = Sleeps()

    frame = provider(server, sleeps, backoff_s=0.5).fetch("ACME", START, END)

    assert len(frame) == 3
    assert len(server.requests) == 3
    assert len(sleeps) == 2 and sleeps[0] < sleeps[1]
    assert 0.5 * 0.75 <= sleeps[0] <= 0.5 * 1.25
    assert 1.0 * 0.75 <= sleeps[1] <= 1.0 * 1.25


def test_persistent_500_raises_transient_after_all_retries(server, caplog):
    server.script("ACME.US", *[(500, {})] * 10)
    sleeps = Sleeps()

    with pytest.raises(TransientError, match=r"HTTP 500 on all 4 attempts") as info:
        provider(server, sleeps, max_retries=3, max_backoff_s=1.5).fetch("ACME", START, END)

    assert len(server.requests) == 4
    assert len(sleeps) == 3 and max(sleeps) == 1.5
    retries = [
        r.getMessage()
        for r in caplog.records
        if r.name == "charlie.prices.eodhd" and r.levelno == logging.WARNING
    ]
    assert [m.rsplit(" in ", 1)[0] for m in retries] == [
        f"eodhd ACME.US: HTTP 500, retry {n}/3" for n in (1, 2, 3)
    ]
    assert_no_key(info.value)


def test_slow_answer_times_out_and_is_retried(server):
    server.script("ACME.US", ("slow", 1.0))
    sleeps = Sleeps()

    frame = provider(server, sleeps, timeout_s=0.3).fetch("ACME", START, END)

    assert len(frame) == 3
    assert len(server.requests) == 2
    assert len(sleeps) == 1


def test_timeouts_on_every_attempt_raise_transient(server):
    server.script("ACME.US", ("slow", 0.5), ("slow", 0.5))

    with pytest.raises(TransientError, match="timed out on all 2 attempts") as info:
        provider(server, timeout_s=0.2, max_retries=1).fetch("ACME", START, END)

    assert len(server.requests) == 2
    assert_no_key(info.value)


def test_connection_refused_is_retried_and_never_shows_the_url(caplog):
    with socket.socket() as sock:  # a loopback port that nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = Sleeps()
    dead = EodhdProvider(KEY, base_url=f"http://127.0.0.1:{port}", max_retries=2, sleep=sleeps)

    with pytest.raises(TransientError, match="connection failed on all 3 attempts") as info:
        dead.fetch("ACME", START, END)

    assert len(sleeps) == 2
    assert_no_key(info.value)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_stop_at_once(server, status):
    server.script("ACME.US", (status, {}))

    with pytest.raises(AuthError, match=rf"HTTP {status}.*missing, wrong or not entitled") as info:
        provider(server).fetch("ACME", START, END)

    assert len(server.requests) == 1
    assert_no_key(info.value)


def test_wrong_key_is_an_auth_error(server):
    wrong = EodhdProvider("NOT-THE-KEY", base_url=server.url, sleep=Sleeps())
    with pytest.raises(AuthError, match="HTTP 401") as info:
        wrong.fetch("ACME", START, END)
    assert len(server.requests) == 1
    assert "NOT-THE-KEY" not in str(info.value)


@pytest.mark.parametrize(
    ("symbol", "scripted", "message"),
    [
        ("ACME", (402, {}), "HTTP 402, quota or plan"),
        ("ACME", (404, {}), "HTTP 404"),
        ("NOPE", None, "HTTP 404"),
        ("EMPTY", None, "no daily bars"),
    ],
)
def test_not_available_after_one_request(server, symbol, scripted, message):
    if scripted:
        server.script(f"{symbol}.US", scripted)
    sleeps = Sleeps()

    with pytest.raises(NotAvailable, match=message) as info:
        provider(server, sleeps).fetch(symbol, START, END)

    assert len(server.requests) == 1
    assert sleeps == []
    assert_no_key(info.value)


def test_window_without_bars_is_not_available(server):
    with pytest.raises(NotAvailable, match="no daily bars"):
        provider(server).fetch("ACME", dt.date(2023, 1, 1), dt.date(2023, 1, 31))


def test_csv_answer_is_not_available(server):
    server.script("ACME.US", (200, "csv"))

    with pytest.raises(NotAvailable, match="not JSON") as info:
        provider(server).fetch("ACME", START, END)

    assert len(server.requests) == 1
    assert_no_key(info.value)


@pytest.mark.parametrize("key", [None, ""])
def test_missing_key_raises_without_any_request(server, key):
    with pytest.raises(AuthError, match="EODHD_API_KEY is not set") as info:
        EodhdProvider(key, base_url=server.url).fetch("ACME", START, END)

    assert server.requests == []
    assert_no_key(info.value)
