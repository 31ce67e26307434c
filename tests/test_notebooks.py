"""Notebooks run headless, top to bottom, from the root of a fresh clone (nothing a checkout gathered: no token
cache, no runs but the shipped ones), and show what they promise."""
import re

import nbformat
import pytest

from tests.helpers import run_notebook


def cell_text(cell) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


@pytest.mark.slow
def test_view_modules_notebook(fresh_clone):
    committed = nbformat.read(fresh_clone / "view_modules.ipynb", as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in committed.cells if c.cell_type == "code"), "commit the notebook without outputs"

    nb = run_notebook("view_modules.ipynb", fresh_clone)
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    shape_line = re.compile(r"Tensor\((\d+, )*\d+\) \w+ cpu")

    def cell_running(snippet):
        return cell_text(next(c for c in code if snippet in c.source))

    # each module cell prints its trace, arguments by name (B=2, T=8, dim=32, 4 q heads and 2 kv heads of 8)
    expected = {
        "norm = build_norm(": ["> RMSNorm.forward", "in  x: Tensor(2, 8, 32) float32 cpu",
                               "< RMSNorm.forward out: Tensor(2, 8, 32)"],
        "mlp = MLP(": ["> MLP.forward", "< MLP.forward out: Tensor(2, 8, 32)", "gated=True"],
        "rotary = RotaryEmbedding(": ["> RotaryEmbedding.forward", "in  positions: Tensor(8,) int64",
                                      "out: Tensor(8, 4) complex64 cpu"],
        "attn = SelfAttention(": ["> SelfAttention.forward", "in  inputs: AttentionInputs(",
                                  "< SelfAttention.split_heads out: (Tensor(2, 4, 8, 8) float32 cpu",
                                  "in  q: Tensor(2, 4, 8, 8)", "in  k: Tensor(2, 2, 8, 8)", "in  v: Tensor(2, 2, 8, 8)",
                                  "in  mask: None", "in  is_causal: True",
                                  "< SelfAttention.forward out: Tensor(2, 8, 32)"],
        "layer = Layer(": ["> Layer.forward", "  > SelfAttention.forward", "  > MLP.forward",
                           "< Layer.forward out: Tensor(2, 8, 32)"],
        "model = Model(": ["> Model.forward", "  > Layer.forward", "    > SelfAttention.forward",
                           "< Model.forward out: (Tensor(2, 8, 64) float32 cpu"],
        "small = Model(": ["in  cache: KVCache(", "length=5", "in  k: Tensor(2, 2, 6, 8)",
                           "in  mask: Tensor(2, 1, 1, 6) bool cpu 6/12 True", "cache now holds 6 positions"],
    }
    for snippet, lines in expected.items():
        text = cell_running(snippet)
        assert shape_line.search(text), (snippet, text)
        for line in lines:
            assert line in text, (snippet, line, text)
    # the LR schedule cell draws a figure; the tokenizer cell splits words
    lr_cell = next(c for c in code if "tools.lr_schedule" in c.source)
    assert any("image/png" in o.get("data", {}) for o in lr_cell.outputs)
    assert "bbox_to_anchor" in lr_cell.source  # the legend sits beside the axes, over no curve
    assert "Once| upon| a| time" in cell_running("display(text)")
