"""Training data: the Python standard library's own source, synthetic text, a user's files, or prepared shards.

No downloads: ``stdlib`` (the default) is every ``.py`` file under
``sysconfig.get_paths()["stdlib"]``, in sorted path order, up to
``max_bytes``, real text present wherever Python is. ``synthetic`` is a
seeded order-2 Markov chain over 16 letters (learnable structure, same
bytes everywhere). Anything else is a path: a file, or a folder whose
files are read recursively in sorted order.

Tokens are bytes (vocabulary 256), except in a folder ``python -m
parallel_lm.prepare`` wrote: its token shards, memory-mapped (``shards.py``),
with its tokenizer's vocabulary. The last ``val_fraction`` of the tokens is
the validation split.

Batches depend only on (seed, step, split), never on the rank count: the
global batch of step s is the same B windows whether 1 or 8 ranks train,
and rank r of K takes rows ``r*B/K .. (r+1)*B/K``. That is what makes
K-rank training equal 1-rank training, and resuming on another rank count
exact.
"""
from __future__ import annotations

import bisect
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import shards


class DataError(ValueError):
    """The data cannot be used; the message says what to change."""


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    return files


def _read_files(files: list[Path], max_bytes: int) -> bytes:
    chunks, total = [], 0
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {f}: {e.strerror or e}") from None
        chunks.append(data[: max_bytes - total])
        total += len(chunks[-1])
        if total >= max_bytes:
            break
    return b"".join(chunks)


def synthetic_bytes(n: int = 1 << 18, seed: int = 1234) -> bytes:
    """An order-2 Markov chain over 'a'..'p' with sparse, seeded transitions."""
    rng = np.random.default_rng(seed)
    k = 16
    probs = rng.dirichlet(np.full(k, 0.1), size=(k, k))  # (k, k, k): next-letter distribution per (prev2, prev1)
    # Python floats and bisect: the loop is sequential, and a NumPy call per byte cost 20x more (4 s of a 2-step run)
    cum = probs.cumsum(axis=2).tolist()
    out = bytearray(n)
    a, b = 0, 1
    for i, draw in enumerate(rng.random(n).tolist()):
        c = min(bisect.bisect_left(cum[a][b], draw), k - 1)  # np.searchsorted's side="left"
        out[i] = c + ord("a")
        a, b = b, c
    return bytes(out)


def load_batches(source: str, block_size: int, seed: int, max_bytes: int = 8 << 20, verify: bool = True) -> "Batches":
    """The batches of ``--data``: a prepared folder's shards (each one's SHA-256 checked with ``verify``, its
    length always), or ``load_corpus``'s bytes."""
    if shards.is_prepared(source):
        try:
            stream, _ = shards.open_folder(source, verify)
        except shards.ShardError as e:
            raise DataError(str(e)) from None
        return Batches.from_tokens(stream, block_size, seed)
    return Batches.from_bytes(load_corpus(source, max_bytes), block_size, seed)


def load_corpus(source: str, max_bytes: int = 8 << 20) -> bytes:
    """The raw bytes for ``--data``: 'stdlib', 'synthetic', or a file/folder path."""
    if source == "stdlib":
        data = _read_files(stdlib_files(), max_bytes)
    elif source == "synthetic":
        data = synthetic_bytes(min(max_bytes, 1 << 18))
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"--data {source}: no such file or folder (or use --data stdlib / --data synthetic)")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        if not files:
            raise DataError(f"--data {source}: the folder holds no files")
        data = _read_files(files, max_bytes)
    if not data:
        raise DataError(f"--data {source}: no bytes to train on (empty file or folder)")
    return data


@dataclass
class Batches:
    """Deterministic batches of (input, target) windows from one corpus."""

    train: np.ndarray  # (n_train,) uint8 bytes, or a shards.TokenStream
    val: np.ndarray
    block_size: int
    seed: int

    @classmethod
    def from_bytes(cls, data: bytes, block_size: int, seed: int, val_fraction: float = 0.1) -> "Batches":
        return cls.from_tokens(np.frombuffer(data, dtype=np.uint8), block_size, seed, val_fraction, "bytes")

    @classmethod
    def from_tokens(cls, tokens, block_size: int, seed: int, val_fraction: float = 0.1,
                    unit: str = "tokens") -> "Batches":
        """From an array of token ids, or a ``shards.TokenStream`` (read where the windows fall, never whole)."""
        window = block_size + 2  # a window of T + 1 tokens, and at least two places for it to start
        n = len(tokens)
        n_val = max(int(n * val_fraction), window)
        if n - n_val < window:
            raise DataError(f"the data has {n} {unit}, too few for --block-size {block_size} "
                            f"(need at least {2 * window}: a training and a validation split of {window} each): "
                            f"use more data or a smaller --block-size")
        return cls(train=tokens[:n - n_val], val=tokens[n - n_val:], block_size=block_size, seed=seed)

    def rows(self, step: int, split: str, global_batch: int, lo: int, hi: int):
        """Rows lo..hi of step ``step``'s global batch: (x, y) int64 tensors of shape (hi - lo, T)."""
        data = self.train if split == "train" else self.val
        rng = np.random.default_rng([self.seed, step, 0 if split == "train" else 1])
        starts = rng.integers(0, len(data) - self.block_size - 1, size=global_batch)[lo:hi]
        idx = starts[:, None] + np.arange(self.block_size + 1)  # (hi - lo, T + 1)
        window = torch.from_numpy(np.asarray(data[idx], dtype=np.int64))
        return window[:, :-1], window[:, 1:]
