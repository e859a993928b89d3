"""Checkers of the exercises on training layouts: against one process doing the same arithmetic."""
from __future__ import annotations

import numpy as np

from ..comm.topology import chunk_offsets
from ..comm.trace import CountingComm
from .verdicts import at_most, exactly, first, mismatch, unchanged


def check_average_gradients(module, comm, rng):
    """Three SGD steps with the learner's averaging equal one process on the whole batch, to 1e-12, parameter by
    parameter."""
    import torch
    p, r = comm.Get_size(), comm.Get_rank()
    torch.set_default_dtype(torch.float64)
    width = int(rng.integers(3, 9))
    torch.manual_seed(int(rng.integers(1 << 30)))
    one = torch.nn.Sequential(torch.nn.Linear(5, width), torch.nn.Tanh(), torch.nn.Linear(width, 2))
    mine = torch.nn.Sequential(torch.nn.Linear(5, width), torch.nn.Tanh(), torch.nn.Linear(width, 2))
    mine.load_state_dict(one.state_dict())
    opt_one, opt_mine = (torch.optim.SGD(m.parameters(), lr=0.3) for m in (one, mine))
    per_rank = int(rng.integers(2, 5))
    failure = None
    for step in range(3):
        x = torch.from_numpy(rng.standard_normal((p * per_rank, 5)))
        y = torch.from_numpy(rng.standard_normal((p * per_rank, 2)))
        for model, opt, rows in ((one, opt_one, slice(None)), (mine, opt_mine, slice(r * per_rank, (r + 1) * per_rank))):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x[rows]), y[rows]).backward()
            if model is mine:
                module.average_gradients(model, comm)
            opt.step()
        failure = failure or first(*(mismatch(a.detach().numpy(), b.detach().numpy(),
                                              f"after step {step + 1}, parameter {name} (one process's)", rtol=1e-12, atol=1e-12)
                                     for (name, a), b in zip(mine.named_parameters(), one.parameters())))
    yield f"3 SGD steps, {per_rank} rows per rank, hidden width {width}", failure


def check_row_parallel_linear(module, comm, rng):
    """y = x @ W.T from input features cut over the ranks (p - 1 of them, so one rank holds none, and more) equals one
    process's product to 1e-10, on every rank."""
    p, r = comm.Get_size(), comm.Get_rank()
    for k in [p - 1, int(rng.integers(p + 1, 40))]:
        batch, out = int(rng.integers(1, 6)), int(rng.integers(1, 9))
        x, w = rng.standard_normal((batch, k)), rng.standard_normal((out, k))
        offs = chunk_offsets(k, p)
        mine = slice(offs[r], offs[r + 1])
        got = module.row_parallel_linear(np.ascontiguousarray(x[:, mine]), np.ascontiguousarray(w[:, mine]), comm)
        yield f"{k} input features cut over {p} ranks ({np.diff(offs).tolist()})", \
            mismatch(got, x @ w.T, "y = x @ W.T (one process's)", rtol=1e-10, atol=1e-10)


def check_pipeline_forward(module, comm, rng):
    """The last rank's outputs equal one process applying every stage, to 1e-12; every other rank sends exactly
    one message per micro-batch, synchronously, and completes every request it starts (an Isend never waited on
    fails)."""
    p, r = comm.Get_size(), comm.Get_rank()
    for m in [1, int(rng.integers(3, 8))]:
        shape = (int(rng.integers(1, 5)), int(rng.integers(2, 6)))
        weights = [rng.standard_normal((shape[1], shape[1])) for _ in range(p)]
        stages = [lambda x, w=w, i=i: np.tanh(x @ w) + i for i, w in enumerate(weights)]
        batches = [rng.standard_normal(shape) for _ in range(m)]
        counting = CountingComm(comm)
        got = module.pipeline_forward(batches if r == 0 else [None] * m, stages[r], shape, counting)
        failure = None
        if r == p - 1:
            want = []
            for x in batches:
                for stage in stages:
                    x = stage(x)
                want.append(x)
            if got is None or len(got) != m:
                failure = f"the last rank returned {'None' if got is None else f'{len(got)} outputs'}, expected {m}"
            else:
                failure = first(*(mismatch(g, w, f"micro-batch {i}'s output (one process's)", rtol=1e-12, atol=1e-12)
                                  for i, (g, w) in enumerate(zip(got, want))))
        else:
            failure = exactly(counting.sent, m, "messages sent", "one per micro-batch")
        yield f"{m} micro-batch{'es' if m > 1 else ''} of shape {shape}", failure


def check_zero1_step(module, comm, rng):
    """Three momentum-SGD steps leave every rank with one process's parameters and its own shard of the momentum,
    to 1e-12, for n < p and n not divisible by p."""
    p, r = comm.Get_size(), comm.Get_rank()
    for n in [p - 1, int(rng.integers(2 * p, 50)) * p + 1]:
        lr, beta = float(rng.uniform(0.01, 0.2)), float(rng.uniform(0.5, 0.95))
        offs = chunk_offsets(n, p)
        params = rng.standard_normal(n)
        mine, momentum = params.copy(), np.zeros(offs[r + 1] - offs[r])
        whole_momentum = np.zeros(n)
        failure = None
        for step in range(3):
            grads = [rng.standard_normal(n) for _ in range(p)]
            module.zero1_step(mine, grads[r].copy(), momentum, comm, lr, beta)
            whole_momentum = beta * whole_momentum + np.mean(grads, axis=0)
            params = params - lr * whole_momentum
            failure = failure or first(
                mismatch(mine, params, f"after step {step + 1}, the parameters (one process's SGD)", rtol=1e-12, atol=1e-12),
                mismatch(momentum, whole_momentum[offs[r]:offs[r + 1]], f"after step {step + 1}, this rank's momentum shard",
                         rtol=1e-12, atol=1e-12))
        yield f"{n} parameters, 3 steps", failure


def _torch_scales(flags: list[bool], scale: float, growth: float, backoff: float, interval: int) -> list[float]:
    """The scale after each step by torch.amp's own update rule (``torch._amp_update_scale_``)."""
    import torch
    s, tracker, out = torch.tensor([scale], dtype=torch.float32), torch.zeros(1, dtype=torch.int32), []
    for found_inf in flags:
        torch._amp_update_scale_(s, tracker, torch.tensor([float(found_inf)]), growth, backoff, interval)
        out.append(float(s[0]))
    return out


def check_loss_scaler(module, comm, rng):
    """Over 40 steps with an overflow on one rank in one step in four, every rank skips exactly the overflowing steps,
    unscales the kept gradients and follows torch.amp's scale rule (growth, backoff, interval)."""
    p, r = comm.Get_size(), comm.Get_rank()
    interval = int(rng.integers(2, 5))
    steps, scale = 40, 2.0 ** int(rng.integers(8, 16))
    culprit = rng.integers(0, p, steps)  # the one rank whose gradient overflows, where one does
    overflow = rng.random(steps) < 0.25
    scaler = module.LossScaler(scale=scale, growth=2.0, backoff=0.5, growth_interval=interval)
    want = _torch_scales(list(overflow), scale, 2.0, 0.5, interval)
    failure = None
    for step in range(steps):  # every rank calls step() every time, even after a failure: it may communicate
        grad = rng.standard_normal(6) * scaler.scale
        if overflow[step] and culprit[step] == r:
            grad[0] = np.inf
        before, original = scaler.scale, grad.copy()
        kept = scaler.step([grad], comm)
        if failure:
            continue
        if bool(kept) == bool(overflow[step]):
            failure = f"step {step}: returned {kept!r}, expected {not overflow[step]}: " + (
                f"rank {culprit[step]}'s gradient holds an inf, so every rank skips" if overflow[step]
                else "no gradient overflowed")
        elif kept:
            failure = mismatch(grad, original / before, f"step {step}: the unscaled gradient", rtol=1e-15)
        if not failure and not np.isclose(scaler.scale, want[step]):
            failure = (f"step {step}: scale {scaler.scale:g}, expected {want[step]:g} "
                       f"(torch.amp's rule, growth interval {interval})")
    yield f"{steps} steps, growth interval {interval}, an overflow on one rank in 1 of 4", failure


def check_ring_attention(module, comm, rng):
    """The output equals one process's softmax attention over every rank's keys and values, to 1e-10;
    at most 2(p-1) messages (K and V once around the ring)."""
    p, r = comm.Get_size(), comm.Get_rank()
    for tq, tk, d in [(1, 1, 2), (int(rng.integers(2, 7)), int(rng.integers(2, 7)), int(rng.integers(3, 9)))]:
        q = [rng.standard_normal((tq, d)) * 3 for _ in range(p)]
        k = [rng.standard_normal((tk, d)) * 3 for _ in range(p)]
        v = [rng.standard_normal((tk, d)) for _ in range(p)]
        counting = CountingComm(comm)
        got = module.ring_attention(q[r].copy(), k[r].copy(), v[r].copy(), counting)
        scores = q[r] @ np.concatenate(k).T / np.sqrt(d)
        weights = np.exp(scores - scores.max(axis=1, keepdims=True))
        want = weights / weights.sum(axis=1, keepdims=True) @ np.concatenate(v)
        yield f"{tq} queries, {tk} keys per rank, head size {d}", first(
            mismatch(got, want, "the attention output (one process's softmax attention)", rtol=1e-10, atol=1e-10),
            at_most(counting.sent, 2 * (p - 1), "messages sent", "2(p-1): K and V once around the ring"))


def check_allreduce_tensor(module, comm, rng):
    """A torch tensor comes back itself, its memory unmoved, holding MPI_Allreduce's sum bitwise; a JAX array comes
    back as a new jax.Array holding that sum, the input untouched; float32 and float64, empty to long."""
    import jax
    import jax.numpy as jnp
    import torch
    from mpi4py import MPI
    jax.config.update("jax_enable_x64", True)
    p, r = comm.Get_size(), comm.Get_rank()
    for dtype in (np.float32, np.float64):
        for n in (0, int(rng.integers(1, 9)), 1 << 16):
            values = [rng.standard_normal(n).astype(dtype) for _ in range(p)][r]
            library = values.copy()
            comm.Allreduce(MPI.IN_PLACE, library, op=MPI.SUM)
            t = torch.from_numpy(values.copy())
            ptr = t.data_ptr()
            got = module.allreduce_tensor(t, comm)
            failure = None if got is t and t.data_ptr() == ptr else \
                f"a torch tensor must be summed in place and returned itself (got a {type(got).__name__})"
            yield f"torch {np.dtype(dtype).name}, {n} elements", first(failure, mismatch(t.numpy(), library,
                                                                                         "the sum (MPI_Allreduce's)"))
            x = jnp.asarray(values)
            got = module.allreduce_tensor(x, comm)
            failure = None if isinstance(got, jax.Array) and got is not x else \
                f"a JAX array is immutable: return a new jax.Array (got a {type(got).__name__})"
            yield f"JAX {np.dtype(dtype).name}, {n} elements", first(
                failure, unchanged(np.asarray(x), values, "the JAX input"),
                mismatch(np.asarray(got) if isinstance(got, jax.Array) else None, library, "the sum (MPI_Allreduce's)"))

