"""Lesson 20: the same collectives, any framework - torch, JAX and TensorFlow tensors through DLPack.

    mpiexec -n 2 python lessons/20_any_framework.py

Our collectives work on NumPy arrays. Training frameworks hold their data in their own tensors, but they
can all lend its memory through DLPack, a small C struct (pointer, shape, strides, dtype, device) that
every major array library exports with ``__dlpack__`` and imports with ``from_dlpack``. No bytes move.

1. A torch tensor: ``np.from_dlpack(t)`` is a writable view of its memory, so the all-reduce runs in place
   and returns ``t`` itself: same data pointer before and after.
2. A JAX array is immutable: NumPy sees it read-only. The collective copies its values into an aligned
   buffer (TensorFlow, which is just as immutable, aborts on buffers off a 64-byte boundary), reduces
   there, and hands back a *new* jax.Array. The input is untouched.
3. Data parallelism in JAX with our ring: every rank takes its rows of the global batch, ``jax.grad``
   gives its gradient, ``allreduce_mean`` averages the flattened gradient across ranks, and plain SGD
   updates the parameters. After a few steps every rank holds the same parameters as one process that
   saw the whole batch, up to float32 rounding.
4. Keras 3 on TensorFlow: ``DataParallelModel`` (parallel_lm/frameworks/keras.py) is a Keras model whose
   train step averages the gradients with our ring before the optimizer's step, so plain ``model.fit`` on
   each rank's rows (``local_rows``) trains as one process on the whole batch, and logs its loss. A next-byte model reads this
   file. Its Embedding's gradient is sparse (only the rows its tokens touched): those are gathered, not
   summed as a dense matrix, or Adam would move every row of the table and the ranks would drift from
   one process.
"""
import hashlib

from pathlib import Path

import jax
import jax.numpy as jnp
import keras
import numpy as np
import torch
from mpi4py import MPI

from parallel_lm.comm import allreduce, allreduce_mean
from parallel_lm.frameworks.keras import DataParallelModel, broadcast_weights, local_rows
from parallel_lm.runtime import check, print0, start_script

start_script()
comm = MPI.COMM_WORLD
rank, K = comm.Get_rank(), comm.Get_size()

# 1. torch: in place, zero-copy
t = torch.full((8,), float(rank + 1))
before = t.data_ptr()
out = allreduce(t, comm)
check(out is t and t.data_ptr() == before, "a torch tensor should be reduced in place")
check(bool((t == K * (K + 1) / 2).all()), "the torch all-reduce gave the wrong sum")
print0(f"1. torch: allreduce(t) returned t itself, data pointer unchanged ({before:#x}); every entry "
       f"{t[0].item():g} = 1 + ... + {K}")

# 2. JAX: immutable, so a new array comes back
x = jnp.full((8,), float(rank + 1))
y = allreduce(x, comm)
check(type(y) is type(x) and y is not x, "a JAX array should come back as a new jax.Array")
check(bool((x == rank + 1).all()) and bool((y == K * (K + 1) / 2).all()), "the JAX all-reduce changed its input "
      "or gave the wrong sum")
print0(f"2. JAX: allreduce(x) returned a new {type(y).__name__} with every entry {float(y[0]):g}; x still holds "
       f"{float(x[0]):g} on rank 0")

# 3. a data-parallel JAX training step, against one process
B, D, H, steps, lr = 12, 8, 16, 4, 0.1
init = np.random.default_rng(0)
params = {"w1": jnp.asarray(init.normal(0, 0.5, (D, H)), jnp.float32),
          "w2": jnp.asarray(init.normal(0, 0.5, (H, 1)), jnp.float32)}


def loss_fn(p, x, y):
    return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)


grad_fn = jax.jit(jax.grad(loss_fn))


def batch(step):
    """Step ``step``'s global batch: the same on every rank (a function of the step only)."""
    rng = np.random.default_rng(100 + step)
    xs = rng.normal(size=(B, D)).astype(np.float32)
    return xs, np.sin(xs.sum(axis=1, keepdims=True)).astype(np.float32)


def sgd(p, g):
    return {k: p[k] - lr * g[k] for k in p}


mine, alone = dict(params), dict(params)
names = sorted(params)
sizes = [params[k].size for k in names]
print0(f"\n3. data-parallel JAX: {K} ranks, global batch {B} = {K} x {B // K} rows, SGD lr {lr}")
print0(f"{'step':>4} {'max |param - 1-process param|':>30}")
for step in range(steps):
    xs, ys = batch(step)
    lo, hi = rank * B // K, (rank + 1) * B // K
    g = grad_fn(mine, xs[lo:hi], ys[lo:hi])  # the mean over my rows
    flat = jnp.concatenate([g[k].reshape(-1) for k in names])
    flat = allreduce_mean(flat, comm)  # the mean over every rank's rows (equal shares)
    parts = jnp.split(flat, np.cumsum(sizes)[:-1])
    mine = sgd(mine, {k: part.reshape(params[k].shape) for k, part in zip(names, parts)})
    alone = sgd(alone, grad_fn(alone, xs, ys))  # one process, the whole batch
    diff = max(float(jnp.abs(mine[k] - alone[k]).max()) for k in names)
    print0(f"{step + 1:>4} {diff:>30.2e}")
    check(diff < 1e-5, f"step {step + 1}: data-parallel JAX drifted from one process")

digest = hashlib.sha1(b"".join(np.asarray(mine[k]).tobytes() for k in names)).hexdigest()
check(len(set(comm.allgather(digest))) == 1, "ranks hold different parameters")
print0("Every rank holds the same bits, equal to one process up to float32 rounding.")

# 4. Keras: model.fit, data-parallel by our ring
CONTEXT, GLOBAL, STEPS = 8, 24, 5
text = np.frombuffer(Path(__file__).read_bytes(), np.uint8)
starts = np.random.default_rng(1).integers(0, len(text) - CONTEXT - 1, GLOBAL * STEPS)
xs = np.stack([text[i:i + CONTEXT] for i in starts]).astype(np.int32)
ys = text[starts + CONTEXT].astype(np.int32)


def byte_model(cls):
    """Embedding of the last 8 bytes -> Dense -> 256 logits for the next byte."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((CONTEXT,), dtype="int32")
    h = keras.layers.Dense(32, activation="tanh")(keras.layers.Flatten()(keras.layers.Embedding(256, 8)(inputs)))
    model = cls(inputs, keras.layers.Dense(256)(h))
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


model = byte_model(DataParallelModel)
broadcast_weights(model, comm)  # the same seed already gave the same weights; this makes sure of it
history = model.fit(local_rows(xs, GLOBAL, comm), local_rows(ys, GLOBAL, comm), batch_size=GLOBAL // K,
                    shuffle=False, verbose=0)
alone = byte_model(keras.Model)  # one process, the whole batch
alone_history = alone.fit(xs, ys, batch_size=GLOBAL, shuffle=False, verbose=0)
diff = max(float(np.abs(a - b).max()) for a, b in zip(model.get_weights(), alone.get_weights()))
print0(f"\n4. Keras model.fit: {K} ranks x {GLOBAL // K} rows of each global batch of {GLOBAL}, {STEPS} Adam steps")
loss, loss_alone = history.history["loss"][-1], alone_history.history["loss"][-1]
print0(f"   loss logged by fit {loss:.6f} (one process: {loss_alone:.6f}); "
       f"max |weight - 1-process weight| {diff:.2e}")
check(diff < 2e-5 and abs(loss - loss_alone) < 1e-5, "Keras data parallelism drifted from one process")
digest = hashlib.sha1(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
check(len(set(comm.allgather(digest))) == 1, "the Keras ranks hold different weights")
print0("   every rank holds the same weights, equal to one process up to float32 rounding.")
print0("lesson 20 OK")

# Exercises
# 1. Pass a torch tensor that is not contiguous (t[::2]). What does the collective say, and why can it not
#    work in place?
# 2. Time allreduce on a 16 MiB torch tensor and on a 16 MiB JAX array. Where does the difference go?
# 3. Give the ranks unequal rows (B = 13 on 2 ranks). What must the average become to stay exact?
#    (Lesson 06, exercise 3; parallel_lm.train weights each micro-batch by its rows.)
# 4. In average_gradients (parallel_lm/frameworks/keras.py), turn the Embedding's tf.IndexedSlices into a dense
#    tensor (tf.convert_to_tensor) before the all-reduce. How far from one process is part 4 now, and which
#    rows of the embedding moved that one process left alone?
