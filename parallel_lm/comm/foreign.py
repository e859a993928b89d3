"""Any framework's tensor in a collective, through DLPack: torch, JAX, TensorFlow (and NumPy, CuPy as they are).

``host_view(buf)`` gives the NumPy array a collective runs on and how to hand the result back:
- a CPU tensor whose memory may be written (torch): ``np.from_dlpack`` views it, zero-copy; the collective
  works in place and returns the tensor itself;
- a tensor that may not be written (JAX and TensorFlow arrays are immutable; NumPy sees them read-only):
  its values are copied into a 64-byte-aligned buffer (TensorFlow refuses to import an unaligned one), the
  collective runs there, and the result comes back as a new tensor of the same framework
  (``from_dlpack`` of its array namespace, ``tf.experimental.dlpack`` for TensorFlow), or as the NumPy
  array when the framework offers no way back.

Nothing here imports a framework unless the caller's tensor belongs to it.
"""
from __future__ import annotations

import numpy as np

from .buffers import is_device_array

ALIGN = 64  # bytes


def is_foreign(buf) -> bool:
    """A tensor that is neither NumPy nor a GPU array the collectives take as they are, but exports DLPack."""
    return not isinstance(buf, np.ndarray) and not is_device_array(buf) and hasattr(buf, "__dlpack__")


def aligned_copy(values: np.ndarray) -> np.ndarray:
    """A writable copy of ``values`` whose data starts on an ALIGN-byte boundary."""
    raw = np.empty(values.nbytes + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    out = raw[start:start + values.nbytes].view(values.dtype).reshape(values.shape)
    out[...] = values
    return out


def back_to(like, array: np.ndarray):
    """``array`` as a tensor of ``like``'s framework (a new one), or NumPy when there is no way back."""
    module = type(like).__module__.split(".")[0]
    if module == "tensorflow":
        import tensorflow as tf
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    namespace = getattr(like, "__array_namespace__", None)
    if namespace is not None and hasattr(namespace(), "from_dlpack"):
        return namespace().from_dlpack(array)
    return array


def host_view(buf, kind: str):
    """(the array to run ``kind`` on, whether it is ``buf``'s own memory)."""
    if not is_foreign(buf):
        return buf, True
    try:
        view = np.from_dlpack(buf)
    except (TypeError, ValueError, BufferError, RuntimeError) as e:
        raise TypeError(f"{kind} reads other frameworks' tensors through DLPack on the CPU, and this "
                        f"{type(buf).__name__} cannot be read that way ({e}): pass a NumPy array") from None
    if view.flags.writeable:
        return view, True
    return aligned_copy(view), False
