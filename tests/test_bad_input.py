"""Every command line refuses bad input the same way: exit 2, one message naming the option or file, no traceback.

One row per bad input: the rank count, the arguments ({name} stands for a
prepared bad file below) and a piece of the message that must name the
option or file. Each run must end on its own within TIME_LIMIT seconds
(validation happens before any model is built), print that message once
(every rank stops, rank 0 speaks) and exit 2.

Rows on several ranks, and the first row of each command, run as processes
of their own under mpiexec. The other one-rank rows run one after another
in one launch (conftest's runs marker): the same command, the same message
and exit code, without 110 Python processes starting up.
"""
import os
import time

import pytest

from conftest import describe, mpirun

TIME_LIMIT = 60
T = ["-m", "parallel_lm.train", "--steps", "1", "--quiet", "--eval-every", "0", "--eval-batches", "1", "--data",
     "synthetic"]
G, B, S, P = (["-m", f"parallel_lm.{c}"] for c in ("generate", "bench", "simulate", "predict"))
C, PL, E = ["-m", "parallel_lm.calibrate"], ["-m", "parallel_lm.plot"], ["-m", "parallel_lm.elastic"]

CASES = [
    # elastic: the launcher that restarts a failed job
    (1, E + ["--ranks", "2", "--", "--steps", "2"], "including --out DIR"),
    (1, E + ["--ranks", "2", "--min-ranks", "3", "--", "--out", "x"], "--min-ranks 3 is more than --ranks 2"),
    (1, E + ["--ranks", "0", "--", "--out", "x"], "'--ranks'"),
    # train: numbers
    (1, T + ["--lr", "nan"], "--lr nan must be a finite number > 0"),
    (1, T + ["--lr", "-1"], "--lr -1.0 must be"),
    (1, T + ["--lr", "inf"], "--lr inf must be"),
    (1, T + ["--min-lr", "-0.1"], "--min-lr -0.1 must be"),
    (1, T + ["--weight-decay", "-0.5"], "--weight-decay -0.5 must be a finite number >= 0"),
    (1, T + ["--grad-clip", "-1"], "--grad-clip -1.0 must be a finite number >= 0 (0 turns clipping off)"),
    (1, T + ["--grad-clip", "nan"], "--grad-clip nan"),
    (1, T + ["--bucket-mb", "0"], "--bucket-mb 0.0 must be"),
    (1, T + ["--bucket-mb", "nan"], "--bucket-mb nan must be"),
    (1, T + ["--data-max-mb", "0"], "'--data-max-mb'"),
    (1, T + ["--steps", "-1"], "'--steps'"),
    (1, T + ["--global-batch-size", "0"], "'--global-batch-size'"),
    (1, T + ["--seed", "abc"], "'--seed'"),
    (1, T + ["--threads", "0"], "'--threads'"),
    (1, T + ["--eval-batches", "0"], "'--eval-batches'"),
    (1, T + ["--staleness", "-2"], "'--staleness'"),
    (1, T + ["--zero", "4"], "'--zero'"),
    (1, T + ["--recompute", "some"], "'--recompute'"),
    (1, T + ["--virtual-stages", "0"], "'--virtual-stages'"),
    (1, T + ["--peak-tflops", "0"], "'--peak-tflops'"),
    (1, T + ["--tp", "0"], "'--tp'"),
    # train: choices and combinations
    (1, T + ["--preset", "huge"], "'--preset'"),
    (1, T + ["--allreduce", "magic"], "unknown --allreduce 'magic'"),
    (1, T + ["--sequence-parallel"], "use it with --tp 2 or more"),
    (2, T + ["--tp", "2", "--sequence-parallel", "--block-size", "63"], "use a --block-size that is a multiple of 2"),
    (2, T + ["--cp", "2", "--block-size", "30"], "use a --block-size that is a multiple of 4"),
    (3, T + ["--cp", "2"], "--cp 2 must divide the 3 ranks left after --tp 1 x --pp 1"),
    (2, T + ["--cp", "2", "--tp", "4", "--sequence-parallel", "--block-size", "36"],
     "equal part of the 18 tokens a context rank holds: use a --block-size that is a multiple of 8"),
    (2, T + ["--cp", "2", "--n-experts", "2"], "not yet with --n-experts"),
    (2, T + ["--arch", "llama", "--tp", "2", "--n-kv-head", "1"], "--tp 2 must divide --n-kv-head 1"),
    (1, T + ["--cp", "0"], "'--cp'"),
    (1, T + ["--ep", "0"], "'--ep'"),
    # train: experts
    (1, T + ["--n-experts", "4", "--top-k", "5"], "--top-k 5 must be between 1 and --n-experts 4"),
    (2, T + ["--n-experts", "4", "--ep", "3"], "--ep 3 must divide --n-experts 4"),
    (3, T + ["--n-experts", "4", "--ep", "2"], "--ep 2 must divide the 3 data-parallel ranks"),
    (2, T + ["--ep", "2"], "give the model experts with --n-experts E"),
    (2, T + ["--n-experts", "4", "--tp", "2"], "not yet with --tp, --pp, --recompute full or --sync ps"),
    (2, T + ["--n-experts", "4", "--ep", "2", "--zero", "1"], "without --zero or --engine torch-ddp"),
    (1, T + ["--n-experts", "2", "--zero", "3"], "use --zero 1 or 2 with --n-experts"),
    (2, T + ["--n-experts", "4", "--ep", "2", "--alltoall", "ring"], "unknown --alltoall 'ring'; valid: pairwise"),
    (1, T + ["--n-experts", "4", "--capacity-factor", "-1"], "--capacity-factor -1.0 must be a finite number >= 0"),
    (1, T + ["--engine", "nccl"], "'--engine'"),
    (1, T + ["--precision", "fp8"], "'--precision'"),
    (1, T + ["--optimizer", "lion"], "'--optimizer'"),
    (1, T + ["--sync", "gossip"], "'--sync'"),
    (1, T + ["--schedule", "zigzag"], "'--schedule'"),
    (1, T + ["--device", "cuda"], "--device cuda but torch sees no CUDA device"),
    (1, T + ["--straggler", "0:x"], "--straggler '0:x'"),
    (1, T + ["--straggler", "5:2"], "--straggler '5:2'"),
    (1, T + ["--straggler", "0:0.5"], "--straggler '0:0.5'"),
    (1, T + ["--ps-updates", "5"], "--ps-updates is an update budget for --sync ps"),
    (1, T + ["--trace"], "--trace needs --out"),
    (1, T + ["--netem", "alpha=x"], "--netem: bad profile 'alpha=x'"),
    (1, T + ["--netem", "eth-10g", "--engine", "torch-ddp"], "--netem delays the explicit collectives"),
    (1, T + ["--predict", "nonexistent-profile"], "no profile 'nonexistent-profile'"),
    (1, T + ["--predict", "{broken_json}"], "broken.json is not valid JSON"),
    (1, T + ["--n-head", "3"], "--n-embd 64 is not divisible by --n-head 3"),
    (1, T + ["--micro-batch-size", "5"], "micro-batch 5"),
    (1, T + ["--micro-batches", "40"], "--micro-batches 40 needs at least 40 sequences"),
    (1, T + ["--micro-batches", "2", "--micro-batch-size", "4"], "give --micro-batches or --micro-batch-size"),
    # train: memory
    (1, T + ["--block-size", "100000"], "lower --micro-batch-size"),
    (1, T + ["--preset", "gpt2", "--global-batch-size", "4096"], "GiB are available"),
    # train: files
    (1, T + ["--data", "{empty}"], "empty.txt: no bytes to train on"),
    (1, T + ["--data", "{short}"], "too few for --block-size 64"),
    (1, T + ["--data", "{missing}"], "missing.txt: no such file or folder"),
    (1, T + ["--data", "{folder_of_one_byte}"], "too few for --block-size 64"),
    (1, T + ["--data", "{empty_folder}"], "the folder holds no files"),
    (1, T + ["--data", "/proc/self/mem"], "cannot read /proc/self/mem"),  # unreadable, even for root
    (1, T + ["--out", "{empty}"], "'--out'"),
    (1, T + ["--resume", "{missing}"], "no checkpoint at"),
    (1, T + ["--resume", "{truncated}"], "is not a readable checkpoint"),
    (1, T + ["--resume", "{binary_ckpt}"], "is not a readable checkpoint"),
    (1, T + ["--resume", "{not_ckpt}"], "is not a parallel_lm checkpoint"),
    (1, T + ["--resume", "{run}", "--n-layer", "3"], "--n-layer 3 does not match the checkpoint's 1"),
    (1, T + ["--resume", "{other_model}"], "its model does not match its own config"),
    (2, T + ["--resume", "{other_model}"], "its model does not match its own config"),
    (1, T + ["--resume", "{run}", "--preset", "small"], "--preset small does not match the checkpoint's model"),
    # train under MPI: wrong layouts, every rank stops
    (2, T + ["--tp", "2", "--n-head", "1", "--n-embd", "64"], "--tp 2 must divide the 1 attention heads"),
    (3, T + ["--pp", "2"], "3 ranks do not split into --tp 1 x --pp 2"),
    (2, T + ["--pp", "2", "--n-layer", "3"], "--pp 2 must divide the 3 layers"),
    (2, T + ["--dp", "3"], "--dp 3 x --tp 1 x --pp 1 = 3, but the job has 2 ranks"),
    (3, T + ["--global-batch-size", "32", "--micro-batch-size", "4"], "split them with --micro-batches"),
    (3, T + ["--global-batch-size", "2"], "--global-batch-size 2 is smaller than the 3 data-parallel ranks"),
    (3, T + ["--global-batch-size", "7", "--micro-batches", "3"], "--micro-batches 3 needs at least 3 sequences"),
    (2, T + ["--pp", "2", "--engine", "torch-ddp"], "--engine torch-ddp with --pp > 1"),
    (2, T + ["--zero", "1", "--engine", "torch-ddp"], "use --engine explicit"),
    (2, T + ["--zero", "1", "--dp-sync", "naive"], "drop --dp-sync naive"),
    (2, T + ["--zero", "3", "--engine", "torch-ddp"], "use --engine explicit"),
    (2, T + ["--virtual-stages", "2"], "--virtual-stages 2 cuts each pipeline rank's layers into chunks: it needs --pp 2"),
    (2, T + ["--virtual-stages", "2", "--pp", "2", "--micro-batches", "2"], "--n-layer 2 is not divisible by --pp 2 x "
     "--virtual-stages 2"),
    (2, T + ["--virtual-stages", "2", "--pp", "2", "--n-layer", "4", "--micro-batches", "3", "--global-batch-size", "6"],
     "use --micro-batches (or --micro-batch-size) giving a multiple of 2"),
    (2, T + ["--virtual-stages", "2", "--pp", "2", "--n-layer", "4", "--micro-batches", "2", "--schedule", "gpipe"],
     "drop --schedule gpipe"),
    (2, T + ["--sync", "ps", "--servers", "2"], "--servers 2 on 2 ranks leaves no worker"),
    (2, T + ["--sync", "ps", "--tp", "2"], "--sync ps shards the whole model"),
    (3, T + ["--sync", "ps", "--staleness", "1", "--global-batch-size", "5"], "--global-batch-size 5 is not "
     "divisible by the 2 parameter-server workers, and an asynchronous server"),
    (2, T + ["--data", "{short}"], "too few for --block-size 64"),
    (2, T + ["--resume", "{truncated}"], "is not a readable checkpoint"),
    # generate
    (1, G + ["--ckpt", "{missing}"], "'--ckpt'"),
    (1, G + ["--ckpt", "{truncated}"], "is not a readable checkpoint"),
    (1, G + ["--ckpt", "{binary_ckpt}"], "is not a readable checkpoint"),
    (1, G + ["--ckpt", "{empty_folder}"], "no checkpoint at"),
    (1, G + ["--ckpt", "{other_model}"], "its model does not match its own config"),
    (1, G + ["--ckpt", "{run}", "--temperature", "nan"], "--temperature: nan is not a finite number"),
    (1, G + ["--ckpt", "{run}", "--temperature", "-1"], "'--temperature'"),
    (1, G + ["--ckpt", "{run}", "--top-k", "0"], "'--top-k'"),
    (1, G + ["--ckpt", "{run}", "--max-new-tokens", "0"], "'--max-new-tokens'"),
    # bench
    (1, B + ["--op", "gather"], "'--op'"),
    (4, B + ["-a", "hierarchical", "--ranks-per-node", "3"], "--ranks-per-node 3 does not divide the 4 ranks"),
    (4, B + ["--ranks-per-node", "2", "--rails", "3"], "--rails 3 must divide the 2 ranks per node"),
    (2, B + ["--netem", "alpha=1,beta=1,inter_alpha=1"], "and for two levels also inter_alpha"),
    (1, B + ["-a", "magic"], "unknown allreduce algorithm magic"),
    (1, B + ["-b", "12Q"], "cannot read size '12Q'"),
    (1, B + ["-b", "1M", "-e", "1K"], "need 0 < min-bytes <= max-bytes"),
    (1, B + ["-f", "1"], "--factor must be > 1"),
    (1, B + ["-f", "nan"], "--factor must be > 1"),
    (1, B + ["-d", "int8"], "unknown dtype int8"),
    (1, B + ["-n", "0"], "'--iters'"),
    (1, B + ["--netem", "nope"], "--netem: no profile 'nope'"),
    (1, B + ["--op", "pingpong"], "--op pingpong needs at least 2 ranks"),
    (1, B + ["--json", "{empty_folder}"], "'--json'"),
    (2, B + ["-a", "magic"], "unknown allreduce algorithm magic"),
    # simulate
    (1, S + ["-r", "0"], "0 ranks: need at least 1"),
    (1, S + ["-r", "x"], "ranks"),
    (1, S + ["-s", "-5"], "cannot read size '-5'"),
    (1, S + ["-p", "nope"], "no profile 'nope'"),
    (1, S + ["-p", "{broken_json}"], "broken.json is not valid JSON"),
    (1, S + ["-p", "{binary}"], "--profile"),
    (1, S + ["-a", "magic"], "unknown allreduce algorithm magic"),
    (1, S + ["--json", "{empty_folder}"], "'--json'"),
    # predict
    (1, P + ["--tp", "3"], "is not divisible by --tp 3"),
    (1, P + ["-r", "0"], "0 ranks: need at least 1"),
    (1, P + ["--device", "tpu"], "no device 'tpu'"),
    (1, P + ["-p", "{empty}"], "empty.txt is not valid JSON"),
    (1, P + ["--mfu", "2"], "'--mfu'"),
    (1, P + ["--n-embd", "100", "--n-head", "3"], "--n-embd 100 is not divisible by --n-head 3"),
    (1, P + ["--global-batch-size", "7", "-r", "2"], "--global-batch-size 7 does not split"),
    (1, P + ["--cp", "2", "--device", "1e12"], "are priced by the GPU model"),
    (1, P + ["--cp", "3", "--seq-len", "100", "-r", "3"], "use a --seq-len that is a multiple of 6"),
    (1, P + ["--n-experts", "4", "--ep", "3", "-r", "6"], "--ep 3 must divide --n-experts 4"),
    # plot
    (1, PL + ["comm", "--bench", "{missing}", "--profile", "eth-10g"], "'--bench'"),
    (1, PL + ["comm", "--bench", "{broken_json}", "--profile", "eth-10g"], "broken.json"),
    (1, PL + ["comm", "--bench", "{binary}", "--profile", "eth-10g"], "binary.bin"),
    (1, PL + ["comm", "--bench", "{empty}", "--profile", "eth-10g"], "empty.txt"),
    (1, PL + ["nope"], "No such command 'nope'"),
    # calibrate
    (1, C, "Missing option '--out'"),
    (2, C + ["--out", "x.json", "-b", "x"], "cannot read size 'x'"),
    (2, C + ["--out", "{empty_folder}"], "'--out'"),
    (2, C + ["--out", "x.json", "-n", "0"], "'--iters'"),
]


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """Bad inputs of every kind, and one real checkpoint (a 1-layer model) to mismatch."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.txt").write_bytes(b"")
    (d / "short.txt").write_bytes(b"ab")
    (d / "binary.bin").write_bytes(os.urandom(100))
    (d / "broken.json").write_text('{"name": 1')
    (d / "empty_folder").mkdir()
    (d / "one_byte").mkdir()
    (d / "one_byte" / "a.txt").write_bytes(b"x")
    (d / "binary_ckpt").mkdir()
    (d / "binary_ckpt" / "checkpoint.pt").write_bytes(os.urandom(1000))
    run = d / "run"
    proc = mpirun(1, T + ["--n-layer", "1", "--out", str(run)], timeout=120)
    assert proc.returncode == 0, describe(proc)
    (d / "truncated").mkdir()
    (d / "truncated" / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:5000])
    import torch
    (d / "not_ckpt").mkdir()
    torch.save({"weights": torch.zeros(2)}, d / "not_ckpt" / "checkpoint.pt")
    other = torch.load(run / "checkpoint.pt", weights_only=True)  # a 1-layer model under a 2-layer config
    other["config"]["model"]["n_layer"] = 2
    (d / "other_model").mkdir()
    torch.save(other, d / "other_model" / "checkpoint.pt")
    return {"empty": d / "empty.txt", "short": d / "short.txt", "binary": d / "binary.bin", "missing": d / "missing.txt",
            "broken_json": d / "broken.json", "empty_folder": d / "empty_folder", "folder_of_one_byte": d / "one_byte",
            "binary_ckpt": d / "binary_ckpt", "truncated": d / "truncated", "not_ckpt": d / "not_ckpt", "run": run,
            "other_model": d / "other_model"}


def _case(i: int, k: int, args: list[str], message: str):
    alone = k > 1 or all(a[1] != args[1] for _, a, _ in CASES[:i])  # several ranks, or the command's first row
    return pytest.param(k, args, message, alone, marks=[] if alone else [pytest.mark.runs(1, run=args)],
                        id=f"{i:03d}-{args[1].split('.')[1]}")


def test_the_suite_covers_every_command_line():
    commands = {args[1] for _, args, _ in CASES}
    assert len(CASES) >= 80 and commands == {f"parallel_lm.{c}" for c in
                                             ("train", "generate", "bench", "simulate", "predict", "plot", "calibrate",
                                                                "elastic")}


@pytest.mark.parametrize("k,args,message,alone", [_case(i, *case) for i, case in enumerate(CASES)])
def test_bad_input_stops_with_one_message_and_exit_2(run_files, request, k, args, message, alone):
    t0 = time.monotonic()
    proc = mpirun(k, [a.format(**run_files) for a in args], timeout=TIME_LIMIT) if alone else \
        request.getfixturevalue("runs")["run"]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in out, describe(proc)
    assert proc.stderr.count(message.format(**run_files)) == 1, describe(proc)
    assert not alone or time.monotonic() - t0 < TIME_LIMIT
