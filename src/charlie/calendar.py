"""Exchange trading calendars: sessions, closures and early closes, from ``exchange_calendars``.

``exchange_calendars`` (the maintained successor of Quantopian's ``trading_calendars``) keeps
each exchange's rules and one-off closures (2001-09-11..14, 2012's hurricane Sandy, the days of
mourning of 2004, 2007, 2018 and 2025) and its early closes. A calendar is named by its ISO MIC
(``XNYS``, ``XLON``, ``XTKS``, ...); :func:`calendar_for` maps the price configuration's eodhd
exchange code (``US``, ``LSE``, ...) to one, or takes an explicit ``prices.calendar``.

Sessions are read once per calendar (from 1990 to a year ahead) into a sorted list of dates,
so the per-record questions (is this a session, which session is n after this one) are a set
lookup and a bisection.
"""

from __future__ import annotations

import bisect
import datetime as dt
import warnings
from dataclasses import dataclass, field
from functools import cache

from charlie.errors import ConfigError, did_you_mean

DEFAULT = "XNYS"
"""The bundled sample's exchange (its tickers are fictional US listings)."""
FIRST = "1990-01-01"

EODHD_EXCHANGES = {
    "US": "XNYS", "NYSE": "XNYS", "NASDAQ": "XNAS", "LSE": "XLON", "TO": "XTSE", "V": "XTSE",
    "XETRA": "XETR", "F": "XFRA", "PA": "XPAR", "AS": "XAMS", "BR": "XBRU", "LS": "XLIS",
    "MC": "XMAD", "MI": "XMIL", "SW": "XSWX", "VI": "XWBO", "ST": "XSTO", "OL": "XOSL",
    "CO": "XCSE", "HE": "XHEL", "IR": "XDUB", "WAR": "XWAR", "HK": "XHKG", "TSE": "XTKS",
    "KO": "XKRX", "AU": "XASX", "SHG": "XSHG", "JSE": "XJSE", "SA": "BVMF", "MX": "XMEX",
    "NSE": "XBOM", "BSE": "XBOM",
}  # fmt: skip
"""eodhd's exchange codes (the ticker suffix, ``ACME.US``) and the calendar each trades on."""


@dataclass(frozen=True, eq=False)
class Calendar:
    """One exchange's sessions (full trading days and early closes) as plain dates."""

    name: str
    sessions: tuple[dt.date, ...]
    early_closes: frozenset[dt.date]
    _set: frozenset[dt.date] = field(repr=False, default=frozenset())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_set", frozenset(self.sessions))

    def _check(self, day: dt.date) -> None:
        if not self.sessions[0] <= day <= self.sessions[-1]:
            raise ConfigError(
                f"{day} is outside the {self.name} calendar ({self.sessions[0]} .. "
                f"{self.sessions[-1]}): exchange_calendars knows sessions up to a year ahead."
            )

    def is_session(self, day: dt.date) -> bool:
        """True when the exchange trades on ``day`` (an early close counts)."""
        self._check(day)
        return day in self._set

    def between(self, start: dt.date, end: dt.date) -> list[dt.date]:
        """Sessions from ``start`` to ``end``, both inclusive."""
        lo = bisect.bisect_left(self.sessions, start)
        hi = bisect.bisect_right(self.sessions, end)
        return list(self.sessions[lo:hi])

    def shift(self, day: dt.date, n: int) -> dt.date:
        """The session ``n`` sessions after (n > 0) or before (n < 0) ``day``; ``day`` itself
        need not be a session (``shift(saturday, 1)`` is Monday, ``shift(saturday, -1)`` Friday).
        """
        self._check(day)
        if n == 0:
            return day
        if n > 0:
            index = bisect.bisect_right(self.sessions, day) + n - 1
        else:
            index = bisect.bisect_left(self.sessions, day) + n
        if not 0 <= index < len(self.sessions):
            raise ConfigError(f"{abs(n)} sessions from {day} is outside the {self.name} calendar.")
        return self.sessions[index]

    def closures(self, year: int) -> list[dt.date]:
        """Weekdays of ``year`` on which the exchange does not trade."""
        start, end = dt.date(year, 1, 1), dt.date(year, 12, 31)
        days = (start + dt.timedelta(days=i) for i in range((end - start).days + 1))
        return [d for d in days if d.weekday() < 5 and d not in self._set
                and self.sessions[0] <= d <= self.sessions[-1]]  # fmt: skip


@cache
def get_calendar(name: str = DEFAULT) -> Calendar:
    """The named exchange calendar (an exchange_calendars name: ``XNYS``, ``XLON``, ...)."""
    import exchange_calendars as xcals

    names = xcals.get_calendar_names(include_aliases=True)
    if name not in names:
        raise ConfigError(f"unknown exchange calendar {name!r}{did_you_mean(name, names)}; use an "
                          "exchange_calendars name such as XNYS, XLON or XTKS.")  # fmt: skip
    with warnings.catch_warnings():  # exchange_calendars' own use of pandas 3 deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            calendar = xcals.get_calendar(name, start=FIRST)
        except ValueError:  # a calendar younger than FIRST (XTKS: 1997): from its own start
            calendar = xcals.get_calendar(name)
    return Calendar(
        name=name,
        sessions=tuple(calendar.sessions.date),
        early_closes=frozenset(calendar.early_closes.date),
    )


def calendar_for(exchange: str, calendar: str = "auto") -> str:
    """The calendar name for a price configuration: ``calendar`` unless ``auto``, else the one
    the eodhd ``exchange`` code trades on."""
    if calendar != "auto":
        return calendar
    try:
        return EODHD_EXCHANGES[exchange.upper()]
    except KeyError:
        raise ConfigError(
            f"prices.eodhd.exchange {exchange!r} has no known trading calendar"
            f"{did_you_mean(exchange.upper(), EODHD_EXCHANGES)}: set prices.calendar to its "
            "exchange_calendars name (XNYS, XLON, XTKS, ...)."
        ) from None


def is_trading_day(day: dt.date, calendar: str = DEFAULT) -> bool:
    """True when ``calendar``'s exchange trades on ``day``."""
    return get_calendar(calendar).is_session(day)


def trading_days(start: dt.date, end: dt.date, calendar: str = DEFAULT) -> list[dt.date]:
    """Sessions from ``start`` to ``end``, both inclusive."""
    return get_calendar(calendar).between(start, end)


def shift_trading_days(day: dt.date, n: int, calendar: str = DEFAULT) -> dt.date:
    """The session ``n`` sessions after (n > 0) or before (n < 0) ``day``."""
    return get_calendar(calendar).shift(day, n)
