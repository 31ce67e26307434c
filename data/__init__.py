"""Data layer: tokenizers (data/tokenizer.py), document sources, pre-tokenization and batching."""
