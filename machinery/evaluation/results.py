"""Evaluation results in the run folder, one file per task, and their columns in the comparison table:

    trained/<run>/eval/<task>.json   {"task", "metrics": {name: value}, "stderr": {name: value}, "n_samples",
                                      "num_fewshot", "limit", "weights_key", "lm_eval_version", "date", ...}

weights_key is the export's key (machinery/evaluation/exports.py): results of weights the run no longer has
are left out of the table, with a note, rather than shown beside numbers of the new weights.
"""
from __future__ import annotations

import json
from pathlib import Path

from machinery.fileio import write_json

EVAL_DIR = "eval"


def result_path(run_dir: Path, task: str) -> Path:
    return Path(run_dir) / EVAL_DIR / f"{task}.json"


def save_result(run_dir: Path, record: dict) -> Path:
    path = result_path(run_dir, record["task"])
    write_json(path, record)
    return path


def metrics_of(task_results: dict) -> tuple[dict, dict]:
    """lm-eval's {"acc,none": 0.3, "acc_stderr,none": 0.01, "alias": ...} as ({"acc": 0.3}, {"acc": 0.01});
    a metric under another filter than "none" is named metric/filter. "N/A" stderrs are left out."""
    metrics, stderr = {}, {}
    for key, value in task_results.items():
        name, _, filter_name = key.partition(",")
        if not filter_name or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        is_stderr = name.endswith("_stderr")
        name = name.removesuffix("_stderr")
        name = name if filter_name == "none" else f"{name}/{filter_name}"
        (stderr if is_stderr else metrics)[name] = float(value)
    return metrics, stderr


def load_results(run_dir: Path) -> list[dict]:
    """The run's saved task results (unreadable files are skipped: they are reported by eval_columns)."""
    records = []
    for path in sorted((Path(run_dir) / EVAL_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("metrics"), dict):
            records.append(record)
    return records


def eval_columns(run_dir: Path, weights_key: str | None) -> tuple[dict, list[str]]:
    """({"task/metric": value}, notes) for the comparison table: results of the current weights only."""
    columns, notes = {}, []
    for record in load_results(run_dir):
        task = record.get("task", "?")
        if weights_key is not None and record.get("weights_key") != weights_key:
            notes.append(f"note: {Path(run_dir).name}: {EVAL_DIR}/{task}.json was measured on other weights; "
                         f"left out (run evaluate.py again)")
            continue
        limited = record.get("limit") is not None
        for metric, value in record["metrics"].items():
            columns[f"{task}/{metric}{' (limit)' if limited else ''}"] = value
    return columns, notes
