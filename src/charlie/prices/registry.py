"""The price providers by name: ``prices.providers`` in params.yaml names them.

A provider is a module with a class following ``charlie.prices.base.PriceProvider`` and a
``from_params(params, env)`` factory; adding one is that module plus one line here. Modules are
imported only when a run uses them (yfinance is slow to import), so this table is strings.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

PROVIDERS: dict[str, str] = {
    "file": "charlie.prices.files",
    "eodhd": "charlie.prices.eodhd",
    "yfinance": "charlie.prices.yahoo",
}
"""Provider name → module with ``from_params(params: PricesParams, env) -> PriceProvider``."""


def create(name: str, params: Any, env: Mapping[str, str]) -> Any:
    """The provider ``name`` built from the ``prices`` section (its own sub-section, if any)."""
    return importlib.import_module(PROVIDERS[name]).from_params(params, env)
