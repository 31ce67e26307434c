"""A sweep's report in sweeps/<name>/: summary.csv and summary.md (one row per variant, each compared with
the baseline by Welch's t-test over seeds, with its cost and how many seeds were still improving), runs.csv
(one row per run, with its code against the sweep's) and the PNGs of plots.py.

    from machinery.sweeps.report import write_report
    table = write_report("qk_norm")     # the sweep's variants x seeds, from their run folders
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from machinery.comparison.code import start_code
from machinery.comparison.runs import load_run
from machinery.run.cost import summarize_log
from machinery.run.provenance import describe_changes, shorten
from machinery.sweeps.definition import RunPlan, Sweep
from machinery.run.runs import trained_dir
from machinery.sweeps.runner import run_state
from machinery.sweeps.stats import TEST_NAME, sample_var, welch

METRIC = "best_val_loss"  # what the test compares: each run's lowest validation loss
DEFAULT_BPB_TEXTS = 40    # validation texts for bits per byte (0 skips it)
SUMMARY_COLUMNS = ["variant", "seeds", "best_val_loss_mean", "best_val_loss_std", "final_val_loss_mean",
                   "bits_per_byte_mean", "tokens_per_sec_mean", "diff_vs_baseline", "ci95_low", "ci95_high",
                   "p_value", "test", "still_improving", "wall_s_mean", "train_flops_mean", "peak_memory_mb_max"]
RUN_COLUMNS = ["run", "variant", "seed", "best_val_loss", "final_val_loss", "still_improving", "tokens_per_sec",
               "train_time_s", "wall_s", "train_flops", "peak_memory_mb", "code_diff"]


def _code_vs_sweep(sweep: Sweep, run_dir: Path) -> str:
    """'same', the source files that differ from the sweep's recorded code, or 'unknown'."""
    code = start_code(run_dir)
    if code is None or not sweep.code:
        return "unknown"
    return shorten(describe_changes(sweep.code.get("files", {}), code.get("files", {})), 3) or "same"


def run_rows(sweep: Sweep) -> tuple[pd.DataFrame, dict]:
    """One row per finished run (variant, seed, best/final val loss, whether still improving, speed, time,
    FLOPs, peak memory, its code against the sweep's), and each run's log."""
    rows, logs = [], {}
    for plan in sweep.runs:
        if run_state(plan) != "done":
            continue
        run = load_run(trained_dir() / plan.name)
        s = summarize_log(run.log.to_dict("records"), run.flops_per_token)
        rows.append({"run": plan.name, "variant": plan.variant.name, "seed": plan.seed,
                     **{k: s[k] for k in RUN_COLUMNS[3:-1]}, "code_diff": _code_vs_sweep(sweep, run.path)})
        logs[plan.name] = run.log
    return pd.DataFrame(rows, columns=RUN_COLUMNS), logs


def bits_per_byte(plans: list[RunPlan], n_texts: int, val_data: str | None, cache_path: Path) -> dict:
    """Bits per byte of each run's saved weights on the first n_texts validation texts (default: the bundled
    TinyStories sample). Cached per run by the weights file's size and time, so a re-run costs nothing."""
    if n_texts <= 0 or not plans:
        return {}
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    out, texts = {}, None
    for plan in plans:
        weights = trained_dir() / plan.name / "model.safetensors"
        stat = weights.stat()
        key = f"{stat.st_size}:{stat.st_mtime_ns}:{n_texts}:{val_data or 'default'}"
        if cache.get(plan.name, {}).get("key") != key:
            import model_comparison as mc
            import tools
            texts = texts or mc.load_texts(val_data, n_texts)
            model, tokenizer, _, _ = tools.load_model(trained_dir() / plan.name)
            cache[plan.name] = {"key": key, "bits_per_byte": mc.bits_per_byte(model, tokenizer, texts)}
        out[plan.name] = cache[plan.name]["bits_per_byte"]
    from machinery.fileio import write_json
    write_json(cache_path, cache)
    return out


def summarize(sweep: Sweep, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant with finished runs; p_value and ci95 compare its best_val_loss with the baseline's."""
    base = runs.loc[runs["variant"] == sweep.baseline.name, METRIC].tolist()
    rows = []
    for variant in sweep.variants:
        mine = runs[runs["variant"] == variant.name]
        if mine.empty:
            continue
        values = mine[METRIC].tolist()
        row = {"variant": variant.name, "seeds": len(mine),
               "best_val_loss_mean": sum(values) / len(values),
               "best_val_loss_std": math.sqrt(sample_var(values)) if len(values) > 1 else math.nan,
               "final_val_loss_mean": mine["final_val_loss"].mean(),
               "bits_per_byte_mean": mine["bits_per_byte"].mean() if "bits_per_byte" in mine else math.nan,
               "tokens_per_sec_mean": mine["tokens_per_sec"].mean(),
               "still_improving": int(mine["still_improving"].sum()), "wall_s_mean": mine["wall_s"].mean(),
               "train_flops_mean": mine["train_flops"].mean(), "peak_memory_mb_max": mine["peak_memory_mb"].max()}
        if variant.name == sweep.baseline.name or not base:
            row.update(diff_vs_baseline=math.nan, ci95_low=math.nan, ci95_high=math.nan, p_value=math.nan, test="")
        else:
            c = welch(base, values)
            row.update(diff_vs_baseline=c.diff, ci95_low=c.ci_low, ci95_high=c.ci_high, p_value=c.p_value,
                       test=f"welch_t_two_sided on {METRIC} vs {sweep.baseline.name}")
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _num(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def to_markdown(sweep: Sweep, table: pd.DataFrame, missing: list[str], n_texts: int,
                other_code: dict | None = None) -> str:
    settings = " ".join(f"--{k}={v}" for k, v in sweep.shared_settings().items() if v is not None)
    improving = dict(zip(table["variant"], table["still_improving"]))
    base_improving = improving.get(sweep.baseline.name, 0) > 0
    lines = [f"# Sweep `{sweep.name}`", "",
             f"Every run: `{settings or '(defaults)'}`; seeds {', '.join(map(str, sweep.seeds))}; "
             f"baseline `{sweep.baseline.name}`; code {_code_identity(sweep.code)}.", "",
             "| variant | seeds | best val loss (mean ± std) | final val loss | still improving | bits/byte | tokens/s "
             "| wall s | peak MiB | Δ vs baseline [95% CI] | p |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    flagged = False
    for r in table.itertuples():
        if r.variant == sweep.baseline.name:
            delta, p = "baseline", "-"
        else:
            delta = _num(r.diff_vs_baseline) if math.isnan(r.ci95_low) else \
                f"{r.diff_vs_baseline:+.4f} [{r.ci95_low:+.4f}, {r.ci95_high:+.4f}]"
            p = "-" if math.isnan(r.p_value) else f"{r.p_value:.3g}"
            if p != "-" and (r.still_improving or base_improving):
                p, flagged = p + " †", True
        lines.append(f"| `{r.variant}` | {r.seeds} | {_num(r.best_val_loss_mean)} ± {_num(r.best_val_loss_std)} "
                     f"| {_num(r.final_val_loss_mean)} | {r.still_improving} of {r.seeds} "
                     f"| {_num(r.bits_per_byte_mean)} | {_num(r.tokens_per_sec_mean, 0)} | {_num(r.wall_s_mean, 1)} "
                     f"| {_num(r.peak_memory_mb_max, 0)} | {delta} | {p} |")
    lines += ["", f"p: {TEST_NAME} over seeds of each run's best validation loss, against the baseline; "
              f"Δ is mean(variant) − mean(baseline) (negative = lower loss) with its 95% confidence interval. "
              f"p needs at least 2 finished seeds per side."]
    if flagged:
        lines.append("† computed from runs still improving: their best validation loss is their last evaluation's, "
                     "so they had not converged and longer training may change the gap (or its sign).")
    lines += ["still improving: runs whose best validation loss is at their last evaluation (hollow in the plots). "
              "wall s: mean wall-clock seconds per run, evaluations included; peak MiB: the largest peak memory "
              "of a seed (CPU: the process's resident set; CUDA: tensors allocated).",
              f"bits/byte: the saved (best) weights on {n_texts} validation texts." if n_texts > 0 else
              "bits/byte: skipped (--bpb_texts=0).", "", "Variants:", ""]
    lines += [f"- `{v.name}`: {v.describe()}" for v in sweep.variants]
    if other_code:
        lines += ["", f"Made from code other than the sweep's ({len(other_code)}; added with --allow_code_change): "
                  + "; ".join(f"`{run}`: {what}" for run, what in other_code.items())]
    if missing:
        lines += ["", f"Not finished ({len(missing)}), left out above: " + ", ".join(f"`{m}`" for m in missing)]
    lines += ["", "![validation loss vs step](val_loss.png)", "", f"![{METRIC} per variant]({METRIC}.png)", "",
              "![best validation loss against wall time, FLOPs and peak memory](cost.png)", ""]
    return "\n".join(lines)


def _code_identity(code: dict | None) -> str:
    if not code:
        return "not recorded"
    return f"`{code['commit'][:7]}{'+dirty' if code.get('dirty') else ''}`" if code.get("commit") else \
        "outside git (file hashes)"


def write_report(name_or_sweep, n_texts: int = DEFAULT_BPB_TEXTS, val_data: str | None = None) -> pd.DataFrame:
    """Write summary.csv, summary.md, runs.csv and the plots for a sweep (by name or Sweep); returns the summary."""
    from machinery.fileio import write_text
    from machinery.sweeps.plots import plot_final_metric, plot_sweep_cost, plot_val_loss

    sweep = name_or_sweep if isinstance(name_or_sweep, Sweep) else Sweep.load(name_or_sweep)
    folder = sweep.folder
    folder.mkdir(parents=True, exist_ok=True)
    runs, logs = run_rows(sweep)
    done = set(runs["run"])
    bpb = bits_per_byte([p for p in sweep.runs if p.name in done], n_texts, val_data, folder / "bits_per_byte.json")
    runs["bits_per_byte"] = [bpb.get(r, math.nan) for r in runs["run"]]
    table = summarize(sweep, runs)
    write_text(folder / "runs.csv", runs.to_csv(index=False))
    write_text(folder / "summary.csv", table.to_csv(index=False))
    missing = [p.name for p in sweep.runs if p.name not in done]
    other = {r.run: r.code_diff for r in runs.itertuples() if r.code_diff not in ("same", "unknown")}
    write_text(folder / "summary.md", to_markdown(sweep, table, missing, n_texts, other))
    if not runs.empty:
        plot_val_loss(sweep, runs, logs, folder / "val_loss.png")
        plot_final_metric(sweep, runs, METRIC, folder / f"{METRIC}.png")
        plot_sweep_cost(sweep, runs, folder / "cost.png")
    return table


def main(argv: list[str]) -> int:
    """`python model_comparison.py --sweep=NAME [--bpb_texts=N] [--val_data=PATH]`: a sweep's report, rebuilt
    from its run folders and printed (the files land in sweeps/NAME/)."""
    import sys
    options = {}
    for arg in argv:
        key, eq, value = arg.lstrip("-").partition("=")
        if not arg.startswith("--") or not eq or key not in ("sweep", "bpb_texts", "val_data"):
            print(f"error: {arg!r}: with --sweep=NAME only --bpb_texts=N and --val_data=PATH are accepted",
                  file=sys.stderr)
            return 2
        options[key] = value
    try:
        n_texts = int(options.get("bpb_texts", DEFAULT_BPB_TEXTS))
        sweep = Sweep.load(options["sweep"])
        write_report(sweep, n_texts, options.get("val_data"))
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((sweep.folder / "summary.md").read_text())
    return 0
