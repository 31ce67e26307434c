"""Learning-rate transfer across width, SP vs μP: train.py over widths x learning rates x seeds on the bundled
TinyStories sample, then one table (docs/mup/lr_transfer.csv) and one plot of final validation loss vs lr per width.

    python bench/mup_lr_transfer.py                       # the committed experiment (resumable: re-run to continue)
    python bench/mup_lr_transfer.py --report              # rebuild the table and plot from finished runs only
    python bench/mup_lr_transfer.py --widths=64,128 --lrs=0.004,0.008 --seeds=1 --steps=50 --out=/tmp/x

Every run is an ordinary train.py run (train.main, 1 thread, float32, CPU) in --runs_dir; a run that finished is
recorded in runs.jsonl there and skipped next time, so an interrupted experiment continues where it stopped. Under
μP the best lr should stay put across widths; under SP it drifts down as width grows.
Flags: --widths --lrs --seeds --parametrizations=sp,mup --steps=150 --layers=2 --seq_len=64 --batch=8
       --mup_base_dim=128 --parallel=2 --runs_dir=bench/results/mup_lr_transfer --out=docs/mup --report
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machinery.cli import split_args  # noqa: E402

DEFAULTS = dict(widths="32,64,128,256", lrs=",".join(f"{2.0 ** -e:.6g}" for e in range(11, 3, -1)),
                seeds="1,2", parametrizations="sp,mup", steps="150", layers="2", seq_len="64", batch="8",
                mup_base_dim="128", parallel="2", runs_dir=str(ROOT / "bench" / "results" / "mup_lr_transfer"),
                out=str(ROOT / "docs" / "mup"))


def run_name(param: str, width: int, lr: float, seed: int) -> str:
    return f"{param}_w{width}_lr{lr:.6g}_s{seed}"


def train_args(opts: dict, param: str, width: int, lr: float, seed: int) -> list[str]:
    """One small train.py run: warmup 10%, cosine to lr/10, evaluated once at the end on the same val batches."""
    steps = int(opts["steps"])
    settings = dict(model_name=run_name(param, width, lr, seed), seed=seed, dim=width, num_layers=opts["layers"],
                    num_q_heads=4, num_kv_heads=4, max_seq_len=opts["seq_len"], tokenizer="bpe_tinyStories",
                    vocab_len=1024, dataset=str(ROOT / "data" / "samples" / "tinystories"),
                    cache_dir=str(Path(opts["runs_dir"]) / "cache"), micro_batch_size=opts["batch"],
                    max_iters=steps, eval_interval=steps, eval_samples=20, checkpoint_interval=10 * steps,
                    warmup_iters=max(1, steps // 10), lr_init=0.0, lr_max=lr, lr_min=lr / 10, dtype="float32",
                    device="cpu", parametrization=param, mup_base_dim=opts["mup_base_dim"])
    return [f"--{k}={v}" for k, v in settings.items()] + ["--overwrite"]


def final_val_loss(run_dir: Path, steps: int) -> float | None:
    log = run_dir / "log_data.csv"
    if not log.is_file():
        return None
    lines = log.read_text().strip().splitlines()
    header, last = lines[0].split(","), lines[-1].split(",")
    row = dict(zip(header, last))
    return float(row["val_loss"]) if row.get("step") == str(steps) else None


def _train_in_worker(opts: dict, point: tuple) -> dict:
    """One run in a worker process (torch imported once per worker, not once per run)."""
    import contextlib
    import io

    import torch
    torch.set_num_threads(1)
    import train
    param, width, lr, seed = point
    start, err = time.time(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = train.main(train_args(opts, param, width, lr, seed))
    loss = final_val_loss(Path(opts["runs_dir"]) / "trained" / run_name(*point), int(opts["steps"]))
    status = "ok" if loss is not None else ("diverged" if "loss became" in err.getvalue() else "failed")
    error = err.getvalue()[-1500:] if code and status == "failed" else ""
    return dict(parametrization=param, width=width, lr=lr, seed=seed, val_loss=loss, status=status,
                wall_s=round(time.time() - start, 1), error=error)


def load_rows(runs: Path) -> list[dict]:
    path = runs / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def summarize(rows: list[dict]) -> list[dict]:
    """Mean final val loss over seeds per (parametrization, width, lr); a diverged seed makes the point inf."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["parametrization"], r["width"], r["lr"]), []).append(r)
    table = []
    for (param, width, lr), rs in sorted(groups.items()):
        losses = [r["val_loss"] if r["status"] == "ok" else math.inf for r in rs]
        mean = sum(losses) / len(losses)
        std = (sum((x - mean) ** 2 for x in losses) / (len(losses) - 1)) ** 0.5 if len(losses) > 1 and \
            math.isfinite(mean) else 0.0
        table.append(dict(parametrization=param, width=width, lr=lr, seeds=len(rs), val_loss=mean, val_loss_std=std))
    return table


def best_lrs(table: list[dict]) -> dict:
    best = {}
    for r in table:
        key = (r["parametrization"], r["width"])
        if key not in best or r["val_loss"] < best[key]["val_loss"]:
            best[key] = r
    return best


def write_report(table: list[dict], out: Path) -> None:
    import matplotlib
    import pandas as pd
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(table, columns=["parametrization", "width", "lr", "seeds", "val_loss", "val_loss_std"])
    tmp = out / "lr_transfer.csv.tmp"
    frame.to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, out / "lr_transfer.csv")

    params = sorted(frame["parametrization"].unique(), key=lambda p: p != "sp")
    fig, axes = plt.subplots(1, len(params), figsize=(6 * len(params), 4.2), sharey=True, squeeze=False)
    finite = frame["val_loss"][frame["val_loss"] < math.inf]
    best = best_lrs(table)
    top = min(finite.max(), max(r["val_loss"] for r in best.values()) + 0.8)  # every minimum in view
    for ax, param in zip(axes[0], params):
        part = frame[frame["parametrization"] == param]
        for width in sorted(part["width"].unique()):
            curve = part[part["width"] == width].sort_values("lr")
            line, = ax.plot(curve["lr"], curve["val_loss"].clip(upper=top + 1), marker="o", ms=3, label=f"dim {width}")
            b = best[(param, width)]
            ax.plot([b["lr"]], [b["val_loss"]], marker="*", ms=13, color=line.get_color(), mec="black")
        ax.set_xscale("log", base=2)
        ax.set_ylim(finite.min() - 0.05, top)
        ax.set_xlabel("learning rate (AdamW peak)")
        ax.set_title({"sp": "standard parametrization", "mup": "μP"}.get(param, param))
        ax.grid(alpha=0.3)
        ax.legend(title="width")
    axes[0][0].set_ylabel("final validation loss (mean over seeds)")
    fig.suptitle("Learning-rate transfer across width (TinyStories sample, 2 layers; star: best lr)")
    fig.tight_layout()
    tmp = out / "lr_transfer.png.tmp"
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, out / "lr_transfer.png")
    for (param, width), r in sorted(best.items()):
        print(f"best lr  {param:3s} dim {width:4d}: {r['lr']:.6g}  (val loss {r['val_loss']:.4f})")


def main(argv: list[str] | None = None) -> int:
    overrides, positional = split_args(sys.argv[1:] if argv is None else argv)
    unknown = set(overrides) - set(DEFAULTS) - {"report", "help", "h"}
    if positional or unknown:
        print(f"error: unknown argument(s) {positional or sorted(unknown)}; see --help", file=sys.stderr)
        return 2
    if "help" in overrides or "h" in overrides:
        print(__doc__)
        return 0
    opts = {**DEFAULTS, **overrides}
    runs = Path(opts["runs_dir"])
    runs.mkdir(parents=True, exist_ok=True)
    if "report" not in overrides:
        done = {(r["parametrization"], r["width"], r["lr"], r["seed"]) for r in load_rows(runs)}
        points = [(p, w, lr, s) for s in map(int, opts["seeds"].split(","))
                  for lr in map(float, opts["lrs"].split(","))
                  for p in opts["parametrizations"].split(",")
                  for w in sorted(map(int, opts["widths"].split(",")), reverse=True)]
        todo = [pt for pt in points if pt not in done]
        print(f"{len(points) - len(todo)} of {len(points)} runs done; running {len(todo)} "
              f"with {opts['parallel']} at a time", flush=True)
        # workers inherit these: one thread each, run folders under runs_dir (tools reads it at import)
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TEMPLATEGPT_TRAINED_DIR=str(runs / "trained"))
        with ProcessPoolExecutor(max_workers=int(opts["parallel"])) as pool:
            for row in pool.map(_train_in_worker, [opts] * len(todo), todo):
                if row["status"] == "failed":  # not recorded: retried next time
                    print(f"{run_name(row['parametrization'], row['width'], row['lr'], row['seed'])} failed:\n"
                          f"{row['error']}", file=sys.stderr)
                    continue
                row.pop("error")
                with open(runs / "runs.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    rows = load_rows(runs)
    if not rows:
        print("error: no finished runs yet", file=sys.stderr)
        return 2
    write_report(summarize(rows), Path(opts["out"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
