"""Data parallelism for Keras 3 (TensorFlow backend) by our all-reduce, as Horovod's Keras API does with its own.

    from parallel_lm.frameworks.keras import DataParallelModel, broadcast_weights, local_rows
    model = DataParallelModel(inputs, outputs)            # any functional model, built as usual
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    broadcast_weights(model)                               # every rank starts from rank 0's weights
    model.fit(local_rows(x, 64), local_rows(y, 64), batch_size=64 // size, shuffle=False)

Each rank runs forward and backward on its rows of every global batch; ``average_gradients`` concatenates
the gradients into one vector, averages it over the ranks with ``allreduce_mean`` (the ring by default:
any name in ``parallel_lm.comm.ALGORITHMS``), and cuts it back. The optimizer then takes the same step on
every rank, so with equal rows per rank K ranks train as one process on the whole batch, up to float32
rounding (tests/programs/check_keras.py holds both a custom loop and ``model.fit`` to it).

Inside ``model.fit`` the train step is a TensorFlow graph; the all-reduce is Python, so it runs through
``tf.py_function``. The gradient vector reaches NumPy through DLPack and comes back as a new tensor from a
64-byte-aligned buffer (``comm/foreign.py``). The loss Keras logs is averaged too (it rides in the same
all-reduce), so it is the whole global batch's, as one process would log it; other metrics are each rank's
own rows'.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ..comm import all_gather, allreduce_mean, broadcast


def _world(comm):
    if comm is not None:
        return comm
    from mpi4py import MPI
    return MPI.COMM_WORLD


def average_gradients(grads, comm=None, algorithm: str = "ring") -> list:
    """``grads`` (one per variable; None stays None) averaged over the ranks of ``comm``.

    Dense gradients go as one vector through one ``allreduce_mean`` by ``algorithm``. A sparse one (``tf.IndexedSlices``, an
    Embedding's: the rows its tokens touched) stays sparse: every rank's rows and values are gathered
    (the ring ``all_gather``) and divided by the ranks, as one process would hold them for the whole batch. Made
    dense instead, Keras's optimizers would move rows no token touched (Adam's moments decay), and K ranks
    would no longer train as one process.
    """
    comm = _world(comm)
    dense = [i for i, g in enumerate(grads) if g is not None and not isinstance(g, tf.IndexedSlices)]
    out = list(grads)
    if dense:
        flat = tf.concat([tf.reshape(grads[i], [-1]) for i in dense], axis=0)
        mean = tf.py_function(lambda v: allreduce_mean(v, comm, algorithm), [flat], Tout=flat.dtype)
        mean.set_shape(flat.shape)
        parts = tf.split(mean, [int(np.prod(grads[i].shape)) for i in dense])
        for i, part in zip(dense, parts):
            out[i] = tf.reshape(part, grads[i].shape)
    for i, g in enumerate(grads):
        if isinstance(g, tf.IndexedSlices):
            values, indices = tf.py_function(lambda v, j: _gather_rows(v.numpy(), j.numpy(), comm),
                                             [g.values, g.indices], Tout=(g.values.dtype, g.indices.dtype))
            values.set_shape([None, *g.values.shape[1:]])
            indices.set_shape([None])
            out[i] = tf.IndexedSlices(values / comm.Get_size(), indices, g.dense_shape)
    return out


def _gather_rows(values: np.ndarray, indices: np.ndarray, comm):
    """Every rank's (values, indices) rows, rank after rank: padded to the longest, gathered, trimmed."""
    counts = comm.allgather(len(indices))
    longest, k, r = max(counts), comm.Get_size(), comm.Get_rank()
    row = int(np.prod(values.shape[1:]))
    out = []
    for part, width in ((values, row), (indices, 1)):
        buf = np.zeros(k * longest * width, part.dtype)
        buf[r * longest * width:(r * longest + len(part)) * width] = part.reshape(-1)
        whole = all_gather(buf, comm).reshape(k, longest, width)
        out.append(np.concatenate([whole[q, :counts[q]] for q in range(k)]).reshape(-1, *part.shape[1:]))
    return out[0], out[1]


def broadcast_weights(model: keras.Model, comm=None, root: int = 0) -> None:
    """Every rank's ``model`` takes ``root``'s weights (each in its own dtype), as Horovod's broadcast does."""
    comm = _world(comm)
    weights = [np.ascontiguousarray(w) for w in model.get_weights()]
    model.set_weights([broadcast(w.reshape(-1), comm, root).reshape(w.shape) for w in weights])


def local_rows(array, global_batch: int, comm=None) -> np.ndarray:
    """This rank's rows of every global batch of ``array``, in step order, for ``fit(..., shuffle=False)``.

    Global batch s is rows [s * global_batch, (s + 1) * global_batch); rank r of K takes its r-th 1/K of it.
    """
    comm = _world(comm)
    k, r = comm.Get_size(), comm.Get_rank()
    array = np.asarray(array)
    if global_batch % k:
        raise ValueError(f"a global batch of {global_batch} rows does not split over {k} ranks: pick a multiple of {k}")
    if len(array) % global_batch:
        raise ValueError(f"{len(array)} rows are not a whole number of global batches of {global_batch}: "
                         f"drop the last {len(array) % global_batch} rows")
    steps = len(array) // global_batch
    return array.reshape(steps, k, global_batch // k, *array.shape[1:])[:, r].reshape(-1, *array.shape[1:])


class DataParallelModel(keras.Model):
    """A Keras model whose ``fit`` averages the gradients over the ranks before each optimizer step.

    Build it as any functional model (``DataParallelModel(inputs, outputs)``); ``comm`` (default
    COMM_WORLD) and ``algorithm`` (default ``ring``) may be set as attributes before ``fit``.
    """

    comm = None
    algorithm = "ring"

    def train_step(self, data):
        """Keras's own train step, with the gradients (and the loss, for the log) averaged over the ranks."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            scaled = self.optimizer.scale_loss(loss)  # the loss scale of mixed precision, if any
        variables = self.trainable_variables
        *grads, loss = average_gradients([*tape.gradient(scaled, variables), loss], self.comm, self.algorithm)
        self._loss_tracker.update_state(loss, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
        self.optimizer.apply_gradients(zip(grads, variables))
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
