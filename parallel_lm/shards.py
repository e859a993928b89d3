"""Token shards on disk: what ``prepare`` writes and ``train --data DIR`` streams.

A prepared folder holds ``shard-NNNNN.npy`` files (one NumPy array of token ids each, the narrowest unsigned
type for the vocabulary), ``manifest.json`` (the tokenizer, and each shard's file, token count and SHA-256)
and, for a BPE, ``tokenizer.json``. ``open_folder`` checks every shard against the manifest and returns a
``TokenStream``: the shards end to end, memory-mapped, so a corpus larger than memory trains with memory flat.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
FORMAT = 1


class ShardError(ValueError):
    """A prepared folder that cannot be used; the message says what to change."""


def is_prepared(source: str) -> bool:
    return Path(source, MANIFEST).is_file()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_shard(folder: Path, index: int, ids: np.ndarray) -> dict:
    """Write ``ids`` as shard ``index``; its manifest entry."""
    path = Path(folder) / f"shard-{index:05d}.npy"
    np.save(path, ids, allow_pickle=False)
    return {"file": path.name, "tokens": int(ids.size), "sha256": sha256(path)}


def write_manifest(folder: Path, manifest: dict) -> None:
    """Atomically: a reader sees the old manifest or the new one, never half of one."""
    path = Path(folder) / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **manifest}, indent=1) + "\n")
    os.replace(tmp, path)


def read_manifest(folder) -> dict:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ShardError(f"{path}: cannot read the manifest ({e}); prepare the data again") from None
    if manifest.get("format") != FORMAT or not manifest.get("shards"):
        raise ShardError(f"{path}: not a manifest this version writes, or no shards; prepare the data again")
    return manifest


class TokenStream:
    """The shards end to end as one sequence of token ids: ``len``, ``[lo:hi]`` (a narrower stream) and
    ``[index_array]`` (the ids there, as int64)."""

    def __init__(self, arrays: list, lo: int = 0, hi: int | None = None):
        self.arrays = arrays
        self.starts = np.cumsum([0] + [len(a) for a in arrays])  # (shards + 1,)
        self.lo, self.hi = lo, int(self.starts[-1]) if hi is None else hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, key):
        if isinstance(key, slice):
            lo, hi, _ = key.indices(len(self))
            return TokenStream(self.arrays, self.lo + lo, self.lo + hi)
        index = np.asarray(key, dtype=np.int64) + self.lo
        shard = np.searchsorted(self.starts, index, side="right") - 1
        out = np.empty(index.shape, dtype=np.int64)
        for s in np.unique(shard):
            where = shard == s
            out[where] = self.arrays[s][index[where] - self.starts[s]]
        return out


def open_folder(folder, verify: bool = True) -> tuple[TokenStream, dict]:
    """(the folder's tokens, its manifest), each shard checked against the manifest: its length always, its
    SHA-256 with ``verify``."""
    manifest = read_manifest(folder)
    arrays = []
    for entry in manifest["shards"]:
        path = Path(folder) / entry["file"]
        try:
            ids = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ShardError(f"{path}: cannot read the shard ({e}); prepare the data again") from None
        if ids.ndim != 1 or ids.size != entry["tokens"] or (verify and sha256(path) != entry["sha256"]):
            raise ShardError(f"{path} does not match {MANIFEST} (its tokens or its SHA-256 differ): the shard "
                             "changed after it was written; prepare the data again")
        arrays.append(ids)
    stream = TokenStream(arrays)
    if len(stream) == 0:
        raise ShardError(f"{folder}: the prepared corpus holds no tokens")
    return stream, manifest
