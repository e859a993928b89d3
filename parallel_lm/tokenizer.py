"""Tokenizers: bytes, a byte-level BPE trained here on the user's own text, or a tiktoken vocabulary file the
user brings. Nothing is downloaded.

- ``bytes``: a token is a byte (vocabulary 256); every file round-trips exactly.
- ``bpe:V``: a byte-level BPE of V tokens (Sennrich et al. 2016; GPT-2's byte-level alphabet, so every text
  has an encoding), trained with Hugging Face ``tokenizers`` on the input itself.
- ``tiktoken:FILE``: the ranks of a tiktoken BPE file (each line: a token's bytes in base64, its rank), as
  tiktoken's own downloads are (``cl100k_base.tiktoken``). Text is cut by the split pattern of the encoding
  the file is named after (cl100k_base, o200k_base, r50k_base, p50k_base, as tiktoken defines them); a file of
  another name by GPT-2's, which is also what ``bpe:V`` cuts by. Special tokens are not used: text that spells
  ``<|endoftext|>`` is encoded as the plain text it is.

A BPE of either kind is saved as ``tokenizer.json`` beside the shards (Hugging Face's format, or
``{"tiktoken": ...}`` holding the pattern and the ranks) and a run copies it beside its checkpoint. Text must
be UTF-8; it round-trips exactly. ``tokenizers`` and ``tiktoken`` are the ``data`` extra, imported only when
used.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

FILE = "tokenizer.json"  # a BPE's file, in a prepared folder and beside a run's checkpoint
MIN_BPE = 256  # the byte-level alphabet: a BPE has at least one token per byte


class TokenizerError(ValueError):
    """The tokenizer cannot be built or used; the message says what to change."""


def parse(spec: str) -> tuple[str, int]:
    """``bytes``, ``bpe:V`` or ``tiktoken:FILE`` -> (kind, vocabulary size: 0 for a file, read later);
    TokenizerError naming the fix."""
    if spec == "bytes":
        return "bytes", 256
    kind, _, size = spec.partition(":")
    if kind == "tiktoken":
        if not Path(size).is_file():
            raise TokenizerError(f"--tokenizer {spec}: no such file; give a tiktoken BPE file "
                                 "(tiktoken:cl100k_base.tiktoken)")
        return "tiktoken", 0
    if kind != "bpe" or not size.isdigit():
        raise TokenizerError(f"--tokenizer {spec!r}: use bytes, bpe:V for a byte-level BPE of V tokens (bpe:4096), "
                             "or tiktoken:FILE for a tiktoken vocabulary file")
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


class TiktokenTokenizer:
    kind = "tiktoken"

    def __init__(self, name: str, pattern: str, ranks: dict[bytes, int]):
        import tiktoken
        self.name, self.pattern, self.ranks = name, pattern, ranks
        self.enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        self.vocab_size = max(ranks.values()) + 1

    @classmethod
    def from_file(cls, path: Path) -> "TiktokenTokenizer":
        """A tiktoken BPE file's ranks; the split pattern of the encoding its name says (module docstring)."""
        path = Path(path)
        ranks = {}
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise TokenizerError(f"{path}, line {number}: not a tiktoken BPE file, whose lines are a token's "
                                     f"bytes in base64 and its rank ({line[:40]!r})") from None
        missing = 256 - len({t for t in ranks if len(t) == 1})
        if missing:
            raise TokenizerError(f"{path}: {missing} of the 256 single bytes have no rank, so some text could not be "
                                 "encoded: a byte-level BPE file lists every byte")
        name = path.name.split(".")[0]
        return cls(name, split_pattern(name), ranks)

    @classmethod
    def from_dict(cls, d: dict) -> "TiktokenTokenizer":
        return cls(d["name"], d["pattern"], {base64.b64decode(t): r for t, r in d["ranks"]})

    def to_json(self) -> str:
        ranks = [[base64.b64encode(t).decode(), r] for t, r in sorted(self.ranks.items(), key=lambda kv: kv[1])]
        return json.dumps({"tiktoken": {"name": self.name, "pattern": self.pattern, "ranks": ranks}})

    def encode(self, data: bytes) -> np.ndarray:
        return np.asarray(self.enc.encode_ordinary(utf8(data)), dtype=token_dtype(self.vocab_size))

    def decode(self, ids) -> bytes:
        return self.enc.decode_bytes([int(i) for i in ids])


def split_pattern(name: str) -> str:
    """The regex tiktoken cuts text by for its encoding ``name``; GPT-2's for a name it does not define."""
    from tiktoken_ext import openai_public
    make = openai_public.ENCODING_CONSTRUCTORS.get(name)
    if make is None or name == "gpt2":
        return openai_public.r50k_pat_str
    # tiktoken states each pattern only inside its encoding's constructor, beside a download of the ranks:
    # the constructor is called with the download replaced by an empty table, for the pattern alone.
    download = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = lambda *args, **kwargs: {}
    try:
        return make()["pat_str"]
    finally:
        openai_public.load_tiktoken_bpe = download


def from_json(text: str):
    """A saved BPE: tiktoken's (our ``{"tiktoken": ...}``) or Hugging Face's tokenizer.json."""
    saved = json.loads(text)
    return TiktokenTokenizer.from_dict(saved["tiktoken"]) if "tiktoken" in saved else BPETokenizer.from_json(text)


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
    return from_json(path.read_text())


def describe(manifest: dict) -> str:
    t = manifest["tokenizer"]
    return f"{t['kind']} ({t['vocab_size']} tokens)"
