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


class HostBackedDeviceArray:
    """Stands in for a CuPy array on a machine without a GPU: has __cuda_array_interface__,
    get() and set(), and holds its data in a NumPy array we can inspect."""

    def __init__(self, data):
        self.data = data
        self.__cuda_array_interface__ = {"shape": data.shape, "typestr": data.dtype.str, "version": 3}
        self.ndim, self.dtype, self.flags, self.size = data.ndim, data.dtype, data.flags, data.size
        self.copies = 0

    def get(self):
        self.copies += 1
        return self.data.copy()

    def set(self, host):
        self.copies += 1
        self.data[...] = host


def test_device_buffer_is_staged_through_host_when_mpi_is_not_cuda_aware(monkeypatch):
    from parallel_lm.comm import allreduce
    monkeypatch.setenv("PARALLEL_LM_CUDA_AWARE", "0")
    fake = HostBackedDeviceArray(np.arange(5, dtype=np.float32))
    assert buffers.is_device_array(fake)
    assert allreduce(fake, algorithm="ring") is fake  # one rank: the sum is the buffer itself
    assert fake.copies == 2 and np.array_equal(fake.data, np.arange(5))  # one copy down, one back
