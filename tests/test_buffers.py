"""Device choice, zero-copy views and CUDA-awareness detection (CPU machine)."""
import numpy as np
import pytest

from parallel_lm import environment
from parallel_lm.comm import buffers, settings


@pytest.fixture(autouse=True)
def restore_settings():
    previous = settings.configure()
    yield
    settings.configure(previous)


def test_cpu_override_and_bad_value():
    settings.configure(environment.read({"PARALLEL_LM_DEVICE": "CPU"}).comm)
    assert buffers.device() == "cpu" and buffers.xp() is np
    with pytest.raises(ValueError, match="PARALLEL_LM_DEVICE='tpu': use 'cpu' or 'cuda'"):
        environment.read({"PARALLEL_LM_DEVICE": "tpu"})


def test_cuda_request_without_gpu_says_what_to_do():
    if buffers._cupy() is not None:
        pytest.skip("a GPU is present")
    settings.configure(device="cuda")
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


def test_cuda_awareness_override_and_library_query():
    settings.configure(environment.read({"PARALLEL_LM_CUDA_AWARE": "1"}).comm)
    assert buffers.cuda_aware_mpi() is True
    settings.configure(environment.read({"PARALLEL_LM_CUDA_AWARE": "0"}).comm)
    assert buffers.cuda_aware_mpi() is False
    settings.configure(environment.read({}).comm)
    assert buffers.cuda_aware_mpi() is buffers._library_cuda_aware() in (True, False)  # asks MPIX_Query_cuda_support, False without a GPU build


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


def test_device_buffer_is_staged_through_host_when_mpi_is_not_cuda_aware():
    from parallel_lm.comm import allreduce
    settings.configure(cuda_aware=False)
    fake = HostBackedDeviceArray(np.arange(5, dtype=np.float32))
    assert buffers.is_device_array(fake)
    assert allreduce(fake, algorithm="ring") is fake  # one rank: the sum is the buffer itself
    assert fake.copies == 2 and np.array_equal(fake.data, np.arange(5))  # one copy down, one back
