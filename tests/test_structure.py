"""The tree shows the small core a researcher reads, apart from the machinery (README: "Read the core").

The core is what one reads to understand and change the model: ModelConfig, the model's modules, train.py and
the optimizer step. If it grows past CORE_CAP, something that is machinery has moved in (or the cap is raised on
purpose, with the README's figure)."""
from __future__ import annotations

import inspect
from pathlib import Path

import config

ROOT = Path(__file__).resolve().parents[1]
CORE_FILES = ["modules/model.py", "modules/layer.py", "modules/attention.py", "modules/mlp.py", "modules/norm.py",
              "modules/positional.py", "train.py", "training/step.py"]
CORE_CAP = 1150  # lines, ModelConfig included

# top-level scripts: the original template's entry points, and the machinery's own command lines
ENTRY_POINTS = {"config.py", "train.py", "inference.py", "tools.py", "model_comparison.py", "sweep.py",
                "export_hf.py", "evaluate.py"}


def core_lines() -> dict[str, int]:
    counts = {path: len((ROOT / path).read_text().splitlines()) for path in CORE_FILES}
    counts["config.py: ModelConfig"] = len(inspect.getsource(config.ModelConfig).splitlines())
    return counts


def test_core_stays_small():
    counts = core_lines()
    total = sum(counts.values())
    print(f"core: {total} lines " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    assert total <= CORE_CAP, (f"the core is {total} lines, over its cap of {CORE_CAP}: move machinery out of "
                               f"{max(counts, key=counts.get)} or raise CORE_CAP (and the README's figure) on purpose")


def test_top_level_holds_only_entry_points():
    scripts = {p.name for p in ROOT.glob("*.py")}
    assert scripts <= ENTRY_POINTS, f"new top-level scripts {sorted(scripts - ENTRY_POINTS)}: machinery goes in machinery/"


def test_model_modules_import_no_machinery():
    """The model itself (modules/) never needs machinery/: a researcher reads it on its own."""
    for path in sorted((ROOT / "modules").glob("*.py")):
        text = path.read_text()
        assert "from machinery" not in text and "import machinery" not in text, f"{path.name} imports machinery/"
