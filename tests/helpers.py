"""Small helpers and settings shared by the tests."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from machinery.run.run_log import TIMING_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def read_log(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "log_data.csv", newline="") as f:
        return list(csv.DictReader(f))


def deterministic(rows: list[dict]) -> list[dict]:
    """Log rows without wall-clock columns, which differ between otherwise identical runs."""
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def write_table(path: Path, rows: list[dict]) -> Path:
    """rows as a .jsonl (one object a line), .json (one list) or .parquet file, by path's suffix."""
    path = Path(path)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        import pandas as pd
        pd.DataFrame(rows).to_parquet(path)
    return path


# A model with every ModelConfig option switched on at once, where options can go together: GQA, head_dim apart
# from dim / heads, qk_norm, a sliding window, sandwich norms, scaled embeddings, biases everywhere, a gated MLP
# rounded up, a logit soft cap, dropout (off in eval) and μP away from its base width. Its variants hold the
# choices one model cannot make at once. tests/test_every_option.py checks that every field is away from its
# default in one of them (a new option is switched on here), against modules/reference.py's whole model;
# tests/test_inference.py generates with it.
EVERY_OPTION = dict(
    dim=40, num_layers=3, num_q_heads=6, num_kv_heads=2, head_dim=12, max_seq_len=32, tokenizer="byte",
    vocab_len=64, theta=500.0, mlp_hidden_mult=3.0, mlp_nonlinearity="SiLU", mlp_gated=True, mlp_multiple_of=16,
    norm_type="LayerNorm", norm_bias=True, norm_eps=1e-3, post_sublayer_norm=True, scale_embeddings=True,
    linear_bias=True, tie_embeddings=False, logit_softcap=3.0, qk_norm=True, sliding_window=5,
    dropout_embed=0.1, dropout_attn=0.1, dropout_resid=0.1, init_std=0.3,
    parametrization="mup", mup_base_dim=20, mup_base_head_dim=6)
EVERY_OPTION_VARIANTS = {
    "RoPE": EVERY_OPTION,
    "learnable_tied": EVERY_OPTION | dict(pos_enc_type="learnable", tie_embeddings=True, norm_type="RMSNorm",
                                          mlp_nonlinearity="GeLU_tanh"),
    "Sinusoidal_unscaled_norms": EVERY_OPTION | dict(pos_enc_type="Sinusoidal", norm_affine=False, norm_bias=False,
                                                     mlp_nonlinearity="ReLU"),
}


def run_notebook(name: str, folder: Path = ROOT, timeout: int = 300):
    """Execute a notebook headless as Jupyter does when it is opened from `folder` (the kernel starts there)."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(folder / name, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    return nb


def tiny_args(sample_data: Path, cache: Path, name: str = "run", **extra) -> list[str]:
    """A ~30k-parameter model on the TinyStories sample; a few seconds per run on 2 cores."""
    settings = dict(dim=32, num_layers=2, num_q_heads=4, num_kv_heads=2, max_seq_len=32, tokenizer="bpe_tinyStories",
                    vocab_len=512, dataset=str(sample_data / "tinystories"), cache_dir=str(cache),
                    micro_batch_size=4, max_iters=12, eval_interval=3, eval_batches=2, checkpoint_interval=4,
                    warmup_iters=2, lr_max=3e-3, lr_min=3e-4, dtype="float32", device="cpu", model_name=name)
    settings.update(extra)
    return [f"--{k}={v}" for k, v in settings.items()]
