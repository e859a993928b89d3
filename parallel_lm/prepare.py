"""python -m parallel_lm.prepare: text files to token shards, in parallel with Dask.

    python -m parallel_lm.prepare --input my_texts/ --tokenizer bpe:4096 --out data/mine
    python -m parallel_lm.train --data data/mine                      # streams the shards

Each input file is read by Dask in blocks of ``--block-mb`` that end at a newline, bytes exactly as on disk
(``dask.bytes.read_bytes``: no newline translation). Every block is tokenized and written as one shard
(``shards.py``) by a Dask worker: threads or processes of this machine, or the workers of a running Dask
scheduler (``--scheduler tcp://HOST:8786``; the output folder must then be one they all can write). A BPE
is first trained on the whole input, on this machine. The shards' order is the files' sorted order and the
blocks' order inside each, whatever the scheduler; a block is tokenized alone, so a BPE merge never spans two
blocks.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import click

from . import shards, tokenizer
from .tokenizer import TokenizerError

SCHEDULERS = ("threads", "processes")


def input_files(inputs, pattern: str = "*") -> list[Path]:
    """Every file of the inputs (a folder: its files matching ``pattern``, recursively), in sorted order."""
    files = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise click.BadParameter(f"{item}: no such file or folder", param_hint="--input")
        files += [path] if path.is_file() else sorted(p for p in path.rglob(pattern) if p.is_file())
    if not files:
        raise click.BadParameter(f"{', '.join(map(str, inputs))}: no files to read"
                                 + (f" matching --pattern {pattern}" if pattern != "*" else ""), param_hint="--input")
    return files


def _tokenize(block: bytes, kind: str, spec: str, folder: str, index: int) -> dict:
    """Runs on a worker: one block's tokens written as shard ``index``."""
    tok = tokenizer.ByteTokenizer() if kind == "bytes" else tokenizer.from_json(spec)
    return shards.write_shard(Path(folder), index, tok.encode(block))


def _client(scheduler: str):
    from distributed import Client
    if scheduler == "threads":
        return Client(processes=False, dashboard_address=None)
    if scheduler == "processes":
        return Client(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None)
    try:
        host, _, port = scheduler.partition("://")[2].rpartition(":")
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()  # refused: say so at once
        return Client(scheduler, timeout="10s")
    except (OSError, ValueError, TimeoutError) as e:
        raise click.BadParameter(f"cannot reach a Dask scheduler at {scheduler!r} ({e}): give threads, processes, or "
                                 "the address a running `dask scheduler` prints (tcp://HOST:8786)",
                                 param_hint="--scheduler") from None


def prepare(files: list[Path], spec: str, out: Path, scheduler: str = "threads", block_mb: float = 16.0,
            quiet: bool = False) -> dict:
    """Tokenize ``files`` into shards under ``out``; the manifest written."""
    import dask
    from dask.bytes import read_bytes
    from distributed import as_completed
    kind, vocab = tokenizer.parse(spec)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard-*.npy"):
        old.unlink()
    tok_json = ""
    if kind != "bytes":
        if kind == "bpe":  # learned from the whole input, here
            bpe = tokenizer.BPETokenizer.train((tokenizer.utf8(f.read_bytes(), str(f)) for f in files), vocab)
        else:
            bpe = tokenizer.TiktokenTokenizer.from_file(Path(spec.partition(":")[2]))
        tok_json = bpe.to_json()
        (out / tokenizer.FILE).write_text(tok_json)
        vocab = bpe.vocab_size
    _, blocks = read_bytes([str(f) for f in files], delimiter=b"\n", blocksize=int(block_mb * 2**20), sample=False)
    tasks = [dask.delayed(_tokenize)(block, kind, tok_json, str(out), i)
             for i, block in enumerate(b for per_file in blocks for b in per_file)]
    with _client(scheduler) as client:
        futures = client.compute(tasks)
        with open(os.devnull, "w") as devnull, click.progressbar(length=len(futures), label="tokenizing",
                                                                  file=devnull if quiet else None) as bar:
            for _ in as_completed(futures):
                bar.update(1)
        entries = client.gather(futures)
    kept = [e for e in entries if e["tokens"]]
    for e in entries:
        if not e["tokens"]:
            (out / e["file"]).unlink()
    total = sum(e["tokens"] for e in kept)
    if total == 0:
        raise click.BadParameter(f"{', '.join(map(str, files[:3]))}: no bytes to tokenize (empty files)",
                                 param_hint="--input")
    manifest = {"tokenizer": {"kind": kind, "vocab_size": vocab, "spec": spec},
                "dtype": str(tokenizer.token_dtype(vocab)), "tokens": total,
                "bytes": sum(f.stat().st_size for f in files), "files": len(files), "shards": kept}
    shards.write_manifest(out, manifest)
    return manifest


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--input", "inputs", multiple=True, required=True,
              help="A text file or a folder of them (read recursively); repeat for several.")
@click.option("--pattern", default="*", help="In a folder, read the files whose names match this (e.g. '*.py').")
@click.option("--tokenizer", "spec", default="bytes",
              help="bytes (vocabulary 256, any bytes); bpe:V, a byte-level BPE of V tokens trained on the input "
                   "(UTF-8 text); or tiktoken:FILE, a tiktoken BPE file you bring (cl100k_base.tiktoken; split by "
                   "the pattern of the encoding it is named after, else GPT-2's). A BPE is saved as tokenizer.json "
                   "beside the shards.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the shards and manifest.json.")
@click.option("--scheduler", default="threads",
              help="Where Dask tokenizes: threads or processes of this machine, or a running scheduler's address "
                   "(tcp://HOST:8786), whose workers must all be able to write --out.")
@click.option("--block-mb", default=16.0, type=click.FloatRange(min=0, min_open=True),
              help="Bytes per block (and per shard), ending at a newline.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(inputs, pattern, spec, out, scheduler, block_mb, quiet):
    """Tokenize text files into token shards with Dask, for python -m parallel_lm.train --data OUT."""
    try:
        tokenizer.parse(spec)
    except TokenizerError as e:
        raise click.BadParameter(str(e), param_hint="--tokenizer") from None
    files = input_files(inputs, pattern)
    folder = Path(out)
    try:
        manifest = prepare(files, spec, folder, scheduler, block_mb, quiet)
    except (TokenizerError, OSError) as e:
        raise click.ClickException(str(e)) from None
    per = manifest["bytes"] / manifest["tokens"]
    click.echo(f"wrote {len(manifest['shards'])} shard(s), {manifest['tokens']:,} tokens ({per:.2f} bytes per token) "
               f"from {manifest['files']} file(s), {manifest['bytes']:,} bytes; tokenizer "
               f"{tokenizer.describe(manifest)}; {folder / shards.MANIFEST}")
    click.echo(f"train on it: python -m parallel_lm.train --data {folder}")


if __name__ == "__main__":
    sys.exit(main())
