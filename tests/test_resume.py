"""Checkpoints of every layout resume exactly: bitwise under the same layout, within fp32 noise under another."""
import pytest

from conftest import check_cases

GROUPS = [
    (2, ["dp:one", "naive", "tp2:dp", "fp16", "pp2-fp16"]),
    (2, ["zero3:one", "pp2-v2:zero3", "moe-ep2:moe", "cp2:one"]),
    (3, ["zero2:one"]),
    (4, ["zero2:tp2-pp2", "dp2-pp2-zero2:dp2-tp2-zero1", "ddp", "zero1", "moe-ep4:moe-ep2", "cp2-tp2:cp4"]),
    (4, ["dp2-pp2-zero3:zero1", "dp2-pp2-v2-zero3-recompute:tp2-pp2", "zero2:zero3",
         "llama-tp2-pp2:llama-cp2-tp2", "llama-zero3:llama-one"]),
    (8, ["dp2-tp2-pp2-zero1:zero2"]),
]


@pytest.mark.parametrize("pairs", [pytest.param(pairs, marks=pytest.mark.cases("resume_layouts.py", k, *pairs),
                                                id=f"{k}-{pairs[0]}") for k, pairs in GROUPS])
def test_every_layout_resumes_exactly(pairs, marked_cases):
    check_cases(marked_cases)
