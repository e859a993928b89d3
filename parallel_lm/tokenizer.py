"""Tokenizers: bytes, or a byte-level BPE trained here on the user's own text. Nothing is downloaded.

- ``bytes``: a token is a byte (vocabulary 256); every file round-trips exactly.
- ``bpe:V``: a byte-level BPE of V tokens (Sennrich et al. 2016; GPT-2's byte-level alphabet, so every text
  has an encoding), trained with Hugging Face ``tokenizers`` on the input itself and saved as
  ``tokenizer.json`` beside the shards. Text must be UTF-8; it round-trips exactly.

``tokenizers`` is the ``data`` extra; it is imported only for ``bpe``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FILE = "tokenizer.json"  # a BPE's file, in a prepared folder and beside a run's checkpoint
MIN_BPE = 256  # the byte-level alphabet: a BPE has at least one token per byte


class TokenizerError(ValueError):
    """The tokenizer cannot be built or used; the message says what to change."""


def parse(spec: str) -> tuple[str, int]:
    """``bytes`` or ``bpe:V`` -> (kind, vocabulary size); TokenizerError naming the fix."""
    if spec == "bytes":
        return "bytes", 256
    kind, _, size = spec.partition(":")
    if kind != "bpe" or not size.isdigit():
        raise TokenizerError(f"--tokenizer {spec!r}: use bytes, or bpe:V for a byte-level BPE of V tokens (bpe:4096)")
    if int(size) <= MIN_BPE:
        raise TokenizerError(f"--tokenizer {spec}: a byte-level BPE needs more than its {MIN_BPE} byte tokens: "
                             f"use bpe:V with V > {MIN_BPE} (for example bpe:4096)")
    return "bpe", int(size)


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every token id."""
    return np.dtype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class ByteTokenizer:
    kind, vocab_size = "bytes", 256

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8)

    def decode(self, ids) -> bytes:
        return bytes(int(i) for i in ids)


class BPETokenizer:
    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, texts, vocab_size: int) -> "BPETokenizer":
        """A byte-level BPE of ``vocab_size`` tokens learned from ``texts`` (an iterable of str)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=[], show_progress=False)
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def from_json(cls, text: str) -> "BPETokenizer":
        from tokenizers import Tokenizer
        return cls(Tokenizer.from_str(text))

    def to_json(self) -> str:
        return self.tok.to_str()

    def encode(self, data: bytes) -> np.ndarray:
        ids = self.tok.encode(utf8(data)).ids
        return np.asarray(ids, dtype=token_dtype(self.vocab_size))

    def decode(self, ids) -> bytes:
        return self.tok.decode([int(i) for i in ids]).encode("utf-8")


def utf8(data: bytes, where: str = "the input") -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{where} is not UTF-8 text (byte {e.start}): a BPE tokenizes text; use "
                             "--tokenizer bytes for arbitrary bytes") from None


def load(folder: Path, kind: str):
    """The tokenizer a prepared folder (or a run's --out folder) names: its ``tokenizer.json`` for a BPE."""
    if kind == "bytes":
        return ByteTokenizer()
    path = Path(folder) / FILE
    if not path.is_file():
        raise TokenizerError(f"{folder}: the BPE's {FILE} is missing; prepare the data again")
    return BPETokenizer.from_json(path.read_text())


def describe(manifest: dict) -> str:
    t = manifest["tokenizer"]
    return f"{t['kind']} ({t['vocab_size']} tokens)"
