"""Comparing trained runs: their logs (runs.py), evaluations on the same texts (texts.py, metrics.py), the
summary table (report.py) and the plots (plots.py). `model_comparison.py` is the entry point."""
