"""Everything a researcher never needs to open to understand or change the model: the command line, atomic
files, data loading and tokenizers, runs (devices, processes, checkpoints, logs), generation, comparison,
sweeps, evaluation and Hugging Face interop. The core is config.py, modules/, train.py and training/."""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the clone: trained/, tokenizers/, data/samples/ live here
