"""A fake EODHD end-of-day API on 127.0.0.1 for tests.

It speaks the parts of the real API that the eodhd provider relies on:

* ``GET /api/eod/<SYMBOL>?api_token=…&fmt=json&from=YYYY-MM-DD&to=YYYY-MM-DD`` answers a JSON
  list of ``{"date", "open", "high", "low", "close", "adjusted_close", "volume"}`` bars from
  the ``bars`` dict, filtered by ``from``/``to``; without ``fmt=json`` it answers CSV, as the
  real API does; an unknown symbol gets 404; a wrong ``api_token`` gets 401 when ``api_key``
  is set.
* Every request is recorded in ``server.requests`` (path and query dict), in arrival order.
* Per symbol, a queue of scripted responses is served before the normal answer, one per
  request (see ``FakeEodhd.script``).

Usage::

    from .eodhd_server import FakeEodhd, make_bars  # from a module in tests/

    with FakeEodhd({"ACME.US": make_bars(["2024-01-02", "2024-01-03"])}) as server:
        server.script("ACME.US", (429, {"Retry-After": "2"}), (500, {}))
        provider = EodhdProvider("KEY", base_url=server.url)
        ...
        assert len(server.requests_for("ACME.US")) == 3
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

#: A scripted response: ``(status, headers)`` answers that status with those headers and a
#: small JSON error body; ``(status, "csv")`` answers that status with the symbol's bars as CSV;
#: ``(status, text)`` answers that status with ``text`` as the body; ``("slow", seconds)``
#: sleeps that long before giving the normal answer (to outlast a client's timeout);
#: ``("drip", seconds)`` sends the normal answer a byte at a time, that long apart;
#: ``("truncate", n)`` announces the normal answer's length but sends its first n bytes only.
Scripted = tuple[Any, Any]

_PREFIX = "/api/eod/"
_CSV_HEADER = "Date,Open,High,Low,Close,Adjusted_close,Volume"
_FIELDS = ("date", "open", "high", "low", "close", "adjusted_close", "volume")


class RecordedRequest(NamedTuple):
    """One request as the server saw it; ``query`` keeps the last value of each parameter."""

    path: str
    query: dict[str, str]

    @property
    def symbol(self) -> str:
        """The symbol of an ``/api/eod/<SYMBOL>`` request, else an empty string."""
        return unquote(self.path[len(_PREFIX) :]) if self.path.startswith(_PREFIX) else ""


def bars_from_csv(folder: Path, suffix: str = ".US") -> dict[str, list[dict[str, Any]]]:
    """The file provider's ``<TICKER>.csv`` files (the sample's prices) as EODHD serves them."""
    bars = {}
    for path in sorted(Path(folder).glob("*.csv")):
        with path.open(encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        bars[f"{path.stem}{suffix}"] = [
            {"date": r["date"], "open": float(r["open"]), "high": float(r["high"]),
             "low": float(r["low"]), "close": float(r["close"]),
             "adjusted_close": float(r["adj_close"]), "volume": float(r["volume"])}
            for r in rows
        ]  # fmt: skip
    return bars


def make_bars(
    dates: Iterable[str | dt.date], *, start_price: float = 100.0, adj_ratio: float = 0.9
) -> list[dict[str, Any]]:
    """Bars in the EODHD JSON format with deterministic prices, one per date, in the given order.

    Bar ``i`` closes at ``start_price + i``, opens 0.5 below, spans ±1 around the close, has an
    ``adjusted_close`` of ``close * adj_ratio`` (so adjusted and raw prices differ) and a
    volume of ``1000 * (i + 1)``.
    """
    bars = []
    for i, day in enumerate(dates):
        close = start_price + i
        bars.append(
            {
                "date": day.isoformat() if isinstance(day, dt.date) else str(day),
                "open": close - 0.5,
                "high": close + 1.0,
                "low": close - 1.0,
                "close": close,
                "adjusted_close": round(close * adj_ratio, 4),
                "volume": 1000 * (i + 1),
            }
        )
    return bars


class FakeEodhd:
    """A threaded HTTP server on 127.0.0.1 (a free port) that imitates EODHD's EOD endpoint.

    Args:
        bars: ``{symbol: bars}``, symbols as requested (``"ACME.US"``); ``[]`` serves an empty
            list, a missing symbol 404. Mutable afterwards through ``server.bars``.
        api_key: When set, requests whose ``api_token`` differs get 401.

    Use it as a context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(
        self, bars: Mapping[str, list[dict[str, Any]]] | None = None, *, api_key: str | None = None
    ) -> None:
        self.bars: dict[str, list[dict[str, Any]]] = dict(bars or {})
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self._scripts: dict[str, deque[Scripted]] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL to hand to the provider, e.g. ``http://127.0.0.1:54321``."""
        if self._httpd is None:
            raise RuntimeError("FakeEodhd is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, symbol: str, *responses: Scripted) -> None:
        """Queues responses for ``symbol``, served one per request before the normal answer."""
        with self._lock:
            self._scripts.setdefault(symbol, deque()).extend(responses)

    def requests_for(self, symbol: str) -> list[RecordedRequest]:
        """The recorded requests for one symbol, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.symbol == symbol]

    def start(self) -> FakeEodhd:
        """Binds 127.0.0.1 on a free port and serves from a daemon thread."""
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True  # a "slow" handler must not hold up stop()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},  # shutdown() waits up to one poll interval
            name="fake-eodhd",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving and closes the listening socket; safe to call twice."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeEodhd:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- called from handler threads ------------------------------------------------------

    def _record(self, path: str, query: dict[str, str]) -> Scripted | None:
        with self._lock:
            request = RecordedRequest(path, query)
            self.requests.append(request)
            queue = self._scripts.get(request.symbol)
            return queue.popleft() if queue else None

    def _rows(self, path: str, query: dict[str, str]) -> list[dict[str, Any]] | None:
        """The symbol's bars within ``from``/``to``, or None for an unknown symbol."""
        with self._lock:
            bars = self.bars.get(RecordedRequest(path, query).symbol)
        if bars is None:
            return None
        lo, hi = query.get("from", "0000-00-00"), query.get("to", "9999-99-99")
        return [bar for bar in bars if lo <= bar["date"] <= hi]

    def _answer(self, path: str, query: dict[str, str]) -> tuple[int, dict[str, str], str]:
        """The normal answer: (status, headers, body)."""
        symbol = RecordedRequest(path, query).symbol
        if not symbol:
            return 404, {}, json.dumps({"error": "Not found"})
        if self.api_key is not None and query.get("api_token") != self.api_key:
            return 401, {}, json.dumps({"error": "Unauthenticated"})
        rows = self._rows(path, query)
        if rows is None:
            return 404, {}, "Ticker Not Found."
        if query.get("fmt") != "json":
            return 200, {"Content-Type": "text/csv"}, _csv(rows)
        return 200, {"Content-Type": "application/json"}, json.dumps(rows)


def _csv(rows: list[dict[str, Any]]) -> str:
    lines = [_CSV_HEADER] + [",".join(str(row.get(f, "")) for f in _FIELDS) for row in rows]
    return "\n".join(lines) + "\n"


def _make_handler(server: FakeEodhd) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # silence the access log
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            scripted = server._record(parts.path, query)
            status, headers, body = server._answer(parts.path, query)
            if scripted is not None:
                kind, arg = scripted
                if kind == "slow":
                    time.sleep(float(arg))
                elif kind in ("drip", "truncate"):
                    self._send(status, headers, body, **{kind: arg})
                    return
                elif isinstance(arg, Mapping):
                    status, headers = int(kind), {"Content-Type": "application/json", **arg}
                    body = json.dumps({"error": f"scripted HTTP {status}"})
                elif arg == "csv":
                    rows = server._rows(parts.path, query) or []
                    status, headers, body = int(kind), {"Content-Type": "text/csv"}, _csv(rows)
                else:
                    status, headers, body = int(kind), {"Content-Type": "text/plain"}, str(arg)
            self._send(status, headers, body)

        def _send(self, status: int, headers: dict[str, str], body: str, *,
                  drip: float | None = None, truncate: int | None = None) -> None:  # fmt: skip
            data = body.encode()
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if truncate is not None:
                    self.wfile.write(data[:truncate])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if drip is None:
                    self.wfile.write(data)
                    return
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(drip)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a "slow" answer past its timeout)

    return Handler
