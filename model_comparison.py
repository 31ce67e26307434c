"""Compare trained runs: loss curves from their logs, and evaluations on the same validation texts.

    runs = load_runs(["gpt2_atto", "llama3_atto"])
    plot_metric(runs, "val_loss", x="flops", logx=True)
    table = summary_table(runs, load_texts(max_texts=80))

    python model_comparison.py gpt2_atto llama3_atto --out comparison/

Loss per token depends on the tokenizer (a byte model predicts ~4x more, easier tokens than a BPE one), so
runs are put on one scale with bits per byte: the bits a model spends on a text divided by its UTF-8 bytes.
"""
from __future__ import annotations

import argparse
import json
import math
import numbers
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

import tools
from config import ModelConfig, TrainConfig

DEFAULT_VAL_DATA = tools.ROOT / "data" / "samples" / "tinystories" / "validation.jsonl"
X_AXES = {"step": "step", "tokens": "training tokens", "elapsed_s": "wall time (s)", "flops": "training FLOPs"}
IGNORE = -100  # target id of padding: cross_entropy's default ignore_index


# --- runs and their logs -------------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    path: Path
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    log: pd.DataFrame  # log_data.csv: one row per evaluation

    @cached_property
    def flops_per_token(self) -> float:
        """Training FLOPs per token at the run's context length. Big models are built on the meta device
        (no memory); small ones on the CPU, because meta init imports torch._dynamo (seconds)."""
        from modules.model import Model
        cfg = self.model_cfg
        rough_params = 12 * cfg.num_layers * cfg.dim ** 2 + cfg.vocab_len * cfg.dim
        with torch.device("meta" if rough_params > 50_000_000 else "cpu"), torch.no_grad():
            return Model(cfg).flops_per_token(cfg.max_seq_len)


def _known_runs() -> str:
    return ", ".join(tools.list_runs()) or "(none yet: train one with python train.py)"


def load_run(name: str | Path) -> Run:
    try:
        path = tools.resolve_run(name)
    except FileNotFoundError as e:
        msg = str(e)  # resolve_run lists trained/ for bare names; add the list for paths too
        raise FileNotFoundError(msg if "models there" in msg else f"{msg}; runs in trained/: {_known_runs()}") \
            from None
    model_cfg, train_cfg = tools.load_configs(path)
    log_path = path / "log_data.csv"
    if not log_path.is_file():
        raise ValueError(f"run {name} has no log_data.csv: it has not logged an evaluation yet")
    try:
        log = pd.read_csv(log_path)
    except pd.errors.EmptyDataError:
        log = pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"run {name}: {log_path} is not a readable CSV ({e})") from None
    if log.empty:
        raise ValueError(f"run {name} has no rows in log_data.csv: it has not finished its first evaluation")
    return Run(Path(str(name)).name, path, model_cfg, train_cfg, log)


def load_runs(names) -> dict[str, Run]:
    """Runs by name (trained/<name>) or folder path, keyed by folder name (the full argument if two clash)."""
    names = [names] if isinstance(names, (str, Path)) else list(names)
    runs = {}
    for name in names:
        run = load_run(name)
        if run.name in runs:
            run.name = str(name)
        runs[run.name] = run
    return runs


def _as_runs(runs) -> dict[str, Run]:
    return runs if isinstance(runs, dict) else load_runs(runs)


# --- plots ---------------------------------------------------------------------------------------------
def _new_ax(ax):
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=(7, 4.5))
    return ax


def plot_metric(runs, column: str = "val_loss", x: str = "step", logx: bool = False, logy: bool = False,
                smooth: float = 0, ax=None):
    """One line per run of a log column against x ('step', 'tokens', 'elapsed_s' or 'flops' =
    tokens * the model's training FLOPs per token). smooth in [0, 1): exponential moving average weight
    of the past (0 = raw). Returns the matplotlib Axes."""
    if x not in X_AXES:
        raise ValueError(f"x={x!r} is not one of {', '.join(X_AXES)}")
    if not 0 <= smooth < 1:
        raise ValueError(f"smooth={smooth} must be in [0, 1)")
    runs = _as_runs(runs)
    for name, run in runs.items():  # check every run before drawing anything
        missing = [c for c in (column, "tokens" if x == "flops" else x) if c not in run.log.columns]
        if missing:
            raise ValueError(f"run {name}: log_data.csv has no column {missing[0]!r}; "
                             f"columns: {', '.join(run.log.columns)}")
    ax = _new_ax(ax)
    for name, run in runs.items():
        log = run.log
        xs = log["tokens"] * run.flops_per_token if x == "flops" else log[x]
        ys = log[column].astype(float)
        keep = ys.notna() & xs.notna()
        xs, ys = xs[keep], ys[keep]
        if smooth:
            ys = ys.ewm(alpha=1 - smooth).mean()
        ax.plot(xs, ys, label=name, marker="." if len(ys) < 30 else None)
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(column)
    ax.set_title(f"{column} vs {X_AXES[x]}")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if runs:
        ax.legend()
    return ax


def plot_losses(runs, x: str = "step", logx: bool = False, logy: bool = False, smooth: float = 0):
    """Train and validation loss side by side against x; returns the Figure."""
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    runs = _as_runs(runs)
    plot_metric(runs, "train_loss", x, logx, logy, smooth, ax=left)
    plot_metric(runs, "val_loss", x, logx, logy, smooth, ax=right)
    fig.tight_layout()
    return fig


def plot_topk(table_or_results, ax=None):
    """Top-k accuracy against k per run, from summary_table()'s result or {run: [top-1, top-2, ...]}."""
    if isinstance(table_or_results, pd.DataFrame):
        results = table_or_results.attrs.get("topk_acc", {})
    else:
        results = dict(table_or_results)
    ax = _new_ax(ax)
    for name, accs in results.items():
        ax.plot(range(1, len(accs) + 1), accs, marker="o", label=name)
    ax.set_xlabel("k")
    ax.set_ylabel("next-token accuracy (true token in top k)")
    ax.set_title("top-k accuracy on the validation texts")
    ax.grid(alpha=0.3)
    if results:
        ax.legend()
        ax.set_xticks(range(1, max(len(a) for a in results.values()) + 1))
    return ax


# --- evaluation ----------------------------------------------------------------------------------------
def _device_of(model) -> torch.device:
    for t in [*model.parameters(), *model.buffers()]:
        return t.device
    return torch.device("cpu")


def _batches(sequences, seq_len: int | None, batch_size: int):
    """(inputs, targets) batches from id sequences. Each sequence is cut into windows of at most seq_len
    predictions with stride seq_len (inputs ids[s:s+L], targets ids[s+1:s+L+1]), so every token after
    the first is predicted exactly once; a window's first tokens see only the context inside it. Short
    windows are right-padded: the padding's targets are IGNORE and, the model being causal, the padding
    cannot change the real positions' logits."""
    windows = []
    for ids in sequences:
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        n = len(ids) - 1
        stride = seq_len or max(n, 1)
        windows += [ids[s:s + stride + 1] for s in range(0, n, stride)]
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        width = max(len(w) for w in chunk) - 1
        inputs = torch.zeros(len(chunk), width, dtype=torch.long)
        targets = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        for row, w in enumerate(chunk):
            inputs[row, :len(w) - 1] = w[:-1]
            targets[row, :len(w) - 1] = w[1:]
        yield inputs, targets


def _context_len(model, seq_len: int | None) -> int | None:
    max_len = getattr(getattr(model, "cfg", None), "max_seq_len", None)
    if seq_len is None:
        return max_len
    if max_len is not None and seq_len > max_len:
        raise ValueError(f"seq_len={seq_len} exceeds the model's max_seq_len={max_len}")
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    return seq_len


@torch.inference_mode()
def _score(model, batches, k_max: int) -> tuple[float, int, list[int]]:
    """One forward per batch, in eval mode (dropout off; the model's mode is restored after).
    Returns (summed cross-entropy in nats, predicted tokens, [tokens whose true id is in the top k
    for k = 1..k_max])."""
    if k_max < 1:
        raise ValueError(f"k_max={k_max} must be >= 1")
    was_training = model.training
    model.eval()
    device = _device_of(model)
    nll, count, correct = 0.0, 0, torch.zeros(k_max, dtype=torch.long)
    try:
        for inputs, targets in batches:
            logits, _ = model(inputs.to(device))
            targets = targets.to(device).flatten()
            valid = targets != IGNORE
            logits, targets = logits.flatten(0, 1)[valid].float(), targets[valid]
            nll += F.cross_entropy(logits, targets, reduction="sum").item()
            k = min(k_max, logits.size(-1))
            guesses = logits.topk(k, dim=-1).indices                       # (N, k), most likely first
            in_top = (guesses == targets[:, None]).cumsum(-1).clamp_(max=1)  # [i, j]: true id in the top j+1
            correct[:k] += in_top.sum(0).cpu()
            correct[k:] += len(targets)  # k beyond the vocabulary: every token is in the "top k"
            count += len(targets)
    finally:
        model.train(was_training)
    return nll, count, correct.tolist()


def _sequences_from(token_batches_or_ids):
    """A (T,) tensor or list of ints is one sequence; a (B, T) tensor is B sequences; otherwise an
    iterable of any of these."""
    x = token_batches_or_ids
    if isinstance(x, torch.Tensor):
        return [x] if x.dim() == 1 else list(x.reshape(-1, x.size(-1)))
    x = list(x)
    if x and all(isinstance(v, numbers.Integral) for v in x):  # numpy ints too
        return [x]
    return [seq for item in x for seq in _sequences_from(item)]


def topk_accuracy(model, token_batches_or_ids, k_max: int = 5, seq_len: int | None = None,
                  batch_size: int = 8) -> list[float]:
    """Teacher-forced next-token accuracy: for k = 1..k_max, the fraction of predicted positions whose
    true next token is among the model's k most likely. Sequences longer than the model's context are
    evaluated in windows (see _batches)."""
    seqs = _sequences_from(token_batches_or_ids)
    _, count, correct = _score(model, _batches(seqs, _context_len(model, seq_len), batch_size), k_max)
    if count == 0:
        raise ValueError("no tokens to predict: every sequence is shorter than 2 tokens")
    return [c / count for c in correct]


def _text_sequences(tokenizer, texts: list[str]) -> list[list[int]]:
    """[bos] + tokens + [eos] per text."""
    encoded = tokenizer.encode(list(texts)) if texts else []
    return [[tokenizer.bos_id, *ids, tokenizer.eos_id] for ids in encoded]


def _utf8_bytes(texts) -> int:
    return sum(len(t.encode("utf-8")) for t in texts)


def bits_per_byte(model, tokenizer, texts: list[str], seq_len: int | None = None, batch_size: int = 8) -> float:
    """Cross-entropy in bits summed over every predicted token, divided by the UTF-8 bytes of the texts.

    Each text is evaluated as [bos] + tokens + [eos]: bos is context only (never predicted, no cost);
    every text token and the final eos are predicted and their bits count. The eos covers no bytes, so
    the denominator is exactly the texts' UTF-8 bytes. Every tokenizer pays for one eos per text, which
    keeps byte and BPE models comparable. Texts longer than the context (seq_len, default the model's
    max_seq_len) are split into windows (see _batches); padding is never counted."""
    texts = list(texts)
    n_bytes = _utf8_bytes(texts)
    if n_bytes == 0:
        raise ValueError("bits_per_byte needs non-empty texts")
    seqs = _text_sequences(tokenizer, texts)
    nll, _, _ = _score(model, _batches(seqs, _context_len(model, seq_len), batch_size), 1)
    return nll / math.log(2) / n_bytes


def _last(log: pd.DataFrame, column: str) -> float:
    values = log[column].dropna() if column in log.columns else pd.Series(dtype=float)
    return float(values.iloc[-1]) if len(values) else math.nan


def _log_stat(log: pd.DataFrame, column: str, how: str) -> float:
    values = log[column].dropna() if column in log.columns else pd.Series(dtype=float)
    return float(getattr(values, how)()) if len(values) else math.nan


def evaluate_run(name, texts: list[str], k_max: int = 5, seq_len: int | None = None, batch_size: int = 8,
                 device: str = "cpu") -> dict:
    """Log statistics and an evaluation of the saved weights (the best-validation-loss model) on texts:
    bits per byte and top-k accuracy over the same [bos] + tokens + [eos] windows, in one pass."""
    run = name if isinstance(name, Run) else load_run(name)
    texts = list(texts)
    if not texts:
        raise ValueError("evaluate_run needs at least one validation text")
    model, tokenizer, _, _ = tools.load_model(run.path, device)
    seqs = _text_sequences(tokenizer, texts)
    nll, count, correct = _score(model, _batches(seqs, _context_len(model, seq_len), batch_size), k_max)
    topk = [c / count for c in correct]
    log = run.log
    tokens = _last(log, "tokens")
    return {
        "run": run.name,
        "tokenizer": f"{run.model_cfg.tokenizer}/{tokenizer.vocab_len}",
        "parameters": model.get_num_params(),
        "tokens_seen": tokens if math.isnan(tokens) else int(tokens),
        "final_val_loss": _last(log, "val_loss"),
        "best_val_loss": _log_stat(log, "val_loss", "min"),
        "bits_per_byte": nll / math.log(2) / _utf8_bytes(texts),
        "top1_acc": topk[0],
        f"top{k_max}_acc": topk[-1],
        "tokens_per_sec": _log_stat(log, "tokens_per_sec", "median"),
        "wall_time_s": _last(log, "elapsed_s"),
        "topk_acc": topk,
    }


def summary_table(runs, texts: list[str], **evaluate_kwargs) -> pd.DataFrame:
    """One row per run (index: run name) from evaluate_run. The full top-k lists are kept in
    table.attrs['topk_acc'] for plot_topk."""
    rows = [evaluate_run(run, texts, **evaluate_kwargs) for run in _as_runs(runs).values()]
    topk = {row["run"]: row.pop("topk_acc") for row in rows}
    table = pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame(index=pd.Index([], name="run"))
    table.attrs["topk_acc"] = topk
    return table


def _cell(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs the optional tabulate package)."""
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for name, row in table.iterrows():
        values = [v.item() if hasattr(v, "item") else v for v in row]
        lines.append("| " + " | ".join([str(name)] + [_cell(v) for v in values]) + " |")
    return "\n".join(lines) + "\n"


# --- validation texts ----------------------------------------------------------------------------------
def load_texts(source: str | Path | None = None, max_texts: int | None = None, text_field: str = "text",
               val_fraction: float = 0.05) -> list[str]:
    """Validation texts in a fixed order, the first max_texts of them.

    A .jsonl file (one JSON object per line, text in text_field) or .json file (a list of such objects or
    of strings) is taken whole as the validation texts. Anything else (a .txt or .parquet file, a folder,
    a hub name) goes through the data layer's validation split, as training saw it: its own validation
    split, else the held-out val_fraction (for one .txt file: the last val_fraction of the text)."""
    source = DEFAULT_VAL_DATA if source is None else source
    path = Path(source).expanduser()
    if max_texts is not None and max_texts < 1:
        raise ValueError(f"max_texts={max_texts} must be >= 1")
    try:
        if path.is_file() and path.suffix in (".jsonl", ".json"):
            texts = _read_json_texts(path, text_field, max_texts)
        else:
            from data.sources import iter_documents
            texts = []
            for text in iter_documents(str(source), split="validation", text_field=text_field,
                                       val_fraction=val_fraction):
                texts.append(text)
                if max_texts is not None and len(texts) >= max_texts:
                    break
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"cannot read validation texts from {source}: {e}") from None
    texts = [t for t in texts if t][:max_texts]
    if not texts:
        raise ValueError(f"no validation texts in {source}")
    return texts


def _read_json_texts(path: Path, text_field: str, max_texts: int | None) -> list[str]:
    if path.suffix == ".json":
        records = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(records, list):
            raise ValueError("expected a JSON list of records or strings")
    else:
        records = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    records.append(json.loads(line))
                if max_texts is not None and len(records) >= max_texts:
                    break
    texts = [r if isinstance(r, str) else r[text_field] for r in records]
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f"field {text_field!r} does not always hold text")
    return texts


# --- command line --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a.startswith("--sweep=") for a in argv):  # a sweep's report (see sweep.py)
        from experiments.report import main as sweep_report
        return sweep_report(argv)
    parser = argparse.ArgumentParser(description="Compare trained runs: loss curves, bits per byte, "
                                                 "top-k accuracy; writes PNGs and a CSV/Markdown table.")
    parser.add_argument("runs", nargs="+", help="run names in trained/ or run folder paths")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--val_data", default=str(DEFAULT_VAL_DATA), help="validation texts (default: %(default)s)")
    parser.add_argument("--max_texts", type=int, default=200, help="evaluate on the first N texts")
    parser.add_argument("--val_fraction", type=float, default=0.05,
                        help="held-out fraction when --val_data has no validation split (as in training)")
    parser.add_argument("--x", choices=list(X_AXES), default=None,
                        help="x axis of the loss curves (default: one plot per axis)")
    parser.add_argument("--device", default="cpu", help="torch device for the evaluation")
    args = parser.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    try:
        runs = load_runs(args.runs)
        texts = load_texts(args.val_data, args.max_texts, val_fraction=args.val_fraction)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for x in [args.x] if args.x else list(X_AXES):
            fig = plot_losses(runs, x=x, logx=x == "flops")
            fig.savefig(out / f"loss_vs_{x}.png", dpi=110)
            plt.close(fig)
        table = summary_table(runs, texts, device=args.device)
        ax = plot_topk(table)
        ax.figure.savefig(out / "topk_accuracy.png", dpi=110)
        plt.close(ax.figure)
        table.to_csv(out / "summary.csv")
        markdown = to_markdown(table)
        (out / "summary.md").write_text(markdown)
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown, end="")
    print(f"wrote {len(list(out.glob('*.png')))} plots, summary.csv and summary.md to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
