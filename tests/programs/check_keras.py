"""Run under ``mpiexec -n K``: TensorFlow tensors in our collectives, and Keras 3 trained data-parallel by them.

Cases (report.py):
- ``tensorflow``: allreduce, allreduce_mean, reduce_scatter, all_gather and broadcast on tf tensors give the
  bits the same call gives on a NumPy copy; a new tf tensor comes back and the input is untouched.
- ``custom-loop``: a GradientTape loop whose gradients ``average_gradients`` averages over the ranks, each
  rank on its rows of every global batch.
- ``fit``: ``DataParallelModel.fit`` on ``local_rows`` of the data.
- ``bad-rows``: ``local_rows`` refuses, on every rank, rows that are not whole global batches and a global batch
  that does not split over the ranks.
- ``sparse-uneven``: a sparse gradient (tf.IndexedSlices) with a different number of rows on each rank comes
  back holding every rank's rows, rank after rank, each divided by the ranks (beside a None gradient, kept,
  and a dense one, averaged).
Each training case starts the ranks from different seeds, so ``broadcast_weights`` must make them equal; it
then ends with the same bits on every rank, within float32 rounding of one process on the whole batch.
``fit`` must also log the whole batch's loss, as one process does. The model is a next-byte predictor over 8 bytes of this file: Embedding, Dense, Dense to 256 logits, Adam.
"""
import hashlib
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from mpi4py import MPI
from report import case

from parallel_lm.comm import all_gather, allreduce, allreduce_mean, broadcast, reduce_scatter
from parallel_lm.frameworks.keras import DataParallelModel, average_gradients, broadcast_weights, local_rows
from parallel_lm.runtime import start_script

start_script()
comm = MPI.COMM_WORLD
rank, K = comm.Get_rank(), comm.Get_size()
CONTEXT, GLOBAL_BATCH, STEPS, TOL = 8, 24, 6, 2e-5


def report(name: str, wrong: list[str], good: str) -> None:
    bad = [w for ws in comm.allgather(wrong) for w in ws]
    if rank == 0:
        case(name, not bad, f"{name}: " + (f"{bad[:4]}" if bad else good), wrong=bad)


# 1. tf tensors in the collectives
OPS = {"allreduce": allreduce, "allreduce_mean": allreduce_mean, "reduce_scatter": reduce_scatter,
       "all_gather": all_gather, "broadcast": broadcast}
wrong = []
for name, op in OPS.items():
    for n in (1, 7, 1001):
        values = np.random.default_rng(n * 100 + rank).uniform(-1, 1, n).astype(np.float32)
        want = op(values.copy(), comm)
        t = tf.constant(values)
        got = op(t, comm)
        if not (isinstance(got, tf.Tensor) and np.array_equal(got.numpy(), want) and np.array_equal(t.numpy(), values)):
            wrong.append(f"{name} n={n}")
report("tensorflow", wrong, "5 collectives x 3 lengths bitwise as on NumPy, a new tf tensor back, input untouched")

# 1b. a sparse gradient whose ranks hold different numbers of rows
rows = rank + 1
mine = tf.IndexedSlices(tf.fill([rows, 3], float(rank + 1)), tf.range(rows, dtype=tf.int64) + 10 * rank, [40, 3])
nothing, got, dense = average_gradients([None, mine, tf.fill([2], float(rank))], comm)
want_idx = np.concatenate([np.arange(q + 1) + 10 * q for q in range(K)])
want_val = np.concatenate([np.full((q + 1, 3), (q + 1) / K, np.float32) for q in range(K)])
ok = isinstance(got, tf.IndexedSlices) and np.array_equal(got.indices.numpy(), want_idx) \
    and np.allclose(got.values.numpy(), want_val, rtol=1e-7, atol=0) \
    and nothing is None and np.allclose(dense.numpy(), (K - 1) / 2, rtol=1e-7)
report("sparse-uneven", [] if ok else [f"rank {rank}: {got}"],
       f"ranks holding 1..{K} rows: all {len(want_idx)} rows gathered in rank order, values / {K}; "
       "a None gradient stays None beside them, a dense one is averaged")

# 1c. rows that do not split: a clear error on every rank
cases = [(np.zeros(50), 24, "not a whole number of global batches")]
if K > 1:  # one rank takes any batch
    cases.append((np.zeros(6 * K + 6), 3 * K + 1, "does not split over"))
said = []
for rows, batch, expected in cases:
    try:
        local_rows(rows, batch, comm)
        said.append(f"no error for {len(rows)} rows in global batches of {batch}")
    except ValueError as e:
        if expected not in str(e):
            said.append(str(e))
report("bad-rows", [f"rank {rank}: {w}" for w in said],
       "local_rows refuses a global batch that does not split over the ranks, and a partial last batch")

# 2. training: the data and the model
text = np.frombuffer(Path(__file__).read_bytes(), np.uint8)
starts = np.random.default_rng(0).integers(0, len(text) - CONTEXT - 1, GLOBAL_BATCH * STEPS)
x = np.stack([text[s:s + CONTEXT] for s in starts]).astype(np.int32)
y = text[starts + CONTEXT].astype(np.int32)


def build(cls, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((CONTEXT,), dtype="int32")
    h = keras.layers.Flatten()(keras.layers.Embedding(256, 8)(inputs))
    h = keras.layers.Dense(32, activation="tanh")(h)
    model = cls(inputs, keras.layers.Dense(256)(h))
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def judge(name: str, model: keras.Model, alone: keras.Model, how: str, losses=None) -> None:
    weights = model.get_weights()
    diff = max(float(np.abs(a - b).max()) for a, b in zip(weights, alone.get_weights()))
    if losses is not None:  # what fit logged: the global batch's loss, as one process logs it
        diff = max(diff, abs(losses[-1] - alone_losses[-1]))
    digest = hashlib.sha1(b"".join(w.tobytes() for w in weights)).hexdigest()
    same = len(set(comm.allgather(digest))) == 1
    moved = max(float(np.abs(a - b).max()) for a, b in zip(weights, start))
    wrong = [] if same and diff < TOL and moved > 100 * TOL else [
        f"rank {rank}: same bits on every rank {same}, max |w - 1-process w| {diff:.2e}, moved {moved:.2e}"]
    report(name, wrong, f"{how}: {K} ranks x {GLOBAL_BATCH // K} rows, {2 * STEPS} Adam steps: every rank the same "
                        f"bits, max |w - 1-process w| {diff:.2e} (tolerance {TOL:g}), weights moved {moved:.2e}")


alone = build(keras.Model, seed=0)  # one process, the whole batch
start = alone.get_weights()
alone_losses = alone.fit(x, y, batch_size=GLOBAL_BATCH, shuffle=False, epochs=2, verbose=0).history["loss"]

# 2a. a custom loop: GradientTape, our all-reduce, the optimizer
model = build(keras.Model, seed=rank)  # each rank its own initial weights ...
broadcast_weights(model, comm)  # ... until rank 0's reach every rank (rank 0 built seed 0's: start)
mine_x, mine_y = local_rows(x, GLOBAL_BATCH, comm), local_rows(y, GLOBAL_BATCH, comm)
local = GLOBAL_BATCH // K
for step in range(2 * STEPS):  # two epochs
    rows = slice(step % STEPS * local, (step % STEPS + 1) * local)
    with tf.GradientTape() as tape:
        loss = model.compute_loss(y=mine_y[rows], y_pred=model(mine_x[rows], training=True))
    grads = average_gradients(tape.gradient(loss, model.trainable_variables), comm)
    model.optimizer.apply(grads, model.trainable_variables)
judge("custom-loop", model, alone, "GradientTape loop + average_gradients")

# 2b. model.fit with the data-parallel train step
model = build(DataParallelModel, seed=rank)
broadcast_weights(model, comm)
losses = model.fit(mine_x, mine_y, batch_size=local, shuffle=False, epochs=2, verbose=0).history["loss"]
judge("fit", model, alone, "DataParallelModel.fit, loss logged as one process", losses)
