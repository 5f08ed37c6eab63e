"""Prices for many tickers through an ordered chain of providers, with a provenance table.

Each ticker is asked of the providers in order until one serves it: ``NotAvailable`` and
``TransientError`` move on to the next provider, ``AuthError`` stops the whole run (a key
problem must be fixed, not papered over by a fallback). The result says what came from where
and what is still missing; only a ticker with no data at all is an error.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from charlie.errors import CharlieError
from charlie.prices import registry
from charlie.prices.base import AuthError, NotAvailable, PriceProvider, TransientError
from charlie.prices.validate import MAX_DROPPED_SHARE, describe
from charlie.progress import progress_bar
from charlie.tickers import require_tickers

log = logging.getLogger("charlie.prices")


@dataclass
class PriceResult:
    """Bars per ticker and one provenance row per (ticker, provider) attempt."""

    frames: dict[str, pd.DataFrame]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return sorted({r["ticker"] for r in self.rows} - set(self.frames))

    def table(self) -> str:
        """A plain-text table of what came from where."""
        header = f"{'ticker':<10}{'provider':<10}{'status':<10}{'bars':>6}{'cached':>8}  detail"
        lines = [header, "-" * len(header)]
        for r in self.rows:
            lines.append(
                f"{r['ticker']:<10}{r['provider']:<10}{r['status']:<10}{r['bars']:>6}"
                f"{r['cached']:>8}  {r['detail']}"
            )
        return "\n".join(lines)


def build_providers(params: Any, env: Mapping[str, str] | None = None) -> list[PriceProvider]:
    """The provider chain named in the ``prices`` config section (see charlie.prices.registry).

    Args:
        params: A ``PricesParams`` (see charlie.config).
        env: Where providers read their keys, e.g. ``EODHD_API_KEY`` (default ``os.environ``).
    """
    env = os.environ if env is None else env
    return [registry.create(name, params, env) for name in params.providers]


def fetch_prices(
    wanted: dict[str, tuple[dt.date, dt.date]],
    providers: list[PriceProvider],
    progress: Any = None,
) -> PriceResult:
    """Fetch bars for each ticker's ``(start, end)`` range through the provider chain.

    Args:
        wanted: Ticker to inclusive date range.
        providers: Tried in order for each ticker.
        progress: Optional bar with ``update()``, advanced once per ticker.

    Raises:
        CharlieError: A provider refused the key (401/403); the message names the provider.
    """
    require_tickers(list(wanted), "prices")
    result = PriceResult(frames={})
    for ticker, (start, end) in wanted.items():
        for provider in providers:
            row = {"ticker": ticker, "provider": provider.name, "bars": 0, "cached": 0}
            try:
                frame = provider.fetch(ticker, start, end)
            except AuthError as exc:
                raise CharlieError(f"{provider.name}: {exc}") from None
            except (NotAvailable, TransientError) as exc:
                status = "empty" if isinstance(exc, NotAvailable) else "failed"
                result.rows.append({**row, "status": status, "detail": str(exc)})
                log.debug("%s %s: %s", provider.name, ticker, exc)
                continue
            dropped = Counter(frame.attrs.get("dropped", {}))
            if sum(dropped.values()) > MAX_DROPPED_SHARE * (len(frame) + sum(dropped.values())):
                detail = f"unusable: {describe(dropped)} of {len(frame) + dropped.total()} bars"
                result.rows.append({**row, "status": "invalid", "detail": detail})
                log.warning("%s %s: %s", provider.name, ticker, detail)
                continue
            stats = getattr(provider, "last", None)
            cached = stats.cached_rows if stats else 0
            detail = f"{frame['date'].min():%Y-%m-%d} .. {frame['date'].max():%Y-%m-%d}"
            if stats and stats.fetched_ranges:
                detail += f", fetched {len(stats.fetched_ranges)} missing range(s)"
            if dropped:
                detail += f", {describe(dropped)}"
                log.warning("%s %s: %s", provider.name, ticker, describe(dropped))
            result.rows.append(
                {**row, "status": "ok", "bars": len(frame), "cached": cached, "detail": detail}
            )
            result.frames[ticker] = frame
            break
        else:
            log.warning("no provider has prices for %s", ticker)
        if progress is not None:
            progress.update()
    return result


def require_all(result: PriceResult, providers: list[PriceProvider]) -> None:
    """Raise one sentence when some ticker got no data from any provider."""
    if result.missing:
        names = ", ".join(p.name for p in providers)
        raise CharlieError(
            f"no price data for {', '.join(result.missing)} from any provider ({names}); "
            "the table above says what each one answered."
        )


def load_all_prices(
    wanted: dict[str, tuple[dt.date, dt.date]], params: Any, env: Mapping[str, str] | None = None
) -> PriceResult:
    """Fetch every ticker through the configured chain, log the table, fail on missing ones.

    Args:
        wanted: Ticker to inclusive date range.
        params: A ``PricesParams`` (the ``prices`` section).
        env: Where to read ``EODHD_API_KEY`` (default ``os.environ``).
    """
    providers = build_providers(params, env)
    log.info("prices for %d tickers from %s", len(wanted), " -> ".join(p.name for p in providers))
    with progress_bar(total=len(wanted), desc="prices", unit="ticker") as bar:
        result = fetch_prices(wanted, providers, bar)
    for line in result.table().splitlines():
        log.info(line)
    require_all(result, providers)
    return result
