"""Thin stage mains: parse arguments and config, call one pure core, write outputs atomically."""
