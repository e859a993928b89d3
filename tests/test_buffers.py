"""Device choice, zero-copy views and CUDA-awareness detection (CPU machine)."""
import numpy as np
import pytest

from parallel_lm.comm import buffers


@pytest.fixture(autouse=True)
def fresh_caches():
    for fn in (buffers.device, buffers.cuda_aware_mpi):
        fn.cache_clear()
    yield
    for fn in (buffers.device, buffers.cuda_aware_mpi):
        fn.cache_clear()


def test_cpu_override_and_bad_value(monkeypatch):
    monkeypatch.setenv("PARALLEL_LM_DEVICE", "cpu")
    assert buffers.device() == "cpu" and buffers.xp() is np
    buffers.device.cache_clear()
    monkeypatch.setenv("PARALLEL_LM_DEVICE", "tpu")
    with pytest.raises(ValueError, match="use 'cpu' or 'cuda'"):
        buffers.device()


def test_cuda_request_without_gpu_says_what_to_do(monkeypatch):
    if buffers._cupy() is not None:
        pytest.skip("a GPU is present")
    monkeypatch.setenv("PARALLEL_LM_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match=r"parallel_lm\[gpu\]"):
        buffers.device()


def test_torch_views_share_memory():
    torch = pytest.importorskip("torch")
    t = torch.zeros(6)
    a = buffers.as_array(t)
    a[2] = 5.0
    assert t[2].item() == 5.0 and buffers.array_module(a) is np
    back = buffers.as_tensor(a)
    back[3] = 7.0
    assert t[3].item() == 7.0
    with pytest.raises(ValueError, match="contiguous"):
        buffers.as_array(torch.zeros(4, 4).t())


def test_cuda_awareness_override_and_library_query(monkeypatch):
    monkeypatch.setenv("PARALLEL_LM_CUDA_AWARE", "1")
    assert buffers.cuda_aware_mpi() is True
    buffers.cuda_aware_mpi.cache_clear()
    monkeypatch.delenv("PARALLEL_LM_CUDA_AWARE")
    assert buffers.cuda_aware_mpi() in (True, False)  # asks MPIX_Query_cuda_support, False without a GPU build
