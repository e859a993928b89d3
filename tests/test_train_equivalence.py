"""The core promise: K-rank training equals 1-rank training (same seed, same global batch)."""
import pytest

from conftest import PROGRAMS, assert_cases, mpirun
from parallel_lm.comm import ALGORITHMS

CASES = [f"{algo} accum={accum} overlap={overlap}" for algo in ALGORITHMS for accum in (False, True)
         for overlap in (True, False)] + ["naive per-parameter", "comm fp16", "torch-ddp"]


@pytest.mark.parametrize("k", [2, 3, 4])
def test_k_ranks_match_one_rank_for_every_algorithm_accumulation_and_overlap(k):
    # on 4 ranks the hierarchical all-reduce runs on two emulated nodes of 2 (elsewhere: one real node)
    env = {"PARALLEL_LM_RANKS_PER_NODE": "2"} if k == 4 else {}
    assert_cases(mpirun(k, [str(PROGRAMS / "train_equivalence.py")], env=env, timeout=300), CASES)
