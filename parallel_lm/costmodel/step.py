"""One training step of a layout (layout.py) on a GPU cluster, term by term.

The step of one pipeline (the slowest stage paces it):

    step = m·t_stage_max + (pp - 1)/v·t_stage_mean      micro-batches + interleaved bubble
         + exposed data-parallel gradient sync            (see ``overlap``)
         + optimizer step                                 (element-wise, HBM bound)

A stage's time per micro-batch is its layers' forward, backward and
recomputed forward, each the sum of
- the GEMMs (``Device.gemm_s``: roofline with a sustained efficiency and a
  fixed cost per GEMM), tensor-parallel shards of them on this GPU;
- the element-wise kernels (``elementwise_bytes``) at HBM speed;
- the tensor-parallel all-reduces, which sit between GEMMs that need their
  result and so are never overlapped: 2 in each forward, 2 in backward,
  2 more in a fully recomputed forward (Narayanan et al. 2021, section
  3.3); with sequence parallelism each is a reduce-scatter + all-gather
  pair with the same bytes (Korthikanti et al. 2022, section 4.2.2);
- the messages between stages, 2·v per micro-batch on the critical path;
  with scatter/gather (Narayanan et al. 2021, section 4.1) each tensor rank
  sends 1/t of the activation on its own NIC and the next stage all-gathers
  it over NVLink;
plus the embedding on the first stage and the logits and loss on the last.

Overlap, the same rule on every path (``overlap``): tensor-parallel and
pipeline messages are exposed; the data-parallel gradient sync (all-reduce,
or ZeRO's reduce-scatter) hides behind the backward of the last
micro-batch when overlap is on, and is never shorter than its last bucket;
ZeRO-3's traffic (per layer and micro-batch: two or three parameter
all-gathers and one gradient reduce-scatter, on the same links, and no
gradient all-reduce at the end) is prefetched one layer ahead and hides
behind ``ZERO3_OVERLAP`` of that layer's compute, the first gather never.

Memory per GPU is layout.py's ``memory_per_gpu``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .devices import GIB, Device
from .formulas import all_gather_ring, all_to_all_pairwise, allreduce_ring, reduce_scatter_ring
from .layout import Cluster, Layout, memory_per_gpu, stage_params, state_kind, value_bytes
from .transformer import ModelShape

# Adam step, bytes read + written per parameter: mixed: grad, master, m, v read (16), master, m, v written (12),
# 16-bit weights written (2), plus the grad-norm read (4) and zeroing the gradient (4); fp32: 16 + 12 + 4 + 4.
OPTIMIZER_TRAFFIC = {"mixed": 38, "fp32": 36}
# Of a layer's compute, the share behind which ZeRO-3's gathers and reduce-scatter run: while the collectives'
# kernels run, the GEMMs beside them slow down (both take the GPU's SMs and memory bandwidth). Fitted to the six
# ZeRO-3 rows of Narayanan et al. 2021, Table 2 (benchmarks/published_runs.py --zero3).
ZERO3_OVERLAP = 0.6
# The share of causal attention's score tiles a flash kernel computes: those on or below the diagonal (Dao 2023,
# FlashAttention-2, section 3.1.1: the blocks above it are skipped), about half for sequences of many blocks.
FLASH_CAUSAL = 0.5


def overlap(comm_s: float, hidden_behind_s: float, last_s: float, enabled: bool = True) -> float:
    """Exposed time of communication that may run behind ``hidden_behind_s`` of compute.

    The one overlap rule of the predictor: what does not fit behind the
    compute is exposed, and never less than ``last_s`` (the part that can
    only start when that compute ends, e.g. the last gradient bucket).
    """
    if not enabled or comm_s <= 0:
        return comm_s
    return min(comm_s, max(comm_s - hidden_behind_s, last_s))


@dataclass(frozen=True)
class RunPrediction:
    gpus: int
    micro_batches: int
    step_s: float
    tflops_per_gpu: float  # hardware FLOPs (recompute counted) per GPU per second, Megatron's convention
    mfu: float  # model FLOPs only, over the device peak
    hfu: float  # hardware FLOPs over the device peak
    tokens_per_s: float
    terms_s: dict  # where the step goes
    memory_bytes: dict  # weights, gradients, optimizer, activations (the fullest stage)
    memory_gib_per_gpu: float
    device_memory_gib: float
    fits: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _gemm(dev: Device, prec: str, m: float, n: float, k: float, batch: float = 1.0, w: int = 2) -> float:
    """One (batched) GEMM of (m x k) by (k x n)."""
    return dev.gemm_s(2 * m * n * k * batch, w * batch * (m * k + k * n + m * n), prec)


def layer_times(shape: ModelShape, lay: Layout, dev: Device) -> dict:
    """Forward GEMM time, attention-core GEMM time and element-wise bytes of one block, one micro-batch, one GPU."""
    t, w, prec = lay.tp, value_bytes(lay.precision), lay.precision
    b, s, h, f, kv = lay.micro_batch, shape.seq_len, shape.n_embd, shape.ffn, shape.kv_width
    q_len = s / lay.cp  # this GPU's queries; they attend to all s keys (ring attention)
    tokens, heads, hd = b * q_len, shape.n_head / t, shape.head_dim
    routed = tokens * shape.active_mlps  # rows through the MLPs (balanced experts: the same on every GPU)
    up = (shape.mlp_matrices - 1) * f / t  # up (and a gated MLP's gate, one GEMM of twice the width)
    weights = (_gemm(dev, prec, tokens, (h + 2 * kv) / t, h, w=w) + _gemm(dev, prec, tokens, h, h / t, w=w)
               + _gemm(dev, prec, routed, up, h, w=w) + _gemm(dev, prec, routed, h, f / t, w=w))
    if shape.n_experts:
        weights += _gemm(dev, prec, tokens, shape.n_experts, h, w=w)  # the router
    core = _gemm(dev, prec, q_len, s, hd, b * heads, w) + _gemm(dev, prec, q_len, hd, s, b * heads, w)
    if shape.fused_attention:  # flash attention skips the tiles above the causal diagonal: about half the work
        core *= FLASH_CAUSAL
    return {"weights_s": weights, "core_s": core, **elementwise_bytes(shape, lay, w)}


def elementwise_bytes(shape: ModelShape, lay: Layout, w: int) -> dict:
    """Bytes the element-wise kernels of one block's forward read and write (fused as in Megatron-LM).

    LayerNorm x2 (read, write), bias-dropout-add x2 (branch and residual
    in, sum out, mask out), bias-GeLU (in, out), and in the attention core
    the fused scale-mask-softmax (in, out) and its dropout (in, out, mask).
    Hidden-size tensors are split over tensor ranks only with sequence
    parallelism. Backward moves twice the forward's bytes (saved input and
    output gradient in, input gradient out).
    """
    b, s, h, t = lay.micro_batch, shape.seq_len, shape.n_embd, lay.tp
    q_len = s / lay.cp
    mask = 1 if shape.dropout else 0
    hidden = b * q_len * h / (t if lay.sequence_parallel else 1)
    scores = b * shape.n_head / t * q_len * s
    # the MLP's activation: bias-GeLU reads f and writes f; SwiGLU reads gate and up and writes their product
    act_fn = shape.mlp_matrices * w * b * q_len * shape.ffn * shape.active_mlps / t
    rest = 2 * (2 * w * hidden) + 2 * ((3 * w + mask) * hidden) + act_fn
    core = 2 * w * scores + ((2 * w + mask) * scores if shape.dropout else 0)
    if shape.fused_attention:  # the scores never leave the chip: softmax and its dropout run inside the kernel
        core = 0.0
    return {"rest_bytes": rest, "core_bytes": core}


def predict_run(shape: ModelShape, lay: Layout, cluster: Cluster) -> RunPrediction:
    """The step time, FLOP rates and memory of ``lay`` on ``cluster``; see the module docstring."""
    problems = lay.problems(shape)
    if problems:
        raise ValueError("; ".join(problems))
    dev, prec, t, pp, v = cluster.device, lay.precision, lay.tp, lay.pp, lay.virtual_stages
    w = value_bytes(prec)
    b, s, h = lay.micro_batch, shape.seq_len, shape.n_embd
    m = lay.micro_batches
    tokens = b * s // lay.cp  # this GPU's
    lt = layer_times(shape, lay, dev)

    # tensor-parallel collectives: ranks consecutive, so inside a node while t <= ranks per node
    tp_local, tp_nodes = cluster.group(t, 1)
    act = tokens * h * w
    tp_ar = cluster.allreduce_s(act, tp_local, tp_nodes) if t > 1 else 0.0
    cp_fwd, cp_bwd = ring_attention_s(shape, lay, cluster, lt["core_s"])
    a2a = expert_all_to_all_s(shape, lay, cluster)
    fwd = lt["weights_s"] + lt["core_s"] + dev.memory_s(lt["rest_bytes"] + lt["core_bytes"]) + 2 * tp_ar \
        + cp_fwd + 2 * a2a
    # a fused kernel's backward computes the scores again from Q and K: 2.5 times its forward, not 2
    core_bwd = (2.5 if shape.fused_attention else 2) * lt["core_s"]
    bwd = 2 * lt["weights_s"] + core_bwd + dev.memory_s(2 * (lt["rest_bytes"] + lt["core_bytes"])) + 2 * tp_ar \
        + cp_bwd + 2 * a2a
    # selective recomputation redoes the attention core, which a fused kernel never keeps: nothing to redo
    selective = 0.0 if shape.fused_attention else lt["core_s"] + dev.memory_s(lt["core_bytes"])
    recompute = {"none": 0.0, "full": fwd, "selective": selective}[lay.recompute]

    # ZeRO-3, per layer and micro-batch: its parameters all-gathered before its forward, again before backward
    # (and before a recomputed forward), and its gradient reduce-scattered after backward, all on the same links
    replicas = lay.dp * lay.cp  # GPUs holding the same (non-expert) parameters
    dp_local, dp_nodes = cluster.group(replicas, t)
    layer_param_bytes = shape.layer_params(shape.n_experts // lay.ep) / t * w
    zero3_exposed = 0.0
    if lay.zero == 3 and replicas > 1:
        net = cluster.network_of(replicas, t)
        gather = all_gather_ring(layer_param_bytes, replicas).time_s(net)
        traffic = (2 + (lay.recompute == "full")) * gather + reduce_scatter_ring(layer_param_bytes, replicas).time_s(net)
        # prefetched behind the layer before, but only ZERO3_OVERLAP of that compute hides it (the first gather never)
        zero3_exposed = overlap(traffic, ZERO3_OVERLAP * (fwd + bwd + recompute), gather)

    per_stage = lay.layers_per_stage(shape.n_layer)
    layer = fwd + bwd + recompute + zero3_exposed
    embed = dev.memory_s(3 * tokens * h * (2 * w + 1))  # lookup, dropout; its backward scatter-add
    logit_flops = 2 * tokens * h * shape.vocab_size / t
    logit_bytes = w * (tokens * h + h * shape.vocab_size / t + tokens * shape.vocab_size / t)
    # cross-entropy over fp32 logits: cast, max, exp-sum, softmax-gradient passes (forward) and twice that back
    ce_bytes = 3 * tokens * shape.vocab_size / t * (w + 4 * 4)
    # max, sum and target logit: three tiny all-reduces over the tensor ranks
    ce_comm = 3 * allreduce_ring(tokens * 4, tp_local, math.inf).time_s(cluster.intra) if t > 1 else 0.0
    head = 3 * dev.gemm_s(logit_flops, logit_bytes, prec) + dev.memory_s(ce_bytes + 3 * 2 * w * tokens * h / t) + ce_comm
    stages = [n * layer for n in per_stage]  # each stage's time per micro-batch; the ends hold more
    stages[0] += embed
    stages[-1] += head
    slowest = max(range(pp), key=lambda i: stages[i])
    stage_max, stage_mean = stages[slowest], sum(stages) / pp
    layers = per_stage[slowest]  # the slowest stage paces the pipeline: its layers' communication is exposed
    # messages between stages: forward activation and backward gradient per chunk boundary
    p2p = 0.0
    if pp > 1:
        piece = act / t if lay.scatter_gather else act
        # neighbouring stages are tp x cp x dp ranks apart (tensor ranks innermost, then cp, then dp)
        crossing = cluster.inter if t * lay.cp * lay.dp >= cluster.ranks_per_node else cluster.intra
        p2p = crossing.alpha_s + piece * crossing.beta_s_per_byte
        if lay.scatter_gather and t > 1:
            p2p += all_gather_ring(act, tp_local).time_s(cluster.intra)
        p2p *= 2 * v
    pipeline = m * (stage_max + p2p) + (pp - 1) / v * stage_mean

    # data-parallel gradient sync of this rank's share of the fullest stage, gradients in the training precision;
    # an expert's gradient only over the GPUs holding the same experts
    params = stage_params(shape, pp, lay.ep, layers=max(per_stage))
    grad_bytes = stage_params(shape, pp, lay.ep, experts=False, layers=max(per_stage)) / t * w
    expert_bytes = params / t * w - grad_bytes
    dp_comm = 0.0
    if replicas > 1 and lay.zero < 3:  # ZeRO-3 reduce-scatters each layer's gradient in backward (above)
        dp_comm = cluster.allreduce_s(grad_bytes, dp_local, dp_nodes)  # ZeRO's reduce-scatter + all-gather: same bytes
        if expert_bytes and replicas // lay.ep > 1:
            dp_comm += cluster.allreduce_s(expert_bytes, *cluster.group(replicas // lay.ep, t * lay.ep))
        bucket = min(grad_bytes, 25 * 2 ** 20 * w / 4)
        last_bucket = cluster.allreduce_s(bucket, dp_local, dp_nodes)
        dp_comm = overlap(dp_comm, layers * (bwd + recompute), last_bucket, lay.dp_overlap)
    owned = params / t / (replicas if lay.zero >= 1 else 1)
    optimizer = dev.memory_s(OPTIMIZER_TRAFFIC[state_kind(prec)] * owned)
    step = pipeline + dp_comm + optimizer

    gpus = lay.gpus
    model_flops = shape.model_flops(lay.global_batch * s)
    hw_flops = shape.hardware_flops(lay.global_batch * s, lay.recompute)
    peak = dev.flops(prec)
    memory = memory_per_gpu(shape, lay)
    total = sum(memory.values())
    tp_comm = m * layers * (4 + 2 * (lay.recompute == "full")) * tp_ar
    bubble = (pp - 1) / v * stage_mean
    zero3 = m * layers * zero3_exposed
    cp_comm = m * layers * (cp_fwd + cp_bwd + (cp_fwd if lay.recompute == "full" else 0.0))
    ep_comm = m * layers * a2a * (4 + 2 * (lay.recompute == "full"))
    terms = {"compute_s": pipeline - tp_comm - cp_comm - ep_comm - m * p2p - bubble - zero3, "tp_comm_s": tp_comm,
             "cp_comm_exposed_s": cp_comm, "ep_all_to_all_s": ep_comm, "pp_comm_s": m * p2p,
             "bubble_s": bubble, "dp_comm_exposed_s": dp_comm, "zero3_gather_exposed_s": zero3,
             "optimizer_s": optimizer}
    return RunPrediction(gpus, m, step, hw_flops / step / gpus / 1e12, model_flops / step / gpus / peak,
                         hw_flops / step / gpus / peak, lay.global_batch * s / step, terms, memory, total / GIB,
                         dev.memory_bytes / GIB, total <= dev.memory_bytes)


def ring_attention_s(shape: ModelShape, lay: Layout, cluster: Cluster, core_s: float) -> tuple[float, float]:
    """Exposed seconds of one layer's ring attention (forward, backward) on one micro-batch.

    Forward: cp - 1 key/value blocks (2·b·s/cp·kv/t values) arrive, each
    while the previous block is attended (core_s / cp); only what the
    computation does not hide is exposed. Backward: cp steps carrying K,
    V, dK and dV, behind twice the forward's attention each. The ring runs
    over the cp GPUs of a context-parallel group (tensor ranks innermost).
    """
    cp = lay.cp
    if cp == 1:
        return 0.0, 0.0
    block = 2 * lay.micro_batch * shape.seq_len / cp * shape.kv_width / lay.tp * value_bytes(lay.precision)
    net = cluster.network_of(cp, lay.tp)
    send = lambda n: net.alpha_s + n * net.beta_s_per_byte
    step = core_s / cp
    return (cp - 1) * max(0.0, send(block) - step), cp * max(0.0, send(2 * block) - 2 * step)


def expert_all_to_all_s(shape: ModelShape, lay: Layout, cluster: Cluster) -> float:
    """Seconds of one of a layer's four all-to-alls (dispatch and combine, forward and backward): each GPU
    sends its tokens' top-k rows of h values, spread over the ep GPUs (pairwise exchange)."""
    if not shape.n_experts or lay.ep == 1:
        return 0.0
    rows = lay.micro_batch * shape.seq_len / lay.cp * shape.top_k
    net = cluster.network_of(lay.ep, lay.tp)
    return all_to_all_pairwise(rows * shape.n_embd / lay.tp * value_bytes(lay.precision), lay.ep).time_s(net)
