"""model_comparison: top-k accuracy and bits per byte against hand-computed answers, deterministic
evaluation with dropout, the CLI's files and errors, and the notebook run headless."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import model_comparison as mc
import tools
from config import ModelConfig, TrainConfig
from machinery.run.weights import save_weights
from modules.model import Model

ROOT = Path(__file__).resolve().parents[1]
LOG_COLUMNS = ["step", "tokens", "elapsed_s", "tokens_per_sec", "train_loss", "val_loss", "perplexity", "lr",
               "grad_norm", "mfu"]


# --- fakes ---------------------------------------------------------------------------------------------
class BigramLogits(nn.Module):
    """Fixed logits that depend only on the current token: logits[b, t] = table[input_ids[b, t]]."""

    def __init__(self, table: torch.Tensor, max_seq_len: int | None = None):
        super().__init__()
        self.register_buffer("table", table.float())
        if max_seq_len is not None:
            self.cfg = type("Cfg", (), {"max_seq_len": max_seq_len})()
        self.calls = 0

    def forward(self, input_ids, targets=None):
        self.calls += 1
        return self.table[input_ids], None


class FakeByteTokenizer:
    """The byte tokenizer's contract: ids 0-255 bytes, 256 bos, 257 eos, 258 pad."""
    vocab_len, bos_id, eos_id, pad_id = 259, 256, 257, 258

    def encode(self, text):
        if isinstance(text, list):
            return [self.encode(t) for t in text]
        return list(text.encode("utf-8"))


def make_run(root: Path, name: str, rows: int = 4, dropout: float = 0.0, **model_kw) -> Path:
    """A run folder: a tiny random byte-level model, its configs and a hand-written log."""
    cfg = ModelConfig(**{**dict(dim=16, num_layers=1, num_q_heads=2, num_kv_heads=2, max_seq_len=32,
                                tokenizer="byte", vocab_len=259, dropout_embed=dropout, dropout_attn=dropout,
                                dropout_resid=dropout), **model_kw})
    path = root / name
    path.mkdir(parents=True)
    (path / "model_config.json").write_text(json.dumps(cfg.to_dict()))
    (path / "train_config.json").write_text(json.dumps(TrainConfig(model_name=name).to_dict()))
    save_weights(Model(cfg), path / "model.safetensors")
    log = pd.DataFrame([{"step": 10 * (i + 1), "tokens": 3200 * (i + 1), "elapsed_s": 1.5 * (i + 1),
                         "tokens_per_sec": 2000 + 100 * i, "train_loss": 5.5 - 0.3 * i, "val_loss": 5.6 - 0.25 * i,
                         "perplexity": math.exp(5.6 - 0.25 * i), "lr": 1e-3, "grad_norm": 1.0, "mfu": 0.01}
                        for i in range(rows)], columns=LOG_COLUMNS)
    log.to_csv(path / "log_data.csv", index=False)
    return path


# --- top-k accuracy ------------------------------------------------------------------------------------
def test_topk_accuracy_hand_made():
    # vocab of 4; after token a, the model ranks tokens in the order given (best first)
    ranking = {0: [1, 2, 3, 0], 1: [2, 3, 0, 1], 2: [3, 0, 1, 2], 3: [0, 1, 2, 3]}
    table = torch.zeros(4, 4)
    for a, order in ranking.items():
        for rank, b in enumerate(order):
            table[a, b] = 10.0 - rank
    model = BigramLogits(table)
    # transitions 0->1 (rank 1), 1->3 (rank 2), 3->3 (rank 4), 3->1 (rank 2), 1->2 (rank 1)
    seq = [0, 1, 3, 3, 1, 2]
    acc = mc.topk_accuracy(model, torch.tensor([seq]), k_max=5)
    assert acc == pytest.approx([2 / 5, 4 / 5, 4 / 5, 1.0, 1.0])
    assert model.calls == 1  # one forward for the batch
    # the same positions as a list of ids, a 1-D tensor, and split over two sequences of a list
    assert mc.topk_accuracy(model, seq, k_max=5) == pytest.approx(acc)
    assert mc.topk_accuracy(model, torch.tensor(seq), k_max=5) == pytest.approx(acc)
    assert mc.topk_accuracy(model, [seq[:3], seq[2:]], k_max=5) == pytest.approx(acc)
    # windows shorter than the sequence: a bigram model's answer can't change
    assert mc.topk_accuracy(model, seq, k_max=5, seq_len=2, batch_size=2) == pytest.approx(acc)


def test_topk_accuracy_ignores_padding_of_ragged_sequences():
    table = torch.eye(3) * 5  # predicts "same token again"
    model = BigramLogits(table)
    acc = mc.topk_accuracy(model, [[0, 0, 0, 0], [1, 2]], k_max=1)  # 3 hits of 4 positions, not 5 or 6
    assert acc == pytest.approx([3 / 4])
    with pytest.raises(ValueError, match="no tokens"):
        mc.topk_accuracy(model, [[1]])


# --- bits per byte -------------------------------------------------------------------------------------
def test_bits_per_byte_uniform_model():
    tok = FakeByteTokenizer()
    texts = ["hello world", "héllo ☃ snow", "a" * 50]  # multi-byte UTF-8, and longer than the context
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    predicted = n_bytes + len(texts)  # every byte, plus one eos per text; bos is never predicted
    model = BigramLogits(torch.zeros(259, 259), max_seq_len=8)
    expected = math.log2(259) * predicted / n_bytes
    assert mc.bits_per_byte(model, tok, texts) == pytest.approx(expected, rel=1e-6)
    assert mc.bits_per_byte(model, tok, texts, seq_len=3, batch_size=1) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="exceeds"):
        mc.bits_per_byte(model, tok, texts, seq_len=9)


def test_bits_per_byte_matches_reference_loop():
    torch.manual_seed(1)
    tok = FakeByteTokenizer()
    table = torch.randn(259, 259) * 3
    texts = ["The cat sat.", "Über naïve café", "x"]
    logp = torch.log_softmax(table, -1)
    bits = 0.0
    for t in texts:
        ids = [256, *t.encode("utf-8"), 257]
        bits -= sum(logp[a, b].item() for a, b in zip(ids, ids[1:])) / math.log(2)
    expected = bits / sum(len(t.encode("utf-8")) for t in texts)
    for seq_len in (None, 4, 1):
        got = mc.bits_per_byte(BigramLogits(table, max_seq_len=64), tok, texts, seq_len=seq_len)
        assert got == pytest.approx(expected, rel=1e-5)


# --- runs, evaluation, table ---------------------------------------------------------------------------
def test_evaluation_is_deterministic_with_dropout(tmp_path):
    path = make_run(tmp_path, "drop", dropout=0.5)
    texts = ["Once upon a time there was a cat.", "It sat on a mat and was happy."]
    model, tok, _, _ = tools.load_model(path)
    model.train()  # as if left in training mode: evaluation must still switch dropout off
    ids = torch.tensor([[256, *texts[0].encode()[:20]]])
    with torch.no_grad():
        assert not torch.equal(model(ids)[0], model(ids)[0])  # dropout really is active in train mode
    first = mc.bits_per_byte(model, tok, texts)
    assert mc.bits_per_byte(model, tok, texts) == first
    assert model.training  # the caller's mode is restored
    seqs = [[256, *t.encode()] for t in texts]
    assert mc.topk_accuracy(model, seqs) == mc.topk_accuracy(model, seqs)
    a, b = mc.evaluate_run(str(path), texts), mc.evaluate_run(str(path), texts)
    assert a == b


def test_summary_table_and_plots(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    runs = mc.load_runs([str(make_run(tmp_path, "a")), str(make_run(tmp_path, "b", rows=2))])
    assert list(runs) == ["a", "b"]
    table = mc.summary_table(runs, ["One day a dog ran.", "The sun was warm."])
    assert list(table.index) == ["a", "b"]
    for column in ("parameters", "tokens_seen", "final_val_loss", "best_val_loss", "bits_per_byte",
                   "top1_acc", "top5_acc", "tokens_per_sec", "wall_time_s"):
        assert column in table.columns
    assert table.loc["a", "tokens_seen"] == 4 * 3200 and table.loc["b", "wall_time_s"] == 3.0
    assert table.loc["a", "best_val_loss"] == pytest.approx(5.6 - 0.75)
    assert table.loc["a", "tokens_per_sec"] == pytest.approx(2150)  # median of 2000..2300
    assert 0 <= table.loc["a", "top1_acc"] <= table.loc["a", "top5_acc"] <= 1
    assert len(table.attrs["topk_acc"]["a"]) == 5
    ax = mc.plot_metric(runs, "val_loss", x="flops", logx=True, smooth=0.5)
    assert len(ax.lines) == 2
    flops = ax.lines[0].get_xdata()
    assert flops[0] == pytest.approx(3200 * Model(runs["a"].model_cfg).flops_per_token())
    assert mc.plot_topk(table).lines and "| a |" in mc.to_markdown(table)
    with pytest.raises(ValueError, match="no column 'nope'"):
        mc.plot_metric(runs, "nope")
    with pytest.raises(ValueError, match="x='time'"):
        mc.plot_metric(runs, x="time")


def test_summary_table_names_the_config_fields_that_differ(tmp_path):
    runs = mc.load_runs([str(make_run(tmp_path, "silu", mlp_nonlinearity="SiLU")),
                         str(make_run(tmp_path, "mish", mlp_nonlinearity="ReLU"))])
    assert mc.config_differences(runs) == {"silu": {"mlp_nonlinearity": "SiLU"}, "mish": {"mlp_nonlinearity": "ReLU"}}
    table = mc.summary_table(runs)  # no texts: what the logs say, no evaluation
    assert list(table["config_diff"]) == ["mlp_nonlinearity=SiLU", "mlp_nonlinearity=ReLU"]
    assert "bits_per_byte" not in table.columns and table.attrs["topk_acc"] == {}
    assert table.loc["silu", "parameters"] == Model(runs["silu"].model_cfg).get_num_params()
    assert "| silu | byte/259 |" in mc.to_markdown(table) and "mlp_nonlinearity=ReLU |" in mc.to_markdown(table)
    single = mc.summary_table({"silu": runs["silu"]})
    assert list(single["config_diff"]) == [""]


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_plots_keep_legends_off_the_curves_and_tick_labels_apart(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = mc.load_runs([str(make_run(tmp_path, "a", rows=30)), str(make_run(tmp_path, "b", rows=3, dim=32))])
    for x in mc.X_AXES:
        fig = mc.plot_losses(runs, x=x, logx=x == "flops")
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legend = fig.legends[0].get_window_extent(renderer)
        for ax in fig.axes:
            assert not _boxes_overlap(legend, ax.get_window_extent(renderer)), x  # beside the plot area
            labels = [t.get_window_extent(renderer) for t in ax.get_xticklabels()
                      if t.get_visible() and t.get_text()]
            assert labels, x
            assert not any(_boxes_overlap(p, q) for i, p in enumerate(labels) for q in labels[i + 1:]), x
            assert len(labels) <= 8, x
        plt.close(fig)
    ax = mc.plot_metric(runs, "val_loss", x="flops", logx=True)
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    assert not _boxes_overlap(ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer))
    plt.close(ax.figure)


def test_load_runs_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model named 'no_such_run'"):
        mc.load_runs(["no_such_run"])
    with pytest.raises(FileNotFoundError, match="runs in trained/"):
        mc.load_runs([str(tmp_path / "missing")])
    empty = make_run(tmp_path, "empty", rows=0)
    with pytest.raises(ValueError, match="no rows in log_data.csv"):
        mc.load_runs([str(empty)])
    (empty / "log_data.csv").write_text("")
    with pytest.raises(ValueError, match="no rows in log_data.csv"):
        mc.load_runs([str(empty)])


# --- command line --------------------------------------------------------------------------------------
def test_cli_writes_plots_and_table(tmp_path, sample_data, capsys):
    # in-process (saves a torch import); test_cli_errors runs the real script in a subprocess
    a, b = make_run(tmp_path, "run_a"), make_run(tmp_path, "run_b", pos_enc_type="learnable")
    out = tmp_path / "out"
    val = sample_data / "tinystories" / "validation.jsonl"
    assert mc.main([str(a), str(b), "--out", str(out), "--val_data", str(val), "--max_texts", "3"]) == 0
    stdout = capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {f"loss_vs_{x}.png" for x in ("step", "tokens", "elapsed_s", "flops")} <= names
    assert {"topk_accuracy.png", "summary.csv", "summary.md"} <= names
    assert all((out / n).read_bytes()[:4] == b"\x89PNG" for n in names if n.endswith(".png"))
    table = pd.read_csv(out / "summary.csv", index_col="run")
    assert list(table.index) == ["run_a", "run_b"] and table["bits_per_byte"].gt(0).all()
    assert "| run_a |" in stdout and (out / "summary.md").read_text() in stdout
    # --x: only that axis
    assert mc.main([str(a), "--out", str(tmp_path / "one"), "--max_texts", "1", "--x", "tokens"]) == 0
    assert {p.name for p in (tmp_path / "one").glob("loss_*.png")} == {"loss_vs_tokens.png"}


def test_cli_compares_the_shipped_models(tmp_path, capsys):
    if not {"gpt2_atto", "llama3_atto"} <= set(tools.list_runs()):
        pytest.skip("the shipped models are not in trained/")
    out = tmp_path / "cmp"
    assert mc.main(["gpt2_atto", "llama3_atto", "--out", str(out), "--max_texts", "2", "--x", "flops"]) == 0
    assert {p.name for p in out.iterdir()} == {"loss_vs_flops.png", "topk_accuracy.png", "summary.csv",
                                               "summary.md"}
    table = pd.read_csv(out / "summary.csv", index_col="run")
    assert list(table.index) == ["gpt2_atto", "llama3_atto"]
    assert "pos_enc_type=learnable" in table.loc["gpt2_atto", "config_diff"]
    assert "pos_enc_type=RoPE" in table.loc["llama3_atto", "config_diff"]


def test_cli_errors(tmp_path, capsys):
    good = str(make_run(tmp_path, "good"))
    empty = str(make_run(tmp_path, "empty", rows=0))
    cases = [([good, "no_such_run"], "no model named 'no_such_run'"),
             ([good, empty], "no rows in log_data.csv"),
             ([good, "--max_texts=0"], "--max_texts=0 is invalid"),
             ([good, "--x=time"], "--x='time' is invalid"),
             ([good, "--val_dat=x.jsonl"], "Did you mean: --val_data"),
             (["--out=somewhere"], "name at least one run")]
    for args, message in cases:
        assert mc.main([*args, "--out", str(tmp_path / "out")]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert mc.main([good]) == 2 and "--out=DIR is required" in capsys.readouterr().err
    # --out that is a file, a link or a dangling link: one line naming it, nothing written through it
    (tmp_path / "a_file").write_text("mine")
    (tmp_path / "a_link").symlink_to(tmp_path / "elsewhere")
    for out, words in (("a_file", "is a file, not a folder"), ("a_link", "is a symbolic link")):
        assert mc.main([good, f"--out={tmp_path / out}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--out={tmp_path / out} {words}" in err, err
    assert (tmp_path / "a_file").read_text() == "mine" and not (tmp_path / "elsewhere").exists()
    # the real process: exit code 2, one line, no traceback
    proc = subprocess.run([sys.executable, "model_comparison.py", "no_such_run", "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "no model named" in proc.stderr


def test_cli_without_validation_text_still_draws_curves_and_table(tmp_path, capsys):
    """Unreadable, missing or switched-off validation text: curves and the log table, and a note."""
    good = str(make_run(tmp_path, "good"))
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text("{not json\n")
    for val_data, note in ((str(tmp_path / "nothing.jsonl"), "cannot read validation texts"),
                           (str(bad_json), "cannot read validation texts"),
                           (str(Path(good) / "log_data.csv"), "cannot read validation texts"),
                           ("None", "--val_data=None")):
        out = tmp_path / f"out_{len(list(tmp_path.iterdir()))}"
        assert mc.main([good, f"--val_data={val_data}", f"--out={out}", "--x=step"]) == 0, val_data
        err = capsys.readouterr().err
        assert err.startswith("note: ") and note in err and "bits per byte and top-k accuracy are left out" in err
        assert {p.name for p in out.iterdir()} == {"loss_vs_step.png", "summary.csv", "summary.md"}
        table = pd.read_csv(out / "summary.csv", index_col="run")
        assert "bits_per_byte" not in table.columns and table.loc["good", "parameters"] > 0


def test_help_lists_every_option(tmp_path, capsys):
    assert mc.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python model_comparison.py RUN")
    for option in ("--out (str or None, default None)", "--x ", "--max_texts (int, default 200)",
                   "--val_fraction", "--device (str, default 'cpu')",
                   "--val_data (str or None, default 'data/samples/tinystories/validation.jsonl')"):
        assert option in text, option
    assert mc.main(["-h"]) == 0 and capsys.readouterr().out == text
    assert mc.main(["--help=max_texts"]) == 0
    one = capsys.readouterr().out
    assert "--max_texts" in one and "--out" not in one
    proc = subprocess.run([sys.executable, "model_comparison.py", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == text and not proc.stderr


# --- notebook ------------------------------------------------------------------------------------------
def test_notebook_executes_headless(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    if len(tools.list_runs()) < 2:  # no shipped models yet: point the notebook at two tmp runs
        runs = [make_run(tmp_path, "nb_a"), make_run(tmp_path, "nb_b", rows=1)]
        monkeypatch.setenv("TEMPLATEGPT_RUNS", ",".join(map(str, runs)))
    monkeypatch.setenv("TEMPLATEGPT_MAX_TEXTS", "10")
    nb = nbformat.read(ROOT / "model_comparison.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5  # 4 loss figures + top-k
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("bits_per_byte" in t for t in tables)  # the evaluation on the bundled validation sample
    assert any("config_diff" in t and "bits_per_byte" not in t for t in tables)  # the table from the logs alone


def test_load_texts(tmp_path, sample_data):
    texts = mc.load_texts(sample_data / "tinystories" / "validation.jsonl", max_texts=5)
    assert len(texts) == 5 and all(isinstance(t, str) and t for t in texts)
    assert len(mc.load_texts()) == 80  # the default: all of the local TinyStories validation file
    (tmp_path / "t.json").write_text(json.dumps(["first", {"text": "second"}, ""]))
    assert mc.load_texts(tmp_path / "t.json") == ["first", "second"]
    with pytest.raises(ValueError, match="max_texts"):
        mc.load_texts(max_texts=0)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no validation texts"):
        mc.load_texts(tmp_path / "empty.jsonl")
