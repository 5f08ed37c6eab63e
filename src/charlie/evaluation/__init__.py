"""Evaluation: forward returns, classification and financial metrics, baselines."""
