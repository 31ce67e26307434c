"""Data layer: tokenizers (machinery/data/tokenizer.py), document sources, pre-tokenization and batching."""
