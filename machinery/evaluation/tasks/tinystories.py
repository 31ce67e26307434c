"""The bundled task's documents: the validation stories model_comparison.py evaluates, in its order."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the project: machinery/evaluation/tasks/ is three below it


def validation_stories(**_task_metadata):
    """{'validation': Dataset of {'text': story}}: machinery.comparison.texts.load_texts()'s stories (the
    harness passes the task's metadata as keyword arguments; none is needed)."""
    import datasets

    if str(ROOT) not in sys.path:  # the lm_eval command line, run from elsewhere
        sys.path.insert(0, str(ROOT))
    from machinery.comparison.texts import load_texts

    return datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": load_texts()})})
