"""python -m parallel_lm.prepare: text to token shards with Dask, and train --data DIR / generate on them."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import describe, mpirun
from parallel_lm import shards, tokenizer

pytest.importorskip("dask")
pytest.importorskip("tokenizers")


def prepare(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "parallel_lm.prepare", "--quiet", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A few files: Python source, a CRLF file, non-ASCII UTF-8, and an empty one."""
    folder = tmp_path_factory.mktemp("corpus")
    import json as json_module
    import os as os_module
    (folder / "a_os.py").write_bytes(open(os_module.__file__, "rb").read())
    (folder / "b_json.py").write_bytes(open(json_module.__file__, "rb").read())
    (folder / "c_crlf.txt").write_bytes(b"line one\r\nline two\r\n\r\nend\r\n" * 50)
    (folder / "d_utf8.txt").write_bytes("héllo wörld, ça va? ∑ ≈ 🙂\n".encode() * 80)
    (folder / "e_empty.txt").write_bytes(b"")
    return folder


def raw(folder):
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()))


def gpt2_byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet, read backwards: the printable character that stands for each byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), 256)]
    shifted = [b for b in range(256) if b not in keep]
    return {**{chr(b): b for b in keep}, **{chr(256 + i): b for i, b in enumerate(shifted)}}


@pytest.fixture(scope="module")
def tiktoken_file(corpus, tmp_path_factory):
    """A tiktoken BPE file written from a byte-level BPE of 400 trained on the corpus: each token's bytes in
    base64 and its id as its rank. Returns (the file, the trained BPE it came from)."""
    import base64
    pytest.importorskip("tiktoken")
    files = sorted(p for p in corpus.iterdir() if p.stat().st_size)
    bpe = tokenizer.BPETokenizer.train((p.read_text() for p in files), 400)
    byte_of = gpt2_byte_of_char()
    vocab = json.loads(bpe.to_json())["model"]["vocab"]
    lines = [f"{base64.b64encode(bytes(byte_of[c] for c in tok)).decode()} {i}" for tok, i in vocab.items()]
    path = tmp_path_factory.mktemp("vocab") / "mine.tiktoken"
    path.write_text("\n".join(lines) + "\n")
    return path, bpe


@pytest.mark.parametrize("spec", ["bytes", "bpe:400", "tiktoken"])
def test_shards_decode_to_the_input_bytes_exactly(corpus, tmp_path, spec, request):
    if spec == "tiktoken":
        spec = f"tiktoken:{request.getfixturevalue('tiktoken_file')[0]}"
    proc = prepare("--input", corpus, "--tokenizer", spec, "--out", tmp_path, "--block-mb", "0.004")
    assert proc.returncode == 0, describe(proc)
    stream, manifest = shards.open_folder(tmp_path)
    tok = tokenizer.load(tmp_path, manifest["tokenizer"]["kind"])
    assert b"".join(tok.decode(a) for a in stream.arrays) == raw(corpus)  # CRLF and UTF-8 kept, blocks joined
    assert manifest["tokens"] == len(stream) == sum(s["tokens"] for s in manifest["shards"])
    assert len(manifest["shards"]) > 5 and manifest["files"] == 5 and manifest["bytes"] == len(raw(corpus))
    assert manifest["tokenizer"]["vocab_size"] == (256 if spec == "bytes" else 400)
    assert f"{manifest['tokens']:,} tokens" in proc.stdout and "train on it" in proc.stdout


def test_a_tiktoken_file_gives_the_ids_of_the_bpe_it_was_written_from(corpus, tiktoken_file, tmp_path):
    """Two libraries, one vocabulary: tiktoken's ids under GPT-2's split pattern are the Hugging Face BPE's, shard
    by shard; generate finds the tokenizer beside a checkpoint as it finds a trained BPE's."""
    from parallel_lm.generate import load_tokenizer
    path, bpe = tiktoken_file
    proc = prepare("--input", corpus, "--tokenizer", f"tiktoken:{path}", "--out", tmp_path, "--block-mb", "0.004")
    assert proc.returncode == 0, describe(proc)
    stream, manifest = shards.open_folder(tmp_path)
    assert manifest["tokenizer"]["kind"] == "tiktoken" and "tiktoken (400 tokens)" in proc.stdout
    for ids in stream.arrays:
        text = tokenizer.load(tmp_path, "tiktoken").decode(ids)
        assert list(np.asarray(ids)) == list(bpe.encode(text))
    assert isinstance(load_tokenizer(str(tmp_path), 400), tokenizer.TiktokenTokenizer)


def test_a_tiktoken_file_named_for_an_encoding_is_cut_by_that_encodings_pattern(tiktoken_file, tmp_path):
    """cl100k_base cuts digits into runs of at most three before merging; GPT-2's pattern keeps a number whole."""
    mine = tokenizer.TiktokenTokenizer.from_file(tiktoken_file[0])
    named = tmp_path / "cl100k_base.tiktoken"
    named.write_bytes(tiktoken_file[0].read_bytes())
    cl100k = tokenizer.TiktokenTokenizer.from_file(named)
    assert cl100k.pattern != mine.pattern and mine.pattern == tokenizer.split_pattern("unknown")

    def pieces(tok, text):
        return [tok.decode([i]) for i in tok.encode(text.encode())]
    for tok in (mine, cl100k):
        assert b"".join(pieces(tok, "x = 1234567\n")) == b"x = 1234567\n"
    assert max(len(p) for p in pieces(cl100k, "1234567") if p.isdigit()) <= 3
    digits = b"".join(p for p in pieces(cl100k, "1234567"))
    assert digits == b"1234567" and len(pieces(cl100k, "1234567")) >= 3


def test_every_scheduler_writes_the_same_shards(corpus, tmp_path):
    """Threads, processes, and a Dask distributed scheduler at an address: the same shards, bit for bit."""
    from distributed import LocalCluster
    hashes = {}
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        for scheduler in ("threads", "processes", cluster.scheduler_address):
            out = tmp_path / str(len(hashes))
            proc = prepare("--input", corpus, "--tokenizer", "bpe:300", "--out", out, "--scheduler", scheduler,
                           "--block-mb", "0.004")
            assert proc.returncode == 0, describe(proc)
            hashes[scheduler] = [(s["file"], s["sha256"]) for s in json.loads((out / "manifest.json").read_text())["shards"]]
    assert len({json.dumps(h) for h in hashes.values()}) == 1, hashes


@pytest.mark.parametrize("case,message", [
    ("no-files", "no files to read"), ("empty", "no bytes to tokenize"), ("small-bpe", "more than its 256 byte tokens"),
    ("not-utf8", "is not UTF-8 text"), ("bad-spec", "use bytes, bpe:V"),
    ("no-vocab-file", "no such file"), ("not-tiktoken", "not a tiktoken BPE file"),
    ("bytes-missing", "of the 256 single bytes have no rank"),
    ("no-scheduler", "cannot reach a Dask scheduler at 'tcp://127.0.0.1:9'"), ("pattern", "no files to read matching"),
])
def test_bad_input_gets_one_clear_error(tmp_path, case, message):
    folder = tmp_path / "in"
    folder.mkdir()
    spec = {"small-bpe": "bpe:100", "not-utf8": "bpe:300", "bad-spec": "words",
            "no-vocab-file": f"tiktoken:{tmp_path / 'none.tiktoken'}"}.get(case, "bytes")
    if case in ("not-tiktoken", "bytes-missing"):
        vocab = tmp_path / "v.tiktoken"
        vocab.write_text("IQ== 0\nnot base64 at all\n" if case == "not-tiktoken" else "IQ== 0\nIg== 1\n")
        spec = f"tiktoken:{vocab}"
    if case == "empty":
        (folder / "x.txt").write_bytes(b"")
    elif case != "no-files":
        (folder / "x.txt").write_bytes(b"caf\xe9 latin-1\n" * 20)
    where = {"no-scheduler": ["--scheduler", "tcp://127.0.0.1:9"], "pattern": ["--pattern", "*.py"]}.get(case, [])
    proc = prepare("--input", folder, "--tokenizer", spec, "--out", tmp_path / "out", *where)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, describe(proc)


def test_a_stream_of_shards_gives_the_batches_the_array_gives(corpus, tmp_path):
    """Sampling is the same whatever holds the tokens, so K ranks on shards train what one process trains (the
    layout tests check the rows of any layout against one process)."""
    from parallel_lm.training.data import Batches
    assert prepare("--input", corpus, "--tokenizer", "bpe:300", "--out", tmp_path, "--block-mb", "0.004").returncode == 0
    stream, _ = shards.open_folder(tmp_path)
    whole = np.concatenate([np.asarray(a) for a in stream.arrays]).astype(np.int64)
    a, b = Batches.from_tokens(stream, 16, seed=3), Batches.from_tokens(whole, 16, seed=3)
    for step in range(3):
        for split in ("train", "val"):
            for lo, hi in ((0, 8), (3, 5)):
                xa, ya = a.rows(step, split, 8, lo, hi)
                xb, yb = b.rows(step, split, 8, lo, hi)
                assert xa.equal(xb) and ya.equal(yb)


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    proc = prepare("--input", corpus, "--tokenizer", "bpe:400", "--out", out, "--block-mb", "0.004")
    assert proc.returncode == 0, describe(proc)
    return out


def test_train_streams_the_shards_with_their_vocabulary_and_generate_decodes(prepared, tmp_path):
    args = ["-m", "parallel_lm.train", "--data", prepared, "--block-size", "32", "--steps", "3", "--eval-every", "0",
            "--global-batch-size", "8", "--quiet", "--out", tmp_path]
    proc = mpirun(2, [str(a) for a in args], timeout=180)
    assert proc.returncode == 0, describe(proc)
    assert "vocab_size=400" in proc.stdout and "val tokens" in proc.stdout and "nats/token" in proc.stdout
    assert (tmp_path / "tokenizer.json").read_text() == (prepared / "tokenizer.json").read_text()
    gen = mpirun(1, ["-m", "parallel_lm.generate", "--ckpt", str(tmp_path), "--prompt", "import ",
                     "--max-new-tokens", "5"], timeout=60)
    assert gen.returncode == 0 and gen.stdout.startswith("import "), describe(gen)


def test_a_shard_that_does_not_match_its_manifest_stops_training(prepared, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    shard = copy / json.loads((copy / "manifest.json").read_text())["shards"][1]["file"]
    ids = np.load(shard)
    ids[0] = (ids[0] + 1) % 400
    np.save(shard, ids)
    proc = mpirun(2, ["-m", "parallel_lm.train", "--data", str(copy), "--steps", "1", "--block-size", "16"], timeout=60)
    assert proc.returncode != 0 and "does not match manifest.json" in proc.stderr, describe(proc)
