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


@pytest.mark.parametrize("spec", ["bytes", "bpe:400"])
def test_shards_decode_to_the_input_bytes_exactly(corpus, tmp_path, spec):
    proc = prepare("--input", corpus, "--tokenizer", spec, "--out", tmp_path, "--block-mb", "0.004")
    assert proc.returncode == 0, describe(proc)
    stream, manifest = shards.open_folder(tmp_path)
    tok = tokenizer.load(tmp_path, manifest["tokenizer"]["kind"])
    assert b"".join(tok.decode(a) for a in stream.arrays) == raw(corpus)  # CRLF and UTF-8 kept, blocks joined
    assert manifest["tokens"] == len(stream) == sum(s["tokens"] for s in manifest["shards"])
    assert len(manifest["shards"]) > 5 and manifest["files"] == 5 and manifest["bytes"] == len(raw(corpus))
    assert manifest["tokenizer"]["vocab_size"] == (256 if spec == "bytes" else 400)
    assert f"{manifest['tokens']:,} tokens" in proc.stdout and "train on it" in proc.stdout


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
    ("not-utf8", "is not UTF-8 text"), ("bad-spec", "use bytes, or bpe:V"),
    ("no-scheduler", "cannot reach a Dask scheduler at 'tcp://127.0.0.1:9'"), ("pattern", "no files to read matching"),
])
def test_bad_input_gets_one_clear_error(tmp_path, case, message):
    folder = tmp_path / "in"
    folder.mkdir()
    spec = {"small-bpe": "bpe:100", "not-utf8": "bpe:300", "bad-spec": "words"}.get(case, "bytes")
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
