"""``train --predict PROFILE``: the cost model's step for this very run, printed beside what the run measured.

Nothing the prediction uses comes from the run's own timings:
- communication: the formulas of ``costmodel/formulas.py`` for the run's
  ``--allreduce`` algorithm on PROFILE's alpha, beta and gamma (calibrate
  this machine with ``python -m parallel_lm.calibrate``, with the rank
  count you train with: ranks sharing cores exchange more slowly);
- compute: before training, rank 0 alone times forward + backward of one
  micro-batch of the whole model and one optimizer step, with the run's
  threads per rank, while the other ranks sleep;
- oversubscription, explicitly: when the ranks' threads outnumber the
  cores, each rank computes ranks x threads / cores times slower
  (the cores are shared evenly);
- the step models of ``costmodel/predict.py``: ``predict_step`` for data
  parallelism (buckets all-reduced behind backward, ``step.overlap``'s
  rule), ``predict_layout`` for tensor, pipeline and ZeRO layouts (bubble,
  tensor-parallel all-reduces, pipeline messages, gradient sync after the
  pipeline). The optimizer step is added to both, sharded by ZeRO.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..costmodel.formulas import COSTS
from ..costmodel.predict import predict_layout, predict_step
from ..costmodel.profiles import Profile
from ..services.metrics import write_atomic
from ..parallel.optim import build_optimizer, decay_groups

WARMUP_STEPS = 2  # the first steps pay allocation and the first messages' setup; medians leave them out


@dataclass(frozen=True)
class ComputeProbe:
    """One process's forward + backward of a micro-batch and one optimizer step (seconds), and its setting."""

    micro_batch_s: float
    optimizer_s: float
    micro_batch: int
    threads: int


def measure_compute(cfg, micro: int, threads: int, reps: int = 3) -> ComputeProbe:
    """Time the whole model on one process: median of ``reps`` after one untimed repetition."""
    from ..model.gpt import GPT
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model = GPT(cfg.model).to(device)
    opt = build_optimizer(decay_groups(model.parameters(), cfg.weight_decay), cfg.optimizer, cfg.lr)  # the run's own: its decay groups, betas and per-tensor loops
    x = torch.randint(0, cfg.model.vocab_size, (micro, cfg.model.block_size), device=device)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    fb, step = [], []
    try:
        for i in range(reps + 1):
            t0 = time.perf_counter()
            _, loss = model(x, x)
            loss.backward()
            _sync(device)
            t1 = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            if i:
                fb.append(t1 - t0)
                step.append(time.perf_counter() - t1)
    finally:
        torch.set_num_threads(before)
    return ComputeProbe(statistics.median(fb), statistics.median(step), micro, threads)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def predict(cfg, grid, n_micro: int, probe: ComputeProbe, profile: Profile, n_params: int,
            flops_per_token: float, local_ranks: int, cores: int) -> dict:
    """Predicted terms of one step of this run (seconds), from the probe, the profile and the layout."""
    tokens_per_micro = probe.micro_batch * cfg.model.block_size
    flops_per_s = flops_per_token * tokens_per_micro / probe.micro_batch_s  # achieved, so MFU 1
    devices = max(1, cores // probe.threads)  # ranks that can compute at once
    sharing = max(1.0, local_ranks / devices)
    all_devices = devices * grid.size / local_ranks  # every node like this one
    algorithm = "ring" if cfg.allreduce not in COSTS["allreduce"] else cfg.allreduce
    bytes_per_grad = 2 if cfg.comm_dtype == "fp16" else 4

    def allreduce_s(n_bytes, ranks=grid.replicas, level="dp"):
        return COSTS["allreduce"][algorithm](n_bytes, ranks).time_s(profile.network(n_bytes))

    def p2p_s(n_bytes):
        net = profile.network(n_bytes)
        return net.alpha_s + n_bytes * net.beta_s_per_byte

    shards = grid.tp * grid.pp * (grid.replicas if cfg.zero else 1)
    optimizer = probe.optimizer_s / shards * sharing
    if grid.tp == grid.pp == 1 and not cfg.zero:
        pred = predict_step(n_params=n_params, flops_per_token=flops_per_token,
                            tokens_per_step=cfg.global_batch_size * cfg.model.block_size, ranks=grid.replicas,
                            flops_per_s=flops_per_s, mfu=1.0, allreduce_s=allreduce_s,
                            bucket_bytes=cfg.bucket_mb * 2**20 * bytes_per_grad / 4,
                            grad_bytes_per_param=bytes_per_grad, overlap=cfg.overlap, devices=all_devices)
        return {"step_s": pred.step_s + optimizer, "compute_s": pred.compute_s, "comm_s": pred.comm_s,
                "exposed_comm_s": pred.exposed_comm_s, "optimizer_s": optimizer, "tp_comm_s": 0.0,
                "pp_comm_s": 0.0, "bubble_s": 0.0, "sharing": sharing, "algorithm": algorithm}
    # the layouts here have no cp: dp x cp ranks each computing 1/(dp cp) of the tokens do the same work and
    # average their gradients over the same dp x cp replicas
    pred = predict_layout(n_params=n_params, flops_per_token=flops_per_token, n_layer=cfg.model.n_layer,
                          block_size=cfg.model.block_size, n_embd=cfg.model.n_embd,
                          global_batch=cfg.global_batch_size, dp=grid.replicas, tp=grid.tp, pp=grid.pp,
                          micro_batches=n_micro, zero=cfg.zero, flops_per_s=flops_per_s, mfu=1.0,
                          devices=all_devices,
                          allreduce_s=allreduce_s, p2p_s=p2p_s)
    return {"step_s": pred.step_s + optimizer, "compute_s": pred.compute_s, "comm_s": pred.dp_comm_s,
            "exposed_comm_s": pred.dp_comm_s, "optimizer_s": optimizer, "tp_comm_s": pred.tp_comm_s,
            "pp_comm_s": pred.pp_comm_s, "bubble_s": pred.bubble_s, "sharing": sharing, "algorithm": algorithm}


def measured(records: list) -> dict:
    """Medians of the run's records after the warm-up steps (every step when there are few)."""
    keep = records[WARMUP_STEPS:] or records[-1:]
    out = {}
    for key in ("step_s", "compute_s", "comm_s", "exposed_comm_s", "tp_comm_s", "bubble"):
        values = [getattr(r, key) for r in keep if getattr(r, key) is not None]
        out[key] = statistics.median(values) if values else None
    out["steps"] = len(keep)
    return out


def stack_factors(pred: dict, meas: dict) -> dict | None:
    """How much slower (or faster) this run computed and communicated than predicted: measured / predicted
    forward + backward, and gradient sync; costmodel/stack.py's two factors, from the run itself."""
    compute_p, comm_p = pred["compute_s"] + pred["tp_comm_s"], pred["comm_s"]
    if not meas.get("compute_s") or compute_p <= 0:
        return None
    network = meas["comm_s"] / comm_p if meas.get("comm_s") and comm_p > 0 else 1.0
    return {"compute": meas["compute_s"] / compute_p, "network": network}


def report(pred: dict, meas: dict, probe: ComputeProbe, profile: Profile, local_ranks: int, cores: int,
           ranks: int) -> str:
    """The table printed at the end of a run, with a warning when the profile was calibrated on another rank count."""
    lines = [f"prediction on profile {profile.name!r} ({profile.description or 'no description'}), "
             f"--allreduce {pred['algorithm']}; compute measured before training on one process: "
             f"{probe.micro_batch_s * 1e3:.1f} ms per micro-batch of {probe.micro_batch}, optimizer "
             f"{probe.optimizer_s * 1e3:.1f} ms, {probe.threads} thread(s); {local_ranks} rank(s) x "
             f"{probe.threads} thread(s) on {cores} core(s): compute x{pred['sharing']:.2f}",
             f"{'(median of ' + str(meas['steps']) + ' steps, ms)':<34} {'predicted':>10} {'measured':>10} {'error':>7}"]

    def row(name, p, m):
        err = f"{100 * (p / m - 1):+6.0f}%" if m else f"{'-':>7}"
        shown = f"{m * 1e3:10.2f}" if m is not None else f"{'n/a':>10}"
        lines.append(f"{name:<34} {p * 1e3:10.2f} {shown} {err}")
    row("step", pred["step_s"], meas["step_s"])
    row("forward + backward", pred["compute_s"] + pred["tp_comm_s"], meas["compute_s"])
    row("gradient sync (all of it)", pred["comm_s"], meas["comm_s"])
    if meas["exposed_comm_s"] != meas["comm_s"]:
        row("  exposed (not behind backward)", pred["exposed_comm_s"], meas["exposed_comm_s"])
    if pred["tp_comm_s"]:
        row("tensor-parallel all-reduces", pred["tp_comm_s"], meas["tp_comm_s"])
    if pred["pp_comm_s"]:
        row("pipeline messages", pred["pp_comm_s"], None)
    if pred["bubble_s"]:
        row("pipeline bubble", pred["bubble_s"], None)
    row("optimizer", pred["optimizer_s"], None)
    factors = stack_factors(pred, meas)
    if factors:
        lines.append(f"this run against the model: compute x{factors['compute']:.3f}, network x{factors['network']:.3f} "
                     f"(predict --stack compute={factors['compute']:.3f},network={factors['network']:.3f}, with "
                     "this run's device and network, prices other layouts and scales at these speeds)")
    calibrated = profile.raw.get("ranks")
    if isinstance(calibrated, int) and calibrated != ranks:
        lines.append(f"note: {profile.name!r} was calibrated with {calibrated} ranks and this run has {ranks}; ranks "
                     f"that share cores exchange more slowly (docs/benchmarks.md), so calibrate with "
                     f"mpiexec -n {ranks} python -m parallel_lm.calibrate --out PROFILE")
    return "\n".join(lines)


def write_json(path: Path, pred: dict, meas: dict, probe: ComputeProbe, profile: Profile, layout: dict) -> None:
    doc = {"profile": profile.name, "layout": layout, "probe": probe.__dict__, "predicted": pred, "measured": meas,
           "stack": stack_factors(pred, meas)}
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=1) + "\n"))
