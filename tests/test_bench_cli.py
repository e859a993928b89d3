"""python -m parallel_lm.bench end to end under mpiexec."""
import json

from conftest import describe, mpirun


def test_sweep_writes_records_with_no_errors(tmp_path):
    out = tmp_path / "bench.json"
    proc = mpirun(3, ["-m", "parallel_lm.bench", "-b", "4K", "-e", "16K", "-f", "4", "-n", "3", "-w", "1",
                      "-d", "float32,int64", "--json", str(out)], timeout=120)
    assert proc.returncode == 0, describe(proc)
    records = json.loads(out.read_text())["records"]
    algos = {"mpi", "naive", "tree", "ring", "recursive_doubling", "rabenseifner", "hierarchical",
             "hierarchical_pipelined", "ring_channels"}
    assert {r["algorithm"] for r in records} == algos
    assert len(records) == 2 * 2 * len(algos)  # sizes x dtypes x algorithms
    for r in records:
        assert r["ranks"] == 3 and r["errors"] == 0 and r["time_us"] > 0
        assert r["busbw_GBps"] == __import__("pytest").approx(r["algbw_GBps"] * 4 / 3)
    assert proc.stdout.count("\n") >= len(records) + 2  # the table went to stdout on rank 0 only
    assert proc.stdout.count("# parallel_lm.bench") == 1


def test_other_ops_and_pingpong():
    for op, algo in [("reduce_scatter", "all"), ("all_gather", "all"), ("broadcast", "all"), ("pingpong", "all")]:
        proc = mpirun(2, ["-m", "parallel_lm.bench", "--op", op, "-a", algo, "-b", "1K", "-e", "4K", "-n", "2", "-w", "1"])
        assert proc.returncode == 0 and "0 wrong elements" in proc.stdout, describe(proc)


def test_bad_flags_fail_once_with_the_fix_on_every_rank():
    proc = mpirun(3, ["-m", "parallel_lm.bench", "-a", "ring,rnig"])
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.count("unknown allreduce algorithm rnig; valid: naive") == 1, describe(proc)
    proc = mpirun(1, ["-m", "parallel_lm.bench", "--op", "pingpong"])
    assert proc.returncode == 2 and "needs at least 2 ranks" in proc.stderr, describe(proc)
    proc = mpirun(2, ["-m", "parallel_lm.bench", "-b", "4 parsecs"])
    assert proc.returncode == 2 and "cannot read size" in proc.stderr, describe(proc)


def test_torch_gloo_baseline_runs(tmp_path):
    proc = mpirun(2, ["-m", "parallel_lm.bench", "-a", "all,torch_gloo", "-b", "64K", "-e", "64K", "-n", "2", "-w", "1"],
                  timeout=180)
    assert proc.returncode == 0 and "torch_gloo" in proc.stdout and "0 wrong elements" in proc.stdout, describe(proc)


def test_one_rank_runs_without_mpiexec_arithmetic_errors():
    proc = mpirun(1, ["-m", "parallel_lm.bench", "-b", "4K", "-e", "4K", "-n", "2", "-w", "1"])
    assert proc.returncode == 0 and "0 wrong elements" in proc.stdout, describe(proc)
