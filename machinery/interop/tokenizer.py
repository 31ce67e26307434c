"""Our tokenizers as a Hugging Face `tokenizers` tokenizer.json (+ tokenizer_config.json), with our exact ids.

What makes the ids identical:
- sentencepiece BPE encodes by repeatedly merging the adjacent pair whose concatenation is in the vocabulary
  with the highest score. A `tokenizers` BPE does the same given every such pair as a merge, ranked by the score
  of what it makes. No normalizer and no pre-tokenizer: the text is one sequence, as for sentencepiece.
- sentencepiece writes a space as '▁'. The exported vocabulary holds a real space instead, so a literal '▁' in
  the text is no piece and falls back to its three bytes -- what machinery/data/tokenizer.py does too.
- byte fallback: characters with no piece become <0xNN> tokens (the byte tokenizer is nothing but those).
- bos is added in front, as training documents and inference.py's prompts have it; eos is not.
  `add_special_tokens=False` gives exactly our encode(). Special-token text such as "<s>" inside the input is
  ordinary text (split_special_tokens), as for us.
- decoding: byte tokens are joined and read as UTF-8; `skip_special_tokens=True` drops bos/eos/pad as we do.
"""
from __future__ import annotations

from pathlib import Path

from machinery.data.tokenizer import ByteTokenizer, SentencePieceTokenizer, Tokenizer

SPACE = "\u2581"  # sentencepiece's space


def build(tokenizer: Tokenizer):
    """A `tokenizers.Tokenizer` that encodes and decodes as `tokenizer` does."""
    try:
        from tokenizers import AddedToken, decoders, models, processors
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        raise ValueError("exporting a tokenizer needs the tokenizers package: pip install transformers") from None

    if isinstance(tokenizer, ByteTokenizer):
        specials = {"<s>": tokenizer.bos_id, "</s>": tokenizer.eos_id, "<pad>": tokenizer.pad_id}
        vocab = {**{f"<0x{b:02X}>": b for b in range(256)}, **specials}
        merges, unk = [], None
    elif isinstance(tokenizer, SentencePieceTokenizer):
        vocab, merges, specials = _sentencepiece_vocab(tokenizer)
        unk = tokenizer.sp.id_to_piece(tokenizer.sp.unk_id())
        specials[unk] = tokenizer.sp.unk_id()
    else:
        raise ValueError(f"cannot export tokenizer {tokenizer.name!r} of type {type(tokenizer).__name__}")
    hf = HFTokenizer(models.BPE(vocab, merges, unk_token=unk, byte_fallback=True, fuse_unk=False))
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    bos, eos = _name(specials, tokenizer.bos_id), _name(specials, tokenizer.eos_id)
    hf.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {eos} {bos}:1 $B:1",
        special_tokens=[(bos, tokenizer.bos_id), (eos, tokenizer.eos_id)])
    return hf


def _name(specials: dict, token_id: int) -> str:
    return next(name for name, i in specials.items() if i == token_id)


def _sentencepiece_vocab(tokenizer: SentencePieceTokenizer) -> tuple[dict, list, dict]:
    """(vocab {piece: id}, merges [(left, right)] best first, special pieces {piece: id})."""
    sp = tokenizer.sp
    vocab, specials, normal = {}, {}, {}
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if sp.is_control(i):
            specials[piece] = i
        elif not sp.is_byte(i) and not sp.is_unknown(i):
            piece = piece.replace(SPACE, " ")
            normal[piece] = i
        if piece in vocab:
            raise ValueError(f"{tokenizer.model_path}: piece {piece!r} appears twice; cannot export it")
        vocab[piece] = i
    scored = sorted(normal, key=lambda p: (-sp.get_score(normal[p]), normal[p]))
    merges = [(p[:j], p[j:]) for p in scored if len(p) > 1
              for j in range(1, len(p)) if p[:j] in normal and p[j:] in normal]
    return vocab, merges, specials


def tokenizer_config(tokenizer: Tokenizer, max_len: int) -> dict:
    """tokenizer_config.json: the generic fast tokenizer (no custom code), our special tokens, no cleanup."""
    names = {"bos_token": tokenizer.bos_id, "eos_token": tokenizer.eos_id, "pad_token": tokenizer.pad_id}
    if isinstance(tokenizer, SentencePieceTokenizer):
        names["unk_token"] = tokenizer.sp.unk_id()
    hf = build(tokenizer)
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
            **{key: hf.id_to_token(i) for key, i in names.items()},
            "clean_up_tokenization_spaces": False, "split_special_tokens": True}


def write(tokenizer: Tokenizer, out_dir: Path, max_len: int) -> None:
    """tokenizer.json and tokenizer_config.json in out_dir (a fresh folder: plain writes)."""
    import json
    out_dir = Path(out_dir)
    # to_str + a Python write (not .save): a full disk is then an OSError that export reports in one line
    (out_dir / "tokenizer.json").write_text(build(tokenizer).to_str(pretty=True), encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tokenizer, max_len), indent=2) + "\n")
