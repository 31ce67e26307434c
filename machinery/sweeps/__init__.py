"""Sweeps: many variants x seeds of one training setup, run as ordinary runs in trained/, and one report
that says whether a gap between variants is larger than seed noise. `python sweep.py --help` for the CLI.

    grid.py        --grid / --variant -> the list of variants (the first is the baseline), checked up front
    definition.py  a sweep's definition, sweeps/<name>/sweep.json, its runs and their expected settings
    runner.py      launching train.py per run: parallel slots, skip finished, resume interrupted, report failures
    stats.py       Welch's t-test and the confidence interval of a difference of means
    report.py      summary.csv / summary.md per variant (+ bits per byte), plots.py its PNGs
"""
