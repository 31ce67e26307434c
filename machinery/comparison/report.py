"""The summary table: one row per run with its log statistics and costs (time, FLOPs, peak memory), an
evaluation of its saved weights on the same validation texts (when there are any), the results evaluate.py
saved in its folder (task/metric columns), the judge's grades (when given), and the config fields and
source files that differ between the runs."""
from __future__ import annotations

import math

import pandas as pd

import tools
from machinery.comparison.code import code_differences
from machinery.comparison.metrics import context_len, score, text_sequences, utf8_bytes, windows
from machinery.comparison.runs import Run, as_runs, config_differences, load_run
from machinery.run.cost import summarize_log

COST_COLUMNS = ("tokens_per_sec", "train_time_s", "wall_s", "train_flops", "peak_memory_mb")  # last in the table


def log_summary(run: Run) -> dict:
    """What the run's configs and log_data.csv say, with no text and no weights needed."""
    s = summarize_log(run.log.to_dict("records"), run.flops_per_token)
    return {
        "run": run.name,
        "tokenizer": f"{run.model_cfg.tokenizer}/{run.model_cfg.vocab_len}",
        "parameters": run.num_params,
        "tokens_seen": math.nan if s["tokens"] is None else s["tokens"],
        "final_val_loss": s["final_val_loss"],
        "best_val_loss": s["best_val_loss"],
        "still_improving": s["still_improving"],
        **{k: s[k] for k in COST_COLUMNS},
    }


def evaluate_run(name, texts: list[str], k_max: int = 5, seq_len: int | None = None, batch_size: int = 8,
                 device: str = "cpu") -> dict:
    """log_summary() plus an evaluation of the saved weights (the best-validation-loss model) on texts:
    bits per byte and top-k accuracy over the same [bos] + tokens + [eos] windows, in one pass."""
    run = name if isinstance(name, Run) else load_run(name)
    texts = list(texts)
    if not texts:
        raise ValueError("evaluate_run needs at least one validation text")
    model, tokenizer, _, _ = tools.load_model(run.path, device)
    seqs = text_sequences(tokenizer, texts)
    nll, count, correct = score(model, windows(seqs, context_len(model, seq_len), batch_size), k_max)
    topk = [c / count for c in correct]
    row = log_summary(run)
    speed = {k: row.pop(k) for k in COST_COLUMNS}  # keep them last, after the metrics
    row.update({"bits_per_byte": nll / math.log(2) / utf8_bytes(texts), "top1_acc": topk[0],
                f"top{k_max}_acc": topk[-1], **speed, "topk_acc": topk})
    return row


def saved_evaluations(run: Run) -> tuple[dict, list[str]]:
    """({"task/metric": value}, notes) from the results evaluate.py saved in the run folder, for the run's
    current weights only (machinery/evaluation/results.py)."""
    from machinery.evaluation.exports import export_key
    from machinery.evaluation.results import EVAL_DIR, eval_columns
    if not (run.path / EVAL_DIR).is_dir():
        return {}, []
    weights = run.path / "model.safetensors"
    return eval_columns(run.path, export_key(run.path) if weights.is_file() else None)


def summary_table(runs, texts: list[str] | None = None, judge: dict | None = None,
                  **evaluate_kwargs) -> pd.DataFrame:
    """One row per run (index: run name). With texts, each run's weights are evaluated on them (bits per
    byte, top-k accuracy; the full top-k lists go to table.attrs['topk_acc'] for plot_topk); without,
    the table holds what the logs say. still_improving: the best validation loss is the last evaluation's (the
    run had not converged). Then the task/metric columns of evaluate.py's saved results, and with `judge`
    ({run: {column: value}}, machinery/evaluation/judge.judge_columns) the judge's grades. The last columns:
    code_diff, which source files differ from the first run's code (machinery/comparison/code.py), and
    config_diff, the config fields whose values differ between the runs. Notes (results left out) are in
    table.attrs['notes']."""
    runs = as_runs(runs)
    rows = [evaluate_run(run, texts, **evaluate_kwargs) if texts else log_summary(run) for run in runs.values()]
    topk = {row["run"]: row.pop("topk_acc") for row in rows if "topk_acc" in row}
    differences, code = config_differences(runs), code_differences(runs)
    notes = []
    for row, run in zip(rows, runs.values()):
        columns, run_notes = saved_evaluations(run)
        row.update(columns)
        row.update((judge or {}).get(row["run"], {}))
        notes += run_notes
        row["config_diff"] = ", ".join(f"{k}={v}" for k, v in differences[row["run"]].items())
        row["code_diff"] = code[row["run"]]
    table = pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame(index=pd.Index([], name="run"))
    if "config_diff" in table.columns:  # last, after every run's own columns
        table = table[[c for c in table.columns if c != "config_diff"] + ["config_diff"]]
    table.attrs["topk_acc"] = topk
    table.attrs["notes"] = notes
    return table


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")  # a '|' in a value (e.g. doc_separator) would end the cell


def _si(value) -> str:
    """1.2e13 -> '12 T': FLOP counts at a glance."""
    if not isinstance(value, (int, float)) or math.isnan(value):
        return _cell(value)
    for power, prefix in ((15, "P"), (12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if abs(value) >= 10 ** power:
            return f"{value / 10 ** power:.3g} {prefix}"
    return f"{value:.3g}"


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs the optional tabulate package)."""
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    align = ["---"] + ["---:" if pd.api.types.is_numeric_dtype(table[c]) else "---" for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for name, row in table.iterrows():
        values = [v.item() if hasattr(v, "item") else v for v in row]
        cells = [_si(v) if str(c).endswith("flops") else _cell(v) for c, v in zip(table.columns, values)]
        lines.append("| " + " | ".join([str(name)] + cells) + " |")
    return "\n".join(lines) + "\n"
