"""Buffers: NumPy on the CPU, CuPy on a GPU, and zero-copy views of torch tensors.

- ``device()``: "cuda" when CuPy imports and a CUDA device really allocates,
  else "cpu"; ``settings.device`` (``PARALLEL_LM_DEVICE=cpu|cuda``) overrides the
  choice.
- ``array_module(buf)``: numpy or cupy, whichever owns ``buf``.
- ``as_array(tensor)`` / ``as_tensor(array)``: views that share memory
  (``Tensor.numpy()`` on the CPU, DLPack on the GPU), so a gradient bucket
  is all-reduced where it lives, without a copy.
- ``cuda_aware_mpi()``: whether the MPI library can read device pointers.
  The PyPI mpich wheel cannot; then ``comm.allreduce`` stages a device
  buffer through host memory.
- ``StreamSyncComm``: wraps a communicator so the current CUDA stream is
  synchronized before every MPI call (kernels that wrote a buffer must
  finish before MPI reads it), as the mpi4py CuPy demo does.

Nothing here imports torch or CuPy unless the caller's data needs them.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np

from . import settings

SUPPORTED_DTYPES = tuple(np.dtype(t) for t in ("float16", "float32", "float64", "int32", "int64"))


@functools.lru_cache(maxsize=None)
def _cupy():
    """The cupy module when a CUDA device is usable, else None."""
    try:
        import cupy
    except ImportError:
        return None
    try:
        if not cupy.cuda.is_available():
            return None
        cupy.zeros(1)  # is_available() can be True while allocation still fails
    except Exception:  # CUDARuntimeError and friends; CuPy has no common base
        return None
    return cupy


def device() -> str:
    """The device collectives and training use: "cuda" or "cpu"."""
    wanted = settings.current().device
    if wanted == "cpu":
        return "cpu"
    if _cupy() is not None:
        return "cuda"
    if wanted == "cuda":
        raise RuntimeError(
            "PARALLEL_LM_DEVICE=cuda but no usable CUDA device was found through CuPy: "
            "install the extra with `pip install parallel_lm[gpu]` on a machine with a GPU, or unset PARALLEL_LM_DEVICE")
    return "cpu"


def xp():
    """The array module for the chosen device (numpy or cupy)."""
    return _cupy() if device() == "cuda" else np


def is_device_array(buf) -> bool:
    """True for arrays that live on a GPU (anything with __cuda_array_interface__)."""
    return hasattr(buf, "__cuda_array_interface__") and not isinstance(buf, np.ndarray)


def array_module(buf):
    """numpy or cupy, whichever owns ``buf``.

    Other array types name their module through the array API's
    ``__array_namespace__``: the simulator's arrays (``parallel_lm.sim``)
    use it to count the bytes each reduction adds.
    """
    if isinstance(buf, np.ndarray):
        return np
    if is_device_array(buf):
        import cupy
        return cupy
    namespace = getattr(buf, "__array_namespace__", None)
    return namespace() if namespace is not None else np


def as_array(tensor):
    """A NumPy (CPU) or CuPy (CUDA) array sharing memory with a torch tensor."""
    if not tensor.is_contiguous():
        raise ValueError("as_array needs a contiguous tensor: call tensor.contiguous() first (that copies)")
    if tensor.device.type == "cpu":
        return tensor.detach().numpy()
    import cupy
    return cupy.from_dlpack(tensor.detach())


def as_tensor(array):
    """A torch tensor sharing memory with a NumPy or CuPy array."""
    import torch
    if isinstance(array, np.ndarray):
        return torch.from_numpy(array)
    return torch.from_dlpack(array)


def cuda_aware_mpi() -> bool:
    """Whether the MPI library accepts device pointers.

    ``settings.cuda_aware`` (``PARALLEL_LM_CUDA_AWARE=0|1``) overrides. Otherwise ask the library:
    MPICH and Open MPI both export ``MPIX_Query_cuda_support()``; a library
    without it is taken as not CUDA-aware, which is always safe (staging).
    """
    forced = settings.current().cuda_aware
    return _library_cuda_aware() if forced is None else forced


@functools.lru_cache(maxsize=None)
def _library_cuda_aware() -> bool:
    try:
        from mpi4py import MPI
        query = getattr(ctypes.CDLL(MPI.__file__), "MPIX_Query_cuda_support")
    except (OSError, AttributeError):
        return False
    query.restype = ctypes.c_int
    return bool(query())


class StreamSyncComm:
    """A communicator proxy that synchronizes the CUDA stream before each MPI call."""

    def __init__(self, comm):
        self._comm = comm
        import cupy
        self._stream = cupy.cuda.get_current_stream

    def __getattr__(self, name):
        attr = getattr(self._comm, name)
        if not callable(attr) or name in ("Get_rank", "Get_size"):
            return attr

        def synced(*args, **kwargs):
            self._stream().synchronize()
            return attr(*args, **kwargs)
        return synced
