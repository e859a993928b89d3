"""A global batch that does not divide over the ranks: B // K or B // K + 1 sequences each, weighted by their rows,
so K ranks train what one process would, and a checkpoint resumes on any rank count."""

from conftest import check_cases, describe, mpirun, noise_tolerance
from parallel_lm.services import checkpoint
from test_layouts import layouts


@layouts(5, "uneven", "uneven-accum", "uneven-zero2", "uneven-zero3", "uneven-zero3-sgd", "uneven-naive-fp16", "uneven-ddp")
def test_twelve_sequences_on_five_ranks_train_like_one_process_for_every_sync(marked_cases):
    check_cases(marked_cases)


@layouts(6, "uneven-dp3-pp2")
@layouts(2, "uneven-micro-1f1b")
def test_uneven_shares_and_micro_batches_in_pipelines(marked_cases):
    check_cases(marked_cases)


def test_a_four_rank_checkpoint_resumes_on_three_ranks_and_ends_where_four_ranks_end(tmp_path):
    args = ["-m", "parallel_lm.train", "--steps", "6", "--eval-every", "0", "--quiet", "--data", "synthetic"]
    unbroken, resumed = tmp_path / "unbroken", tmp_path / "resumed"
    assert mpirun(4, args + ["--out", str(unbroken)], timeout=120).returncode == 0
    assert mpirun(4, args + ["--steps", "3", "--out", str(resumed)], timeout=120).returncode == 0
    proc = mpirun(3, args + ["--resume", str(resumed)], timeout=120)
    assert proc.returncode == 0, describe(proc)
    assert "global batch 32 over 3 data-parallel rank(s) holding 10 or 11 sequences" in proc.stdout, describe(proc)
    a, b = checkpoint.load(unbroken)["model"], checkpoint.load(resumed)["model"]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= noise_tolerance(args[2:])
