"""Daily prices: providers behind one interface, a parquet cache, and the fallback logic."""
