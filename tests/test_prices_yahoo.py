"""YFinanceProvider against yfinance's real code, with Yahoo faked at the HTTP boundary.

yfinance 1.7 sends every request through a curl_cffi session: ``YfData.get`` → ``_make_request``
→ ``Session.get`` → ``curl_cffi.requests.Session.request`` → libcurl. The fake replaces
``Session.request`` only, so yfinance's cookie/crumb dance, 429 handling, chart-JSON parsing,
time-zone handling and ``download()``'s MultiIndex assembly all run for real. A guard fails any
real connection: Python sockets to non-loopback hosts and libcurl's ``Curl.perform``, which opens
its sockets in C where a ``socket`` patch cannot see them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import curl_cffi.curl
import pandas as pd
import pytest
import yfinance
import yfinance._http
import yfinance.base
import yfinance.cache
import yfinance.data
from curl_cffi import requests as curl_requests

from charlie.prices.base import PRICE_COLUMNS, NotAvailable, TransientError
from charlie.prices.yahoo import YFinanceProvider, _to_price_frame

D = dt.date

# --------------------------------------------------------------------------------------------
# The fake Yahoo


@dataclasses.dataclass(frozen=True)
class Listing:
    """One symbol as Yahoo's chart API describes it."""

    symbol: str
    tz: str  # meta.exchangeTimezoneName
    tz_abbr: str  # meta.timezone
    gmtoffset: int
    currency: str
    exchange: str
    bar_time: str  # local time of day Yahoo stamps daily bars with (the session's open)
    # date -> (open, high, low, close, adjclose, volume); None is JSON null. Like Yahoo's,
    # open/high/low/close and volume are split-adjusted (not dividend-adjusted).
    bars: dict[str, tuple[float | None, ...]]
    # date -> (numerator, denominator): events.splits
    splits: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)

    def stamp(self, day: str) -> int:
        return int(pd.Timestamp(f"{day} {self.bar_time}", tz=self.tz).timestamp())

    def meta(self) -> dict[str, Any]:
        last = self.stamp(max(self.bars))
        closes = [bar[3] for bar in self.bars.values() if bar[3] is not None]
        period = {"timezone": self.tz_abbr, "gmtoffset": self.gmtoffset}
        return {
            "currency": self.currency,
            "symbol": self.symbol,
            "exchangeName": self.exchange,
            "fullExchangeName": self.exchange,
            "instrumentType": "EQUITY",
            "firstTradeDate": 345479400,
            "regularMarketTime": last + 23400,
            "hasPrePostMarketData": True,
            "gmtoffset": self.gmtoffset,
            "timezone": self.tz_abbr,
            "exchangeTimezoneName": self.tz,
            "regularMarketPrice": closes[-1] if closes else None,
            "chartPreviousClose": closes[0] if closes else None,
            "priceHint": 2,
            "currentTradingPeriod": {
                "pre": {**period, "start": last - 19800, "end": last},
                "regular": {**period, "start": last, "end": last + 23400},
                "post": {**period, "start": last + 23400, "end": last + 37800},
            },
            "dataGranularity": "1d",
            "range": "",
            "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"],
        }


# Apple, January 2024: raw OHLC, Yahoo's adjusted close, volume. Bars stamped 09:30 New York
# (EST, so 14:30 UTC).
AAPL = Listing(
    symbol="AAPL",
    tz="America/New_York",
    tz_abbr="EST",
    gmtoffset=-18000,
    currency="USD",
    exchange="NMS",
    bar_time="09:30",
    bars={
        "2024-01-02": (187.15, 188.44, 183.89, 185.64, 184.29, 82488700),
        "2024-01-03": (184.22, 185.88, 183.43, 184.25, 182.91, 58414500),
        "2024-01-04": (182.15, 183.09, 180.88, 181.91, 180.59, 71983600),
        "2024-01-05": (181.99, 182.76, 180.17, 181.18, 179.86, 62303300),
        "2024-01-08": (182.09, 185.60, 181.50, 185.56, 184.21, 59144500),
    },
)
# Toyota in Tokyo: bars stamped 09:00 JST, which is 00:00 UTC. A UTC day is the previous
# evening in New York but the same morning's date in Tokyo only if the zone is kept.
TOYOTA = Listing(
    symbol="7203.T",
    tz="Asia/Tokyo",
    tz_abbr="JST",
    gmtoffset=32400,
    currency="JPY",
    exchange="JPX",
    bar_time="09:00",
    bars={
        "2024-01-04": (2580.0, 2642.0, 2566.0, 2635.5, 2560.1, 24118600),
        "2024-01-05": (2650.0, 2695.0, 2640.0, 2683.0, 2606.3, 22951300),
        "2024-01-09": (2700.0, 2742.0, 2691.5, 2735.0, 2656.8, 25733900),
    },
)
# A 2:1 split effective 2024-01-04, as Yahoo serves it: the bars before it halved (volume
# doubled), so the series looks continuous. Traded closes: 200, 204, then 101, 103.
SPLIT = Listing(
    symbol="SPLT",
    tz="America/New_York",
    tz_abbr="EST",
    gmtoffset=-18000,
    currency="USD",
    exchange="NMS",
    bar_time="09:30",
    bars={
        "2024-01-02": (99.0, 101.0, 98.0, 100.0, 99.5, 2000),
        "2024-01-03": (100.0, 103.0, 99.5, 102.0, 101.5, 4000),
        "2024-01-04": (101.5, 102.0, 100.0, 101.0, 100.5, 3000),
        "2024-01-05": (101.0, 104.0, 100.5, 103.0, 102.5, 5000),
    },
    splits={"2024-01-04": (2, 1)},
)
NULL_BAR = (None, None, None, None, None, None)

CHART_PATH = "/v8/finance/chart/"
DELISTED = {"code": "Not Found", "description": "No data found, symbol may be delisted"}
CURL_TIMEOUT = (
    "Failed to perform, curl: (28) Connection timed out after 10001 milliseconds. "
    "See https://curl.se/libcurl/c/libcurl-errors.html first for more details."
)


def _response(url: str, status: int, body: str, content_type: str) -> curl_requests.Response:
    response = curl_requests.Response()
    response.url = url
    response.status_code = status
    response.ok = 200 <= status < 400
    response.reason = {200: "OK", 404: "Not Found", 429: "Too Many Requests"}.get(status, "")
    response.headers["Content-Type"] = content_type
    response.content = body.encode()
    return response


def _json(url: str, status: int, payload: dict[str, Any]) -> curl_requests.Response:
    return _response(url, status, json.dumps(payload), "application/json;charset=utf-8")


class FakeYahoo:
    """Yahoo's hosts as yfinance 1.7 uses them, served from ``Session.request``."""

    def __init__(self) -> None:
        self.listings: dict[str, Listing] = {}
        self.mode = "ok"  # "ok" | "rate_limited" | "timeout"
        self.requests: list[tuple[str, str, dict[str, Any]]] = []

    def add(self, listing: Listing) -> None:
        self.listings[listing.symbol] = listing

    def chart_requests(self, symbol: str) -> list[dict[str, Any]]:
        return [
            params
            for _, url, params in self.requests
            if urlsplit(url).path == CHART_PATH + symbol and "period1" in params
        ]

    def request(self, method: str, url: str, params: dict[str, Any] | None) -> Any:
        params = dict(params or {})
        self.requests.append((method, url, params))
        if self.mode == "rate_limited":
            return _response(url, 429, "Too Many Requests\r\n", "text/html;charset=utf-8")
        if self.mode == "timeout":
            raise curl_requests.exceptions.Timeout(CURL_TIMEOUT, 28)
        parts = urlsplit(url)
        if parts.hostname == "fc.yahoo.com":  # the cookie endpoint answers 404 (+ Set-Cookie)
            return _response(url, 404, "", "text/html;charset=utf-8")
        if parts.path.endswith("/v1/test/getcrumb"):
            return _response(url, 200, "kR7tV0aXq2m", "text/plain;charset=utf-8")
        if parts.path.startswith(CHART_PATH):
            return self._chart(url, parts.path.removeprefix(CHART_PATH), params)
        if "/quoteSummary/" in parts.path:
            symbol = parts.path.rsplit("/", 1)[-1]
            error = {"code": "Not Found", "description": f"Quote not found for symbol: {symbol}"}
            return _json(url, 404, {"quoteSummary": {"result": None, "error": error}})
        if parts.path == "/v7/finance/quote":
            return _json(url, 200, {"quoteResponse": {"result": [], "error": None}})
        if "/finance/timeseries/" in parts.path:
            return _json(url, 200, {"timeseries": {"result": [], "error": None}})
        error = {"code": "Not Found", "description": "HTTP 404 Not Found"}
        return _json(url, 404, {"finance": {"result": None, "error": error}})

    def _chart(self, url: str, symbol: str, params: dict[str, Any]) -> Any:
        listing = self.listings.get(symbol)
        if listing is None:
            return _json(url, 404, {"chart": {"result": None, "error": DELISTED}})
        if "range" in params:  # yfinance's time-zone lookup asks for range=1d: the latest bar
            days = [max(listing.bars)]
        else:
            days = [
                day
                for day in sorted(listing.bars)
                if params["period1"] <= listing.stamp(day) < params["period2"]
            ]
        result: dict[str, Any] = {"meta": listing.meta()}
        if days:
            columns = list(zip(*(listing.bars[day] for day in days), strict=True))
            quote = dict(zip(["open", "high", "low", "close"], columns[:4], strict=True))
            result["timestamp"] = [listing.stamp(day) for day in days]
            result["indicators"] = {
                "quote": [{**quote, "volume": columns[5]}],
                "adjclose": [{"adjclose": columns[4]}],
            }
        else:  # Yahoo's answer for a window without bars
            result["indicators"] = {"quote": [{}], "adjclose": [{}]}
        splits = {
            str(listing.stamp(day)): {"date": listing.stamp(day), "numerator": num,
                                      "denominator": den, "splitRatio": f"{num}:{den}"}
            for day, (num, den) in sorted(listing.splits.items())
            if "range" not in params and params["period1"] <= listing.stamp(day) < params["period2"]
        }  # fmt: skip
        if splits:
            result["events"] = {"splits": splits}
        return _json(url, 200, {"chart": {"result": [result], "error": None}})


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(autouse=True)
def blocked_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail (and record) any real connection: Python sockets off loopback, and libcurl."""
    attempts: list[str] = []
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in (
            "127.0.0.1",
            "::1",
            "localhost",
        ):
            attempts.append(f"socket {address!r}")
            raise OSError(f"test blocked a connection to {address!r}")
        real_connect(sock, address)

    def perform(curl: Any, *args: Any, **kwargs: Any) -> None:
        attempts.append("libcurl perform")
        raise curl_cffi.curl.CurlError("test blocked libcurl")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(curl_cffi.curl.Curl, "perform", perform)
    yield attempts
    assert attempts == [], "a request got past the fake"


@pytest.fixture(autouse=True)
def fresh_yfinance(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No on-disk caches, no cookie/crumb or responses remembered from an earlier test."""
    assert yfinance._http.HAS_CURL_CFFI, "yfinance must use curl_cffi, where the fake sits"
    cache = yfinance.cache
    monkeypatch.setattr(cache._TzCacheManager, "_tz_cache", cache._TzCacheDummy())
    monkeypatch.setattr(cache._CookieCacheManager, "_Cookie_cache", cache._CookieCacheDummy())
    monkeypatch.setattr(yfinance.data.SingletonMeta, "_instances", {})  # a new YfData
    monkeypatch.setattr(yfinance.base, "_tz_info_fetch_ctr", 0)
    yfinance.data.YfData.cache_get.cache_clear()
    yield
    yfinance.data.YfData.cache_get.cache_clear()


@pytest.fixture
def yahoo(monkeypatch: pytest.MonkeyPatch) -> FakeYahoo:
    fake = FakeYahoo()
    fake.add(AAPL)
    fake.add(TOYOTA)
    fake.add(SPLIT)

    def request(session: Any, method: str, url: str, params: Any = None, **kwargs: Any) -> Any:
        return fake.request(method, url, params)

    monkeypatch.setattr(curl_requests.Session, "request", request)
    return fake


def _days(frame: pd.DataFrame) -> list[str]:
    return frame["date"].dt.strftime("%Y-%m-%d").tolist()


def _one_sentence(message: str) -> bool:
    return message.endswith(".") and "\n" not in message and ". " not in message


# --------------------------------------------------------------------------------------------
# Tests


def test_fetch_returns_contract_frame_with_inclusive_end(
    yahoo: FakeYahoo, blocked_network: list[str]
) -> None:
    frame = YFinanceProvider().fetch("AAPL", D(2024, 1, 2), D(2024, 1, 5))

    assert yahoo.chart_requests("AAPL"), "the fake is where yfinance's requests end"
    assert blocked_network == []
    assert list(frame.columns) == list(PRICE_COLUMNS)
    assert frame["date"].dtype == "datetime64[ns]"
    assert all(frame[column].dtype == "float64" for column in PRICE_COLUMNS[1:])
    # The bars are stamped 14:30 UTC; the dates are New York's, and `end` is inclusive.
    assert AAPL.stamp("2024-01-02") == pd.Timestamp("2024-01-02 14:30", tz="UTC").timestamp()
    assert _days(frame) == ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]
    first = frame.iloc[0]
    assert (first.open, first.high, first.low, first.close) == (187.15, 188.44, 183.89, 185.64)
    assert first.adj_close == 184.29  # Yahoo's adjusted close, not the raw close
    assert first.volume == 82488700.0
    # The provider asks from `start` through today (for the splits after `end`), then cuts.
    (params,) = yahoo.chart_requests("AAPL")
    new_york = AAPL.tz
    assert params["period1"] == pd.Timestamp("2024-01-02", tz=new_york).timestamp()
    assert params["period2"] >= pd.Timestamp.now("UTC").normalize().timestamp() - 86400
    assert params["interval"] == "1d"
    assert "split" in params["events"]


def test_a_split_is_undone_to_the_prices_actually_traded(yahoo: FakeYahoo) -> None:
    frame = YFinanceProvider().fetch("SPLT", D(2024, 1, 2), D(2024, 1, 5))

    assert _days(frame) == ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]
    # Before the split: Yahoo's levels x 2, volume / 2; from the split date on: as served.
    assert frame["close"].tolist() == [200.0, 204.0, 101.0, 103.0]
    assert frame["open"].tolist() == [198.0, 200.0, 101.5, 101.0]
    assert frame["high"].tolist() == [202.0, 206.0, 102.0, 104.0]
    assert frame["low"].tolist() == [196.0, 199.0, 100.0, 100.5]
    assert frame["volume"].tolist() == [1000.0, 2000.0, 3000.0, 5000.0]
    # The raw close halves at the split; adj_close stays Yahoo's, continuous across it.
    assert frame["close"].iloc[2] / frame["close"].iloc[1] < 0.5
    assert frame["adj_close"].tolist() == [99.5, 101.5, 100.5, 102.5]


def test_a_split_after_the_window_is_undone_too(yahoo: FakeYahoo) -> None:
    frame = YFinanceProvider().fetch("SPLT", D(2024, 1, 2), D(2024, 1, 3))

    assert _days(frame) == ["2024-01-02", "2024-01-03"]
    assert frame["close"].tolist() == [200.0, 204.0]  # not Yahoo's 100 and 102
    assert frame["volume"].tolist() == [1000.0, 2000.0]


@pytest.mark.parametrize(
    ("splits", "closes"),
    [
        ({}, [100.0, 102.0, 101.0, 103.0]),  # no split: as served
        ({"2024-01-03": (3, 1), "2024-01-05": (2, 1)}, [600.0, 204.0, 202.0, 103.0]),
        ({"2024-01-04": (1, 4)}, [25.0, 25.5, 101.0, 103.0]),  # a 1:4 reverse split
    ],
)
def test_split_ratios_compound(yahoo: FakeYahoo, splits: dict, closes: list[float]) -> None:
    yahoo.add(dataclasses.replace(SPLIT, splits=splits))

    frame = YFinanceProvider().fetch("SPLT", D(2024, 1, 2), D(2024, 1, 5))

    assert frame["close"].tolist() == closes


def test_dates_stay_on_the_exchange_calendar_east_of_utc(yahoo: FakeYahoo) -> None:
    # 09:00 JST is 00:00 UTC: bars land on midnight Tokyo time, 15:00 UTC the day before. Going
    # through UTC would shift every date back by one.
    assert TOYOTA.stamp("2024-01-04") == pd.Timestamp("2024-01-04 00:00", tz="UTC").timestamp()

    frame = YFinanceProvider().fetch("7203.T", D(2024, 1, 4), D(2024, 1, 9))

    assert _days(frame) == ["2024-01-04", "2024-01-05", "2024-01-09"]
    assert frame["close"].tolist() == [2635.5, 2683.0, 2735.0]


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # yfinance 1.7 under pandas 3.1
@pytest.mark.parametrize("group_by", ["column", "ticker"])
def test_download_multiindex_is_flattened_in_either_level_order(
    yahoo: FakeYahoo, group_by: str
) -> None:
    raw = yfinance.download(
        "AAPL",
        start="2024-01-02",
        end="2024-01-06",
        auto_adjust=False,
        progress=False,
        threads=False,
        ignore_tz=False,
        group_by=group_by,
    )
    # The trap: one ticker, still (Price, Ticker) or (Ticker, Price) columns, a zoned index.
    assert isinstance(raw.columns, pd.MultiIndex)
    assert str(raw.index.tz) == "America/New_York"

    flat = _to_price_frame(raw, "AAPL")

    assert list(flat.columns) == list(PRICE_COLUMNS)
    assert _days(flat) == ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]
    assert flat["adj_close"].tolist() == [184.29, 182.91, 180.59, 179.86]


def test_null_bars_are_dropped(yahoo: FakeYahoo) -> None:
    bars = dict(AAPL.bars)
    bars["2024-01-03"] = NULL_BAR  # Yahoo sends nulls for a halted or phantom day
    bars["2024-01-04"] = (182.15, 183.09, 180.88, None, None, 0)  # no close: no bar
    yahoo.add(dataclasses.replace(AAPL, bars=bars))

    frame = YFinanceProvider().fetch("AAPL", D(2024, 1, 2), D(2024, 1, 8))

    assert _days(frame) == ["2024-01-02", "2024-01-05", "2024-01-08"]
    assert not frame.isna().any().any()


def test_only_null_bars_is_not_available(yahoo: FakeYahoo) -> None:
    yahoo.add(dataclasses.replace(AAPL, bars=dict.fromkeys(AAPL.bars, NULL_BAR)))

    with pytest.raises(NotAvailable) as caught:
        YFinanceProvider().fetch("AAPL", D(2024, 1, 2), D(2024, 1, 8))

    assert _one_sentence(str(caught.value))


def test_window_without_bars_is_not_available(yahoo: FakeYahoo) -> None:
    with pytest.raises(NotAvailable, match="AAPL from 2024-01-06 to 2024-01-07") as caught:
        YFinanceProvider().fetch("AAPL", D(2024, 1, 6), D(2024, 1, 7))  # a weekend

    assert yahoo.chart_requests("AAPL")
    assert _one_sentence(str(caught.value))


def test_delisted_symbol_is_not_available_without_a_traceback(yahoo: FakeYahoo) -> None:
    with pytest.raises(NotAvailable, match="ZZZZ") as caught:
        YFinanceProvider().fetch("ZZZZ", D(2024, 1, 2), D(2024, 1, 5))

    assert any(urlsplit(url).path == CHART_PATH + "ZZZZ" for _, url, _ in yahoo.requests)
    assert "delisted" in str(caught.value)
    assert _one_sentence(str(caught.value))
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


def test_rate_limit_is_transient(yahoo: FakeYahoo) -> None:
    yahoo.mode = "rate_limited"

    with pytest.raises(TransientError, match="429") as caught:
        YFinanceProvider().fetch("AAPL", D(2024, 1, 2), D(2024, 1, 5))

    assert any(CHART_PATH in url for _, url, _ in yahoo.requests)
    assert _one_sentence(str(caught.value))


def test_network_timeout_is_transient(yahoo: FakeYahoo) -> None:
    yahoo.mode = "timeout"

    with pytest.raises(TransientError, match="timed out") as caught:
        YFinanceProvider(timeout_s=0.5).fetch("AAPL", D(2024, 1, 2), D(2024, 1, 5))

    assert yahoo.requests
    assert _one_sentence(str(caught.value))


def test_yfinance_noise_goes_through_logging_at_warning_or_below(
    yahoo: FakeYahoo, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    # At the default level first: yfinance turns its progress bar off by itself under DEBUG.
    YFinanceProvider().fetch("AAPL", D(2024, 1, 2), D(2024, 1, 5))
    with pytest.raises(NotAvailable):
        YFinanceProvider().fetch("ZZZZ", D(2024, 1, 2), D(2024, 1, 5))
    assert capfd.readouterr() == ("", "")  # no progress bar, no printed warnings or errors

    caplog.set_level(logging.DEBUG)
    with pytest.raises(NotAvailable):
        YFinanceProvider().fetch("ZZZZ", D(2024, 1, 2), D(2024, 1, 5))

    assert not [r for r in caplog.records if r.name.startswith("yfinance")]
    ours = [r for r in caplog.records if r.name == "charlie.prices.yahoo"]
    assert any("delisted" in r.getMessage() for r in ours)  # yfinance's error, re-emitted
    assert max(r.levelno for r in ours) <= logging.WARNING


def test_importing_the_module_does_not_import_yfinance() -> None:
    code = "import sys, charlie.prices.yahoo; print('yfinance' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
