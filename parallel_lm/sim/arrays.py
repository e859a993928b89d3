"""Arrays the simulated ranks compute on.

The algorithms in ``comm/collectives`` only slice their buffer, ask its
``size``/``dtype``/``nbytes``, borrow scratch space (``workspace.scratch``),
add with ``local.add_into`` and copy with ``local.copy_into``. Two
stand-ins answer exactly that:

- ``VirtualArray`` (timing-only mode) holds no data, only a length, and the
  length may be one value per rank: a whole group of virtual ranks shares
  one call of the algorithm (see ``ranks.py``), so 4,096 ranks cost no
  memory.
- ``DataArray`` (data mode) wraps a real NumPy array, so messages really
  carry values and sums can be checked.

Both name their module through ``__array_namespace__``; its ``add`` does
the reduction (or not, for timing) and tells the current ``Recorder`` how
many bytes were reduced, which is the gamma term of the cost.
"""
from __future__ import annotations

import threading

import numpy as np

_current = threading.local()


def set_recorder(recorder) -> None:
    """The recorder that reductions on this thread are charged to."""
    _current.recorder = recorder


def _charge(nbytes) -> None:
    _current.recorder.reduce(nbytes)


def _bound(value, default, size):
    """A slice bound clipped to [0, size], as Python slicing does for non-negative bounds."""
    if value is None:
        return default
    if isinstance(value, (int, np.integer)) and isinstance(size, (int, np.integer)):
        if value < 0:
            raise IndexError("simulated arrays take non-negative slice bounds")
        return min(int(value), int(size))
    value = np.asarray(value)
    if np.any(value < 0):
        raise IndexError("simulated arrays take non-negative slice bounds")
    return np.minimum(value, size)


class VirtualArray:
    """A 1-D array with a length (an int, or one int per rank of a group) and no data."""

    __slots__ = ("dtype", "itemsize", "size")

    def __init__(self, size, dtype):
        self.size, self.dtype = size, np.dtype(dtype)
        self.itemsize = self.dtype.itemsize

    @property
    def nbytes(self):
        return self.size * self.itemsize

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("simulated arrays support only buf[start:stop]")
        start = _bound(key.start, 0, self.size)
        stop = _bound(key.stop, self.size, self.size)
        length = stop - start
        length = max(length, 0) if isinstance(length, int) else np.maximum(length, 0)
        return VirtualArray(length, self.dtype)

    def view(self, dtype):
        dtype = np.dtype(dtype)
        return VirtualArray(self.size * self.itemsize // dtype.itemsize, dtype)

    def __array_namespace__(self):
        return TimingNamespace


class DataArray:
    """A real NumPy array seen through the simulator's namespace (data mode)."""

    __slots__ = ("data",)

    def __init__(self, data: np.ndarray):
        self.data = data

    size = property(lambda self: self.data.size)
    dtype = property(lambda self: self.data.dtype)
    itemsize = property(lambda self: self.data.itemsize)
    nbytes = property(lambda self: self.data.nbytes)

    def __getitem__(self, key):
        return DataArray(self.data[key])

    def view(self, dtype):
        return DataArray(self.data.view(dtype))

    def __array_namespace__(self):
        return DataNamespace


class _Namespace:
    """The part of NumPy's module ``workspace.scratch`` and ``local.add_into`` ask for."""

    uint8 = np.uint8
    dtype = staticmethod(np.dtype)


class TimingNamespace(_Namespace):
    """What ``array_module`` returns for a VirtualArray: allocation is free, addition only counts."""

    __name__ = "parallel_lm.sim.timing"

    @staticmethod
    def empty(count, dtype):
        return VirtualArray(count, dtype)

    @staticmethod
    def add(acc, incoming, out=None):
        _charge(acc.nbytes)

    @staticmethod
    def copyto(dst, src):
        pass


class DataNamespace(_Namespace):
    """What ``array_module`` returns for a DataArray: real NumPy, and the bytes are counted."""

    __name__ = "parallel_lm.sim.data"

    @staticmethod
    def empty(count, dtype):
        return DataArray(np.empty(count, dtype))

    @staticmethod
    def add(acc, incoming, out=None):
        np.add(acc.data, incoming.data, out=acc.data)
        _charge(acc.nbytes)

    @staticmethod
    def copyto(dst, src):
        np.copyto(dst.data, src.data)
