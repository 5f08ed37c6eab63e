"""Daily bars from EODHD's end-of-day API (https://eodhd.com/financial-apis/api-for-historical-data-and-volumes).

OHLC come back raw and ``adjusted_close`` adjusted for splits and dividends; it becomes
``adj_close``. The API key travels in the query string, so nothing here ever logs a URL or a
``requests`` exception text, and urllib3's request-line logging is redacted by a filter.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, urljoin, urlsplit

import pandas as pd
import requests
import urllib3

from charlie.logs import RedactingFilter, register_secret
from charlie.prices.base import AuthError, NotAvailable, TransientError, normalize_frame
from charlie.prices.cache import CachedProvider

log = logging.getLogger("charlie.prices.eodhd")

# urllib3 logs the request line (path and query, so the api_token) at DEBUG on these loggers.
_URL_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry")
MAX_REDIRECTS = 5
_BAR_FIELDS = {"date", "open", "high", "low", "close", "volume"}  # adjusted_close is optional


_REDACTOR = RedactingFilter()


def _redact_in_urllib3_logs(secret: str) -> None:
    """Registers ``secret`` (raw and URL-encoded) and redacts urllib3's request lines with it."""
    for form in (secret, quote_plus(secret), quote(secret, safe="")):
        register_secret(form)
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)


def _retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), else None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


KEY_ENV = "EODHD_API_KEY"


def from_params(params: Any, env: Mapping[str, str]) -> CachedProvider:
    """The ``eodhd`` provider of the ``prices`` section (``prices.eodhd``), cached as parquet."""
    o = params.eodhd
    provider = EodhdProvider(env.get(KEY_ENV), base_url=o.base_url, exchange=o.exchange,
                             timeout_s=o.timeout_s, max_retries=o.max_retries, backoff_s=o.backoff_s)  # fmt: skip
    return CachedProvider(provider, params.cache_dir)


class EodhdProvider:
    """Fetches daily bars from EODHD, retrying rate limits, server errors and timeouts.

    Args:
        api_key: The EODHD API token; None or empty makes every fetch raise AuthError.
        base_url: Scheme and host of the API (a local stand-in in tests).
        exchange: Exchange suffix appended to tickers that carry none (``ACME`` → ``ACME.US``).
        timeout_s: Connect and read timeout of one request.
        max_retries: Retries after the first attempt for 429, 5xx, timeouts and connection errors.
        backoff_s: First backoff; attempt ``n`` waits ``backoff_s * 2**n`` times a jitter factor.
        max_backoff_s: Cap on any single wait, ``Retry-After`` included.
        sleep: Waits between attempts (injected so tests do not really wait).
        rng: Source of the jitter.
    """

    name = "eodhd"

    def __init__(
        self,
        api_key: str | None,
        *,
        base_url: str = "https://eodhd.com",
        exchange: str = "US",
        timeout_s: float = 10.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._api_key = api_key or None
        self._base_url = base_url.rstrip("/")
        self._exchange = exchange
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._session = requests.Session()
        if self._api_key:
            _redact_in_urllib3_logs(self._api_key)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._max_backoff_s)
        jitter = self._rng.uniform(0.75, 1.25)  # < 2x spread keeps successive waits growing
        return min(self._backoff_s * 2**attempt * jitter, self._max_backoff_s)

    def fetch(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        """Daily bars for ``ticker`` dated ``start`` to ``end`` inclusive, in the base.py format.

        Raises:
            AuthError: No key, or EODHD answered 401/403.
            NotAvailable: 402 (quota or plan), 404, another 4xx, an empty or non-JSON answer.
            TransientError: 429, 5xx, timeouts or connection errors outlasted every retry.
        """
        if not self._api_key:
            raise AuthError("EODHD_API_KEY is not set, so eodhd cannot be queried.")
        symbol = ticker if "." in ticker else f"{ticker.upper()}.{self._exchange}"
        url = f"{self._base_url}/api/eod/{quote(symbol, safe='.-_')}"
        params = {
            "api_token": self._api_key,
            "fmt": "json",
            "from": start.isoformat(),
            "to": end.isoformat(),
        }
        attempts = self._max_retries + 1
        for attempt in range(attempts):
            retry_after = None
            try:
                response = self._get(symbol, url, params)
            except requests.Timeout:
                problem = "timed out"
            except requests.ConnectionError:  # its text holds the URL, hence the key: never shown
                problem = "connection failed"
            except requests.RequestException:  # a body cut short (IncompleteRead) or undecodable
                problem = "truncated answer"
            else:
                status = response.status_code
                if status == 200:
                    return self._frame(symbol, response, start, end)
                if status in (401, 403):
                    raise AuthError(
                        f"eodhd {symbol}: HTTP {status}, the API key is missing, wrong or not "
                        "entitled to this symbol."
                    )
                if status != 429 and status < 500:
                    reason = "quota or plan exhausted" if status == 402 else "no data served"
                    raise NotAvailable(f"eodhd {symbol}: HTTP {status}, {reason}.")
                problem = f"HTTP {status}"
                retry_after = _retry_after_s(response.headers.get("Retry-After"))
            if attempt == self._max_retries:
                break
            wait = self._backoff(attempt, retry_after)
            log.warning(
                "eodhd %s: %s, retry %d/%d in %.1f s",
                symbol,
                problem,
                attempt + 1,
                self._max_retries,
                wait,
            )
            self._sleep(wait)
        raise TransientError(f"eodhd {symbol}: {problem} on all {attempts} attempts.")

    def _get(self, symbol: str, url: str, params: dict[str, str]) -> requests.Response:
        """One GET, its whole answer read within ``timeout_s``, redirects on the same origin only.

        The key travels in the query, so a redirect to another scheme, host or port is never
        followed (that host's logs would get the key): it is ``NotAvailable``, with the host.
        ``timeout_s`` bounds the whole request, not each read, so a server that drips its
        answer a byte at a time times out like one that never answers.
        """
        deadline = time.monotonic() + self._timeout_s
        for _ in range(MAX_REDIRECTS + 1):
            response = self._session.get(url, params=params, timeout=self._timeout_s,
                                         allow_redirects=False, stream=True)  # fmt: skip
            if not response.is_redirect:
                break
            target = urljoin(url, response.headers["Location"])
            response.close()
            if urlsplit(target)[:2] != urlsplit(url)[:2]:
                raise NotAvailable(f"eodhd {symbol}: redirected to another host "
                                   f"({urlsplit(target).netloc}), where the key is never sent.")  # fmt: skip
            url, params = target, (params if not urlsplit(target).query else {})
        else:
            raise NotAvailable(f"eodhd {symbol}: more than {MAX_REDIRECTS} redirects.")
        chunks = []
        with response:
            try:
                while chunk := response.raw.read1(1 << 16, decode_content=True):
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise requests.Timeout
            except urllib3.exceptions.TimeoutError:
                raise requests.Timeout from None
            except urllib3.exceptions.HTTPError:  # IncompleteRead, a reset mid-body
                raise requests.exceptions.ChunkedEncodingError from None
        response._content = b"".join(chunks)  # what requests itself sets when it reads
        return response

    @staticmethod
    def _frame(
        symbol: str, response: requests.Response, start: dt.date, end: dt.date
    ) -> pd.DataFrame:
        try:
            payload = response.json()
        except ValueError:
            raise NotAvailable(
                f"eodhd {symbol}: the answer was not JSON (fmt=json ignored?), so it was not used."
            ) from None
        if not isinstance(payload, list) or not all(isinstance(row, dict) for row in payload):
            raise NotAvailable(f"eodhd {symbol}: the answer was not a list of daily bars.")
        raw = pd.DataFrame(payload)
        if raw.empty or not _BAR_FIELDS.issubset(raw.columns):
            raise NotAvailable(f"eodhd {symbol}: no daily bars in the requested window.")
        raw = raw.drop(columns=["adj_close"], errors="ignore")
        frame = normalize_frame(raw.rename(columns={"adjusted_close": "adj_close"}), start, end)
        if frame.empty:
            raise NotAvailable(f"eodhd {symbol}: no daily bars in the requested window.")
        log.debug("eodhd %s: %d bars %s to %s", symbol, len(frame), start, end)
        return frame
