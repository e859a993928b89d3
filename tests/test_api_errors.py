"""Wrong input raises an error that names the fix (single process: MPI singleton, size 1)."""
import numpy as np
import pytest

from parallel_lm.comm import ALGORITHMS, all_gather, allreduce, allreduce_mean, broadcast, reduce_scatter
from parallel_lm.comm.collectives import mpi as mpi_module


def test_registry_has_the_contract_names():
    assert {"naive", "tree", "ring", "recursive_doubling", "rabenseifner", "mpi"} <= set(ALGORITHMS)


def test_unknown_algorithm_lists_valid_names():
    with pytest.raises(ValueError, match="unknown allreduce algorithm 'rnig'; valid names: naive, tree, ring"):
        allreduce(np.ones(4, np.float32), algorithm="rnig")


def test_two_dimensional_buffer_suggests_reshape():
    with pytest.raises(ValueError, match=r"needs a 1-D array, got shape \(2, 3\): pass buf.reshape\(-1\)"):
        allreduce(np.ones((2, 3), np.float32))


def test_strided_view_suggests_contiguous_copy():
    with pytest.raises(ValueError, match="strided view.*np.ascontiguousarray"):
        allreduce(np.ones(10, np.float32)[::2])


def test_unsupported_dtype_lists_supported_ones():
    with pytest.raises(ValueError, match="does not support dtype uint8; use one of float16, float32, float64, int32, int64"):
        allreduce(np.ones(4, np.uint8))


def test_a_torch_tensor_is_reduced_in_place_through_dlpack():
    torch = pytest.importorskip("torch")
    t = torch.ones(4)
    assert allreduce(t) is t and t.tolist() == [1.0] * 4  # one rank: the sum of one; tests/test_dlpack.py for more


def test_read_only_buffer_is_refused():
    buf = np.ones(4, np.float32)
    buf.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        allreduce(buf)


def test_mpi_algorithm_refuses_dtype_the_library_lacks(monkeypatch):
    monkeypatch.setattr("parallel_lm.comm.api.has_mpi_datatype", lambda dtype: False)
    with pytest.raises(ValueError, match="no datatype for float16.*use an explicit algorithm such as 'ring'"):
        allreduce(np.ones(4, np.float16), algorithm="mpi")
    allreduce(np.ones(4, np.float16), algorithm="ring")  # the explicit ones still work


def test_library_knows_all_supported_dtypes():
    for dtype in ("float16", "float32", "float64", "int32", "int64"):
        assert mpi_module.has_mpi_datatype(np.dtype(dtype))


def test_mean_refuses_integers():
    with pytest.raises(TypeError, match="floating-point"):
        allreduce_mean(np.ones(4, np.int32))


def test_broadcast_root_must_be_a_rank():
    with pytest.raises(ValueError, match="root 3 is not a rank"):
        broadcast(np.ones(4, np.float32), root=3)


@pytest.mark.parametrize("fn", [allreduce, reduce_scatter, all_gather])
def test_one_rank_is_identity(fn):
    buf = np.arange(7, dtype=np.float64)
    out = fn(buf.copy())
    assert np.array_equal(out, buf)
