"""Exercise 16.1 (lesson 16): a checkpoint that survives a crash while it is written.

``torch.save(state, path)`` straight onto the checkpoint leaves half a
file behind if the job dies while it writes, and the last good checkpoint
is gone with it. Write to a temporary file in the same directory first,
flush it and ``os.fsync`` it, then ``os.replace`` it onto ``path``: the
rename is atomic, so ``path`` holds the old checkpoint or the new one,
never half of one. If writing fails, remove the temporary file and let
the error go on up.

The checker makes ``torch.save`` die halfway through and checks that the
old checkpoint still loads with ``torch.load(path, weights_only=True)``
and that nothing is left behind.
"""
import os
import tempfile

import torch


def save_atomic(state, path):
    """Save ``state`` (a dict of tensors) to ``path`` so that a crash never leaves ``path`` half written."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
