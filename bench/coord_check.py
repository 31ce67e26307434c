"""Coordinate check (Tensor Programs V, https://arxiv.org/abs/2203.03466, section 7 / Figure 5): train each width a
few steps and watch the size (RMS) of every activation coordinate. Under μP the curves are flat across widths; under
the standard parametrization they grow with width once training moves the weights.

    python bench/coord_check.py --parametrization=mup --widths=64,128,256,512 --steps=10
    python bench/coord_check.py --parametrization=sp,mup --png=docs/mup/coord_check.png   # both, one figure
    python bench/coord_check.py --parametrization=mup --optimizer=muon --data=random

Prints one JSON line per (parametrization, width, step): parametrization, width, step, loss, embedding_rms,
layer_rms (each block's output), hidden_rms (the last block's output), logits_rms. Step 0 is the model at init,
step t after t AdamW (or Muon) steps at a constant lr; all are measured on the same held-out batch.
Flags: --parametrization=sp|mup|sp,mup --widths=64,128,256,512 --steps=10 --lr=0.01 --muon_lr=0.02 --mup_base_dim=128
       --optimizer=adamw|muon --layers=2 --seq_len=64 --batch=8 --seed=0 --data=tinystories|random
       --png=PATH (default docs/mup/coord_check_<parametrization>.png; 'none' for no plot)
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config import PARAMETRIZATIONS, ModelConfig, TrainConfig  # noqa: E402
from machinery.cli import split_args  # noqa: E402
from modules.model import Model  # noqa: E402
from training.optim import build_optimizers  # noqa: E402

DEFAULTS = dict(parametrization="mup", widths="64,128,256,512", steps="10", lr="0.01", muon_lr="0.02",
                mup_base_dim="128",
                optimizer="adamw", layers="2", seq_len="64", batch="8", seed="0", data="tinystories", png=None)
VOCAB = 1024


def sample_tokens() -> torch.Tensor:
    """The bundled TinyStories sample as one token stream (tokenized once into data_cache/)."""
    import tools
    from machinery.data.pretokenize import load_tokens
    cfg = TrainConfig(dataset=str(ROOT / "data" / "samples" / "tinystories"))
    tokens = load_tokens(cfg, tools.get_tokenizer("bpe_tinyStories", VOCAB), "train", show_progress=False)
    return torch.from_numpy(tokens.astype("int64"))


def batches(tokens: torch.Tensor | None, n: int, batch: int, seq_len: int, seed: int) -> list[torch.Tensor]:
    """n batches of (batch, seq_len + 1) token windows, the same for every width."""
    g = torch.Generator().manual_seed(seed)
    if tokens is None:
        return [torch.randint(0, VOCAB, (batch, seq_len + 1), generator=g) for _ in range(n)]
    starts = torch.randint(0, len(tokens) - seq_len - 1, (n, batch), generator=g)
    return [torch.stack([tokens[s:s + seq_len + 1] for s in row.tolist()]) for row in starts]


def rms(x: torch.Tensor) -> float:
    return x.float().pow(2).mean().sqrt().item()


def measure(model: Model, probe: torch.Tensor) -> dict:
    """RMS of the embedding output, every block's output and the logits on one batch, dropout off."""
    seen = {}
    hooks = [model.token_embedding.register_forward_hook(lambda m, i, o: seen.__setitem__("embedding", rms(o)))]
    for i, layer in enumerate(model.layers):
        hooks.append(layer.register_forward_hook(lambda m, inp, o, i=i: seen.__setitem__(i, rms(o))))
    model.eval()
    with torch.no_grad():
        logits, loss = model(probe[:, :-1], probe[:, 1:])
    model.train()
    for h in hooks:
        h.remove()
    layers = [seen[i] for i in range(len(model.layers))]
    return dict(loss=loss.item(), embedding_rms=seen["embedding"], layer_rms=layers, hidden_rms=layers[-1],
                logits_rms=rms(logits))


def coord_check(parametrization: str, widths: list[int], steps: int, lr: float = 0.01, mup_base_dim: int = 128,
                optimizer: str = "adamw", layers: int = 2, seq_len: int = 64, batch: int = 8, seed: int = 0,
                tokens: torch.Tensor | None = None, muon_lr: float = 0.02) -> list[dict]:
    """One row per (width, step 0..steps): the activation sizes of a model trained `step` steps at constant lr
    (AdamW's lr; with optimizer='muon' the hidden matrices take muon_lr)."""
    data = batches(tokens, steps + 1, batch, seq_len, seed)
    probe, train = data[0], data[1:]
    rows = []
    for width in widths:
        torch.manual_seed(seed)
        cfg = ModelConfig(dim=width, num_layers=layers, num_q_heads=4, num_kv_heads=4, max_seq_len=seq_len,
                          vocab_len=VOCAB, parametrization=parametrization, mup_base_dim=mup_base_dim)
        model = Model(cfg)
        optimizers = build_optimizers(model, TrainConfig(optimizer=optimizer, lr_max=lr, muon_lr=muon_lr,
                                                         weight_decay=0.0), torch.device("cpu"))
        for step in range(steps + 1):
            rows.append(dict(parametrization=parametrization, width=width, step=step, **measure(model, probe)))
            if step == steps:
                break
            _, loss = model(train[step][:, :-1], train[step][:, 1:])
            loss.backward()
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    """The classic coordinate-check figure: RMS vs width (log-log), one line per step, one panel per activation;
    one row of panels per parametrization."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(dict.fromkeys(r["parametrization"] for r in rows))
    num_layers = len(rows[0]["layer_rms"])
    panels = [("embedding", lambda r: r["embedding_rms"])]
    panels += [(f"block {i + 1} output", lambda r, i=i: r["layer_rms"][i]) for i in range(num_layers)]
    panels += [("logits", lambda r: r["logits_rms"])]
    fig, axes = plt.subplots(len(params), len(panels), figsize=(3.4 * len(panels), 3.0 * len(params)), squeeze=False,
                             sharey="col")
    steps = sorted({r["step"] for r in rows})
    cmap = plt.get_cmap("viridis")
    for row_axes, param in zip(axes, params):
        mine = [r for r in rows if r["parametrization"] == param]
        for ax, (name, value) in zip(row_axes, panels):
            for step in steps:
                pts = sorted((r["width"], value(r)) for r in mine if r["step"] == step)
                ax.plot(*zip(*pts), marker="o", ms=3, color=cmap(step / max(steps[-1], 1)), label=f"step {step}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{ {'sp': 'SP', 'mup': 'μP'}.get(param, param)}: {name}", fontsize=10)
            ax.set_xlabel("width (dim)")
            ax.grid(alpha=0.3)
        row_axes[0].set_ylabel("RMS of coordinates")
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=100, format="png")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    overrides, positional = split_args(sys.argv[1:] if argv is None else argv)
    if "help" in overrides or "h" in overrides:
        print(__doc__)
        return 0
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if positional or unknown:
        print(f"error: unknown argument(s) {positional or unknown}; see --help", file=sys.stderr)
        return 2
    o = {**DEFAULTS, **overrides}
    params = o["parametrization"].split(",")
    bad = [p for p in params if p not in PARAMETRIZATIONS] + \
          ([o["data"]] if o["data"] not in ("tinystories", "random") else [])
    if bad:
        print(f"error: {bad[0]!r} is not allowed: --parametrization takes sp, mup or sp,mup and --data takes "
              f"tinystories or random", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    tokens = sample_tokens() if o["data"] == "tinystories" else None
    widths = [int(w) for w in o["widths"].split(",")]
    rows = []
    for param in params:
        for row in coord_check(param, widths, int(o["steps"]), float(o["lr"]), int(o["mup_base_dim"]),
                               o["optimizer"], int(o["layers"]), int(o["seq_len"]), int(o["batch"]), int(o["seed"]),
                               tokens, float(o["muon_lr"])):
            print(json.dumps(row), flush=True)
            rows.append(row)
    png = o["png"] or str(ROOT / "docs" / "mup" / f"coord_check_{'_'.join(params)}.png")
    if png != "none":
        lrs = f"lr {o['lr']}" + (f", muon_lr {o['muon_lr']}" if o["optimizer"] == "muon" else "")
        plot(rows, Path(png), f"Coordinate check: {o['optimizer']}, {lrs}, mup_base_dim {o['mup_base_dim']}, "
                              f"{o['layers']} layers, {o['data']} data")
        print(f"plot: {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
