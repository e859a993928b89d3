"""The collectives on other frameworks' tensors through DLPack (comm/foreign.py)."""
import numpy as np
import pytest

from conftest import PROGRAMS, assert_cases, mpirun
from parallel_lm.comm import allreduce
from parallel_lm.comm.foreign import ALIGN, aligned_copy


@pytest.mark.parametrize("k", [1, 3])
def test_torch_tensors_in_place_and_read_only_tensors_staged_equal_numpy(k):
    """torch in place; JAX arrays and a read-only, misaligned producer through an aligned copy, a new array back."""
    assert_cases(mpirun(k, [str(PROGRAMS / "check_dlpack.py")], timeout=120), ["torch", "read-only", "jax"])


def test_the_staging_copy_starts_on_a_64_byte_boundary():
    """TensorFlow kills the process on the first op over an imported buffer that is not 64-byte aligned."""
    for offset in range(1, 9):
        values = np.arange(offset, offset + 100, dtype=np.float32)[offset % 3:]
        copy = aligned_copy(values)
        assert copy.ctypes.data % ALIGN == 0 and np.array_equal(copy, values) and copy.flags.writeable


def test_what_is_not_a_tensor_is_refused_with_what_to_pass():
    with pytest.raises(TypeError, match="or a tensor that exports DLPack"):
        allreduce([1.0, 2.0])
