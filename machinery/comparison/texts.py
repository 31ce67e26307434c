"""Validation texts for the evaluation: the sample bundled with the project unless a file is given."""
from __future__ import annotations

import json
from pathlib import Path

from machinery import PROJECT_ROOT

DEFAULT_VAL_DATA = "data/samples/tinystories/validation.jsonl"  # relative to the project folder


def resolve_val_data(source: str | Path | None) -> Path | str:
    """A path as given when it exists from the current directory; a relative one that does not is looked
    up in the project folder (so the default works from anywhere). Hub names pass through."""
    source = DEFAULT_VAL_DATA if source is None else source
    path = Path(source).expanduser()
    if not path.exists() and not path.is_absolute() and (PROJECT_ROOT / path).exists():
        return PROJECT_ROOT / path
    return path if path.exists() else str(source)


def load_texts(source: str | Path | None = None, max_texts: int | None = None, text_field: str = "text",
               val_fraction: float = 0.05) -> list[str]:
    """Validation texts in a fixed order, the first max_texts of them (default source: the bundled
    TinyStories validation stories).

    A .jsonl file (one JSON object per line, text in text_field) or .json file (a list of such objects or
    of strings) is taken whole as the validation texts. Anything else (a .txt or .parquet file, a folder,
    a hub name) goes through the data layer's validation split, as training saw it: its own validation
    split, else the held-out val_fraction (for one .txt file: the last val_fraction of the text)."""
    if max_texts is not None and max_texts < 1:
        raise ValueError(f"max_texts={max_texts} must be >= 1")
    shown = DEFAULT_VAL_DATA if source is None else source
    source = resolve_val_data(source)
    path = Path(source)
    try:
        if path.is_file() and path.suffix in (".jsonl", ".json"):
            texts = _read_json_texts(path, text_field, max_texts)
        else:
            from machinery.data.sources import iter_documents
            texts = []
            for text in iter_documents(str(source), split="validation", text_field=text_field,
                                       val_fraction=val_fraction):
                texts.append(text)
                if max_texts is not None and len(texts) >= max_texts:
                    break
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"cannot read validation texts from {shown}: {e}") from None
    texts = [t for t in texts if t][:max_texts]
    if not texts:
        raise ValueError(f"no validation texts in {shown}")
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
