"""Step time and memory of one training step, from a model's size and a communication cost.

Nothing here knows torch or MPI: the caller gives the parameter count, the
training FLOPs per token (``GPT.flops_per_token``: 6N + 12LTC) and a
function that says what one collective on b bytes costs (a closed-form
formula, or the simulator on a two-level cluster). The parts:

- compute = FLOPs of this rank's tokens / (device peak x MFU), times
  ranks/devices when ranks share fewer devices. Backward is two thirds
  of it (two matmuls per forward one).
- data parallel: the gradient (N x grad bytes) is all-reduced in buckets
  of ``bucket_bytes``; with overlap, buckets reduce while backward still
  runs, so only what does not fit behind backward is exposed, and never
  less than the last bucket (it is ready only when backward ends).
- parameter server (sync): workers push gradients and pull parameters
  through k server links (``formulas.parameter_server_sync``), nothing
  overlapped.
- memory per rank: parameters, gradients and AdamW's two moments in fp32
  (4 + 4 + 8 bytes per parameter), the ZeRO paper's accounting
  (Rajbhandari et al. 2020, section 3) without activations.

Device peaks come from ``devices.py`` (each with its source); MFU defaults to PaLM's
measured 46.2% (Chowdhery et al. 2022, table 3) and is a flag.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .formulas import Network, parameter_server_sync
from .memory import state_bytes
from .step import overlap as hidden_behind

DEFAULT_MFU = 0.462
# fp32 weights, fp32 grads, AdamW m and v, no ZeRO: memory.state_bytes("fp32")
BYTES_PER_PARAM = dict(zip(("params", "grads", "optimizer"), state_bytes("fp32")))


@dataclass(frozen=True)
class StepPrediction:
    ranks: int
    strategy: str
    tokens_per_step: int
    compute_s: float
    comm_s: float
    exposed_comm_s: float
    step_s: float
    tokens_per_s: float
    efficiency: float  # tokens/s per rank over one rank's tokens/s with no communication
    memory_bytes: dict

    def to_dict(self) -> dict:
        return asdict(self)


def compute_s(flops_per_token: float, tokens: float, flops_per_s: float, mfu: float = DEFAULT_MFU) -> float:
    if flops_per_s <= 0 or not 0 < mfu <= 1:
        raise ValueError(f"need a positive device throughput and 0 < mfu <= 1 (got {flops_per_s}, {mfu})")
    return flops_per_token * tokens / (flops_per_s * mfu)


def memory_per_rank(n_params: int) -> dict:
    """Bytes of parameters, gradients and optimizer state one data-parallel rank holds."""
    return {k: v * n_params for k, v in BYTES_PER_PARAM.items()}


def data_parallel_comm_s(grad_bytes: float, bucket_bytes: float, allreduce_s: Callable[[float], float]) -> tuple[float, float]:
    """(all buckets' time, the last bucket's time) for a gradient cut into buckets."""
    if grad_bytes <= 0:
        return 0.0, 0.0
    buckets = max(1, math.ceil(grad_bytes / bucket_bytes))
    last = grad_bytes - (buckets - 1) * bucket_bytes
    last_s = allreduce_s(last)
    return (buckets - 1) * allreduce_s(bucket_bytes) + last_s, last_s


def predict_step(*, n_params: int, flops_per_token: float, tokens_per_step: int, ranks: int,
                 flops_per_s: float, mfu: float = DEFAULT_MFU, strategy: str = "data_parallel",
                 allreduce_s: Callable[[float], float] | None = None, bucket_bytes: float = 25 * 2**20,
                 grad_bytes_per_param: int = 4, overlap: bool = True, servers: int = 1,
                 ps_network: Network | None = None, devices: int | None = None) -> StepPrediction:
    """One optimizer step on ``ranks`` ranks; see the module docstring for the parts.

    ``devices``: how many devices the ranks share (None: one each). With
    fewer devices than ranks, as on a laptop running 8 ranks on 2 cores,
    each rank computes ranks/devices times slower.
    """
    grad_bytes = n_params * grad_bytes_per_param
    if strategy == "data_parallel":
        workers = ranks
    elif strategy == "parameter_server":
        if ps_network is None or not 1 <= servers < ranks:
            raise ValueError(f"a parameter server needs a network and 1 <= servers < ranks (got {servers} of {ranks})")
        workers = ranks - servers
    else:
        raise ValueError(f"unknown strategy {strategy!r}; valid: data_parallel, parameter_server")
    sharing = max(1.0, ranks / devices) if devices else 1.0
    compute = compute_s(flops_per_token, tokens_per_step / workers, flops_per_s, mfu) * sharing
    if strategy == "data_parallel":
        if ranks == 1:
            comm = last = 0.0
        else:
            comm, last = data_parallel_comm_s(grad_bytes, bucket_bytes, allreduce_s)
        exposed = hidden_behind(comm, 2 / 3 * compute, last, overlap)
    else:
        comm = exposed = parameter_server_sync(grad_bytes, workers, servers).time_s(ps_network)
    step = compute + exposed
    single = compute_s(flops_per_token, tokens_per_step, flops_per_s, mfu)
    tokens_per_s = tokens_per_step / step
    return StepPrediction(ranks, strategy, tokens_per_step, compute, comm, exposed, step, tokens_per_s,
                          efficiency=(tokens_per_s / ranks) / (tokens_per_step / single),
                          memory_bytes=memory_per_rank(n_params))


def async_ps_updates_per_s(grad_bytes: float, workers: int, servers: int, compute_s: float,
                           net: Network) -> tuple[float, str]:
    """(updates per second, what limits it) for an asynchronous parameter server.

    Nobody waits for anybody: a worker computes, pushes its gradient and
    pulls parameters through its own link (2 alpha + 2n.beta) and goes on;
    each server's link handles every update's shard (one worker's worth of
    ``parameter_server_sync``). So the job runs at the slower of W workers
    cycling and the servers draining: min(W / worker cycle, 1 / server time).
    Asynchrony removes waiting for stragglers; it does not widen the
    servers' links.
    """
    worker_s = compute_s + 2 * net.alpha_s + 2 * grad_bytes * net.beta_s_per_byte
    server_s = parameter_server_sync(grad_bytes, 1, servers).time_s(net)
    by_workers, by_servers = workers / worker_s, 1 / server_s
    return (by_workers, "workers") if by_workers <= by_servers else (by_servers, "server links")


@dataclass(frozen=True)
class LayoutPrediction:
    dp: int
    tp: int
    pp: int
    micro_batches: int
    zero: int
    compute_s: float  # this rank's forward + backward FLOPs, no waiting
    bubble_s: float  # pipeline fill and drain: (p-1)/m of the compute
    tp_comm_s: float  # activation all-reduces inside layers (not overlapped)
    pp_comm_s: float  # activations and their gradients between stages
    dp_comm_s: float  # gradient all-reduce (or ZeRO's reduce-scatter + all-gather) over data-parallel replicas
    step_s: float
    tokens_per_s: float
    memory_bytes: dict

    def to_dict(self) -> dict:
        return asdict(self)


def predict_layout(*, n_params: int, flops_per_token: float, n_layer: int, block_size: int, n_embd: int,
                   global_batch: int, dp: int, tp: int = 1, pp: int = 1, micro_batches: int = 1, zero: int = 0,
                   flops_per_s: float, mfu: float = DEFAULT_MFU, devices: int | None = None,
                   allreduce_s: Callable[[float, int, str], float], p2p_s: Callable[[float], float],
                   activation_bytes: int = 4) -> LayoutPrediction:
    """One step of a dp x tp x pp layout (parallel/grid.py), term by term.

    ``allreduce_s(n_bytes, ranks, level)``: an all-reduce among ``ranks``
    ranks, ``level`` "tp" (inside a node) or "dp" (across); ``p2p_s(n_bytes)``:
    one message between stages. Terms, per rank, with micro = batch/(dp m):
    - compute: FLOPs of batch/dp sequences / (tp pp) on one device;
    - bubble: compute x (pp-1)/m (each of m+pp-1 slots costs compute/m);
    - tensor parallel: per micro-batch 4 all-reduces per layer (f and g in
      attention and MLP, forward and backward) + 2 for the vocabulary-split
      embedding and head, of micro x T x C activations (Megatron, section 3);
    - pipeline: per micro-batch the activations forward and their gradient
      back across this stage's boundary: 2m messages, not overlapped;
    - data parallel: the stage's gradient slice, n/(tp pp) x 4 bytes,
      all-reduced over dp ranks (ZeRO: reduce-scatter + all-gather, the same
      volume), not overlapped in these layouts;
    - memory: ``parallel/zero.memory``'s formula for the n/(tp pp) parameters
      this rank holds (fp32, AdamW), activations not counted.
    """
    sequences = global_batch / dp
    micro = sequences / micro_batches
    compute = compute_s(flops_per_token, sequences * block_size, flops_per_s, mfu) / (tp * pp)
    if devices:
        compute *= max(1.0, dp * tp * pp / devices)
    bubble = compute * (pp - 1) / micro_batches
    act = micro * block_size * n_embd * activation_bytes
    layers = n_layer // pp
    tp_comm = micro_batches * (4 * layers + 2) * allreduce_s(act, tp, "tp") if tp > 1 else 0.0
    pp_comm = 2 * micro_batches * p2p_s(act) if pp > 1 else 0.0
    local = n_params / (tp * pp)
    dp_comm = allreduce_s(4 * local, dp, "dp") if dp > 1 else 0.0
    step = compute + bubble + tp_comm + pp_comm + dp_comm
    moments = 8
    memory = {"params": 4 * local, "grads": 4 * local if zero < 2 else 4 * local / dp,
              "optimizer": moments * local if zero == 0 else (4 + moments) * local / dp}
    return LayoutPrediction(dp, tp, pp, micro_batches, zero, compute, bubble, tp_comm, pp_comm, dp_comm, step,
                            global_batch * block_size / step, memory)
