"""Checkers of the exercises that plan and measure: one process, against the project's formulas and tools."""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np

from ..costmodel.formulas import COSTS, Network
from ..costmodel.memory import zero_shard
from ..costmodel.transformer import RECOMPUTE, ModelShape
from .verdicts import first, within


def check_fit_alpha_beta(module, comm, rng):
    """Alpha and beta within 25% of those that made timings over 8 B-64 MiB with 3% and 8% noise, neither negative."""
    sizes = 2.0 ** np.arange(3, 27)  # 8 B to 64 MiB
    for noise in [0.03, 0.08]:
        alpha, beta = float(rng.uniform(2e-6, 1e-4)), float(rng.uniform(1e-10, 2e-9))
        times = (alpha + beta * sizes) * rng.lognormal(0.0, noise, sizes.size)
        got = module.fit_alpha_beta(sizes.copy(), times.copy())
        a, b = (float(x) for x in got)
        failure = None if a >= 0 and b >= 0 else f"alpha {a:.3g} s and beta {b:.3g} s/byte: neither may be negative"
        yield (f"alpha {alpha * 1e6:.1f} us, beta {1 / beta / 1e9:.2f} GB/s, {noise:.0%} noise over 8 B-64 MiB",
               first(failure, within(a, alpha, "alpha (s)", 0.25), within(b, beta, "beta (s/byte)", 0.25)))


def check_ring_all_gather(module, comm, rng):
    """On 7 simulated ranks the gathered data is exact; on 100 the simulated time equals the ring formula to 1e-6."""
    from ..sim import Topology, simulate
    fn = module.ring_all_gather
    p_small = 7
    n = int(rng.integers(3, 12)) * p_small + 3  # chunks of unequal length
    data = simulate("all_gather", fn, p_small, 4 * n, Topology.flat(Network(1e-5, 1e-9)), data=True,
                    seed=int(rng.integers(1 << 30)))
    yield f"{p_small} simulated ranks with real data, {n} elements", (
        None if data.max_abs_error == 0 else f"the gathered buffer is off by up to {data.max_abs_error:g} on some rank")
    net = Network(float(rng.uniform(1e-6, 5e-5)), float(rng.uniform(1e-10, 1e-9)))
    for p in [100]:
        n_bytes = 4 * p * int(rng.integers(1000, 5000))
        run = simulate("all_gather", fn, p, n_bytes, Topology.flat(net))
        formula = COSTS["all_gather"]["ring"](n_bytes, p).time_s(net)
        yield f"{p} virtual ranks, {n_bytes} bytes, flat network: time against (p-1).alpha + (p-1)/p.n.beta", \
            within(run.time_s, formula, f"simulated time (s), {run.messages} messages", 1e-6)


def check_model_state_bytes(module, comm, rng):
    """24 random layouts (dp, tp, pp, ZeRO 0-3) of mixed-precision Adam against the project's formula, to 1e-9."""
    for _ in range(3):
        cases = []
        for _ in range(8):
            tp, pp, dp = (int(x) for x in rng.choice([1, 2, 4, 8], 3))
            params, zero = float(rng.integers(1, 2000)) * 1e8, int(rng.integers(0, 4))
            want = sum(zero_shard((2, 2, 12), params / (tp * pp), dp, zero).values())
            cases.append((params, dp, tp, pp, zero, want))
        failure = first(*(within(module.model_state_bytes(params, dp, tp, pp, zero), want,
                                    f"{params:.3g} parameters, dp {dp}, tp {tp}, pp {pp}, ZeRO-{zero}", 1e-9)
                          for params, dp, tp, pp, zero, want in cases))
        yield "8 layouts of mixed-precision Adam", failure


def check_activation_bytes(module, comm, rng):
    """Each recomputation mode, with and without sequence parallelism, against the project's formula, to 1e-9."""
    for recompute in RECOMPUTE:
        for sp in (False, True):
            h_per_head, a = int(rng.choice([32, 64, 128])), int(rng.choice([8, 16, 32, 96]))
            s, b, t = int(rng.choice([512, 2048, 4096])), int(rng.integers(1, 5)), int(rng.choice([1, 2, 4, 8]))
            shape = ModelShape(n_layer=1, n_embd=a * h_per_head, n_head=a, seq_len=s, vocab_size=50304)
            want = shape.layer_activation_bytes(b, tp=t, sequence_parallel=sp, recompute=recompute)
            got = module.activation_bytes(s, b, a * h_per_head, a, t=t, sequence_parallel=sp, recompute=recompute)
            yield f"recompute {recompute}, sequence parallel {sp}", within(
                got, want, f"s {s}, b {b}, h {a * h_per_head}, a {a}, t {t}", 1e-9)


def _crash_halfway(real_save):
    """A torch.save that writes half of what the real one would, then dies."""
    def save(obj, f, *args, **kwargs):
        data = io.BytesIO()
        real_save(obj, data, *args, **kwargs)
        half = data.getvalue()[: len(data.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as out:
                out.write(half)
        else:
            f.write(half)
        raise RuntimeError("simulated crash while writing the checkpoint")
    return save


def _same(loaded, state) -> bool:
    import torch
    return loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def check_save_atomic(module, comm, rng):
    """A save loads with weights_only=True; a crash halfway through the next save leaves the old checkpoint loadable
    and no stray files; a later complete save replaces it."""
    import torch
    old = {"w": torch.from_numpy(rng.standard_normal(500)), "step": torch.tensor(int(rng.integers(100)))}
    new = {"w": torch.from_numpy(rng.standard_normal(500)), "step": torch.tensor(int(rng.integers(100, 200)))}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "ckpt.pt")
        module.save_atomic(old, path)
        loaded = torch.load(path, weights_only=True)
        yield "save, then torch.load(path, weights_only=True)", None if _same(loaded, old) else "it loads other values"
        real = torch.save
        patched = {name for name, value in vars(module).items() if value is real}
        torch.save = _crash_halfway(real)
        for name in patched:
            setattr(module, name, torch.save)
        try:
            module.save_atomic(new, path)
        except RuntimeError:
            pass
        finally:
            torch.save = real
            for name in patched:
                setattr(module, name, real)
        left = sorted(set(os.listdir(folder)) - {"ckpt.pt"})
        try:
            survived = _same(torch.load(path, weights_only=True), old)
            why = "it loads, but not the old values"
        except Exception as e:  # noqa: BLE001 -- a torn file: any unpickling error
            survived, why = False, f"torch.load fails: {type(e).__name__}: {str(e)[:80]}"
        yield "a crash halfway through the next save", first(
            None if survived else f"the old checkpoint did not survive the crash: {why}",
            None if not left else f"files left behind in the folder: {left}")
        module.save_atomic(new, path)
        yield "then a save that completes", first(
            None if _same(torch.load(path, weights_only=True), new) else "it loads other values",
            None if sorted(os.listdir(folder)) == ["ckpt.pt"] else f"the folder holds {sorted(os.listdir(folder))}")
