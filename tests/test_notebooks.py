"""Notebooks run headless, top to bottom, from the project root, and show what they promise."""
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def run_notebook(name: str, timeout: int = 300) -> nbformat.NotebookNode:
    nb = nbformat.read(ROOT / name, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb


def cell_text(cell) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


@pytest.mark.slow
def test_view_modules_notebook():
    committed = nbformat.read(ROOT / "view_modules.ipynb", as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in committed.cells if c.cell_type == "code"), "commit the notebook without outputs"

    nb = run_notebook("view_modules.ipynb")
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    shape_line = re.compile(r"Tensor\((\d+, )*\d+\) \w+ cpu")

    def cell_running(snippet):
        return cell_text(next(c for c in code if snippet in c.source))

    # each module cell prints its trace with shapes (B=2, T=8, dim=32, head_dim=8, vocab_len=64)
    expected = {
        "norm = Norm(": ["> Norm.forward", "in  arg0: Tensor(2, 8, 32) float32 cpu",
                         "< Norm.forward out: Tensor(2, 8, 32)"],
        "mlp = MLP(": ["> MLP.forward", "< MLP.forward out: Tensor(2, 8, 32)", "gated=True"],
        "rotary = RotaryEmbedding(": ["> RotaryEmbedding.forward", "in  arg0: Tensor(8,) int64",
                                      "out: Tensor(8, 4) complex64 cpu"],
        "attn = SelfAttention(": ["> SelfAttention.forward", "< SelfAttention.forward out: Tensor(2, 8, 32)"],
        "layer = Layer(": ["> Layer.forward", "  > SelfAttention.forward", "  > MLP.forward",
                           "< Layer.forward out: Tensor(2, 8, 32)"],
        "model = Model(": ["> Model.forward", "  > Layer.forward", "    > SelfAttention.forward",
                           "< Model.forward out: (Tensor(2, 8, 64) float32 cpu"],
    }
    for snippet, lines in expected.items():
        text = cell_running(snippet)
        assert shape_line.search(text), (snippet, text)
        for line in lines:
            assert line in text, (snippet, line, text)
    # the LR schedule cell draws a figure; the tokenizer cell splits words
    lr_cell = next(c for c in code if "tools.lr_schedule" in c.source)
    assert any("image/png" in o.get("data", {}) for o in lr_cell.outputs)
    assert "Once| upon| a| time" in cell_running("display(text)")
