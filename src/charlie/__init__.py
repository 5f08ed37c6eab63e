"""Charlie: fine-tune LLMs to write trading theses, and judge them honestly."""

__version__ = "0.1.0"

ACTIONS: tuple[str, ...] = ("STRONG_BUY", "BUY", "HOLD", "SELL", "STRONG_SELL")
"""The only action labels used after parsing, in a fixed order (most bullish first)."""

UNPARSEABLE = "UNPARSEABLE"
"""What a generated thesis without a readable action is labelled: counted, traded like HOLD."""
