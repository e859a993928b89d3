"""A dp x cp x tp x pp x ep layout on a GPU cluster: what it is (``Layout``, ``Cluster``) and what it holds.

Memory per GPU: weights, gradients and optimizer state by precision and
ZeRO stage (memory.py's ``state_bytes``), plus the first stage's activations
(``ModelShape.layer_activation_bytes`` x layers per stage x micro-batches in
flight).

What a step of it costs is step.py's ``predict_run``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .devices import Device
from .formulas import Network, allreduce_hierarchical_s
from .memory import state_bytes, zero_shard
from .transformer import RECOMPUTE, ModelShape

def mixed(precision: str) -> bool:
    return precision in ("fp16", "bf16")


def state_kind(precision: str) -> str:
    """The kind of memory.state_bytes and the row of step.OPTIMIZER_TRAFFIC a precision trains with."""
    return "mixed" if mixed(precision) else "fp32"


def value_bytes(precision: str) -> int:
    """Bytes of one activation or gradient value: 2 in mixed precision, 4 in fp32."""
    return 2 if mixed(precision) else 4


def stage_params(shape: ModelShape, pp: int, ep: int = 1, experts: bool = True, layers: int | None = None) -> int:
    """Parameters of the fullest pipeline stage on one GPU: its blocks (with E/ep experts each; ``layers`` of
    them, default n_layer / pp) and the embedding (the first stage holds it, the last its tied copy or its own
    head; one stage holds both); ``experts=False``: only what every data-parallel rank holds alike."""
    held = shape.n_experts // ep if experts else 0
    layers = shape.n_layer // pp if layers is None else layers
    return layers * shape.layer_params(held) + shape.embedding_params() + (shape.head_params() if pp == 1 else 0)


def divisors(n: int) -> str:
    """"1, 2, 3, 6": what a flag that must divide ``n`` may be, for an error message."""
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def cut_problems(n_layer: int, n_head: int, tp: int, pp: int, virtual_stages: int = 1,
                 sequence_parallel: bool = False, kv_heads: int | None = None) -> list[str]:
    """Why a model of ``n_layer`` layers and ``n_head`` heads cannot be cut over tp x pp (x virtual stages), each
    with what to change: the one list training's checks (config_checks.py) and the predictor's
    (``Layout.problems``) share."""
    out = []
    if n_head % tp:
        out.append(f"--tp {tp} must divide the {n_head} attention heads: use --tp among {divisors(n_head)}, "
                   "or change --n-head")
    elif kv_heads and kv_heads % tp:
        out.append(f"--tp {tp} must divide --n-kv-head {kv_heads}: each tensor rank keeps whole key/value heads")
    v = virtual_stages
    if v > 1 and pp == 1:
        out.append(f"--virtual-stages {v} cuts each pipeline rank's layers into chunks: it needs --pp 2 or more")
    elif v > 1 and n_layer % (pp * v):
        out.append(f"--n-layer {n_layer} is not divisible by --pp {pp} x --virtual-stages {v}: each of the "
                   f"{pp * v} chunks holds the same number of layers; use a layer count that is a multiple "
                   f"of {pp * v}, or fewer virtual stages")
    elif n_layer % pp:
        out.append(f"--pp {pp} must divide the {n_layer} layers into equal stages: use --pp among {divisors(n_layer)}, "
                   "or change --n-layer")
    if sequence_parallel and tp == 1:
        out.append("--sequence-parallel cuts the activations along the sequence over the tensor-parallel ranks: "
                   "use it with --tp 2 or more")
    return out


def context_problems(seq_len: int, cp: int, length_flag: str) -> list[str]:
    """Why context parallelism cannot cut sequences of ``seq_len`` over ``cp`` ranks (``length_flag``: the flag
    that sets the length, --block-size in training, --seq-len in the predictor)."""
    if cp > 1 and seq_len % (2 * cp):
        return [f"--cp {cp} cuts each sequence into 2 x {cp} = {2 * cp} equal chunks (an early and a late one per "
                f"rank, for causal balance): use a {length_flag} that is a multiple of {2 * cp}"]
    return []


def expert_problems(n_experts: int, ep: int, replicas: int | None = None, unit: str = "ranks") -> list[str]:
    """Why ``ep`` cannot spread ``n_experts`` over expert groups cut from ``replicas`` data-parallel ``unit``
    (ranks in training, GPUs in the predictor; None: not known yet)."""
    out = []
    if ep > 1 and not n_experts:
        out.append(f"--ep {ep} spreads experts over {unit}: give the model experts with --n-experts E")
    elif ep > 1 and n_experts % ep:
        out.append(f"--ep {ep} must divide --n-experts {n_experts}: each {unit[:-1]} of an expert group holds the "
                   f"same number of experts; use --ep among {divisors(n_experts)}")
    if ep > 1 and replicas is not None and replicas % ep:
        out.append(f"--ep {ep} must divide the {replicas} data-parallel {unit}, which it cuts into expert groups "
                   f"of {ep}: run a multiple of {ep} data-parallel {unit}, or change --ep")
    return out


ZERO3_GATHERS = ("layer", "matrix")


@dataclass(frozen=True)
class Layout:
    global_batch: int
    micro_batch: int = 1
    dp: int = 1
    tp: int = 1
    pp: int = 1
    virtual_stages: int = 1
    zero: int = 0
    recompute: str = "none"
    sequence_parallel: bool = False
    cp: int = 1  # context parallelism: each sequence cut over cp GPUs (ring attention)
    ep: int = 1  # expert parallelism: each mixture's experts spread over ep of the dp x cp GPUs
    precision: str = "bf16"
    optimizer: str = "adamw"  # memory.MOMENT_BYTES: the optimizer state per parameter
    dp_overlap: bool = True  # gradient sync behind the last micro-batch's backward
    scatter_gather: bool = True  # pipeline messages split over the tensor ranks' NICs
    stage_layers: tuple[int, ...] = ()  # layers of each pipeline stage; (): n_layer / pp each
    # ZeRO-3's unit of gathering: "layer" (whole blocks: parallel/zero3.py, FSDP wrapping each block) or "matrix"
    # (weight by weight under a cap on live parameters: DeepSpeed)
    zero3_gather: str = "layer"

    def layers_per_stage(self, n_layer: int) -> list[int]:
        """Layers on each pipeline stage (uneven with ``stage_layers``, as Llama 3 placed 126 on 16)."""
        return list(self.stage_layers) if self.stage_layers else [n_layer // self.pp] * self.pp

    @property
    def gpus(self) -> int:
        return self.dp * self.cp * self.tp * self.pp

    @property
    def micro_batches(self) -> int:
        return self.global_batch // (self.dp * self.micro_batch)

    def problems(self, shape: ModelShape, gpus: int | None = None) -> list[str]:
        """Every reason this layout cannot run, each with what to change."""
        out = []
        if gpus is not None and self.gpus != gpus:
            out.append(f"--dp {self.dp} x --cp {self.cp} x --tp {self.tp} x --pp {self.pp} needs {self.gpus} GPUs, "
                       f"but --ranks is {gpus}: make the product equal the GPU count")
        if self.stage_layers:  # placed by hand: they must add up, one count per stage
            out += cut_problems(shape.n_layer, shape.n_head, self.tp, 1, 1, self.sequence_parallel, shape.kv_heads)
            if len(self.stage_layers) != self.pp or sum(self.stage_layers) != shape.n_layer or \
                    min(self.stage_layers) < 1:
                out.append(f"--layers-per-stage {','.join(map(str, self.stage_layers))}: give --pp {self.pp} counts "
                           f"of at least 1 that add up to --n-layer {shape.n_layer}")
            elif any(n % self.virtual_stages and (n + 1) % self.virtual_stages for n in self.stage_layers):
                out.append(f"--layers-per-stage with --virtual-stages {self.virtual_stages}: each stage's layers "
                           "must cut into that many chunks (one layer fewer allowed: a lighter first or last chunk)")
        else:
            out += cut_problems(shape.n_layer, shape.n_head, self.tp, self.pp, self.virtual_stages,
                                self.sequence_parallel, shape.kv_heads)
        if self.zero3_gather not in ZERO3_GATHERS:
            out.append(f"--zero3-gather {self.zero3_gather!r}: use one of {', '.join(ZERO3_GATHERS)}")
        if self.global_batch % (self.dp * self.micro_batch):
            out.append(f"--global-batch-size {self.global_batch} does not split into --dp {self.dp} x "
                       f"--micro-batch-size {self.micro_batch}: use a multiple of {self.dp * self.micro_batch}")
        elif self.virtual_stages > 1 and self.micro_batches % self.pp:
            out.append(f"interleaving needs the micro-batches per pipeline ({self.micro_batches}) to be a multiple "
                       f"of --pp {self.pp}: change --global-batch-size or --micro-batch-size")
        out += context_problems(shape.seq_len, self.cp, "--seq-len")
        out += expert_problems(shape.n_experts, self.ep, self.dp * self.cp, "GPUs")
        if self.recompute not in RECOMPUTE:
            out.append(f"--recompute {self.recompute!r}: valid: {', '.join(RECOMPUTE)}")
        return out


@dataclass(frozen=True)
class Cluster:
    """A device and the network between devices: NVLink-like inside a node, NIC rails between nodes."""

    device: Device
    intra: Network
    inter: Network
    ranks_per_node: int
    rails: int = 1  # NICs per node; each carries its own inter-node ring

    @classmethod
    def from_profile(cls, device: Device, profile) -> Cluster:
        inner = profile.network()
        outer = profile.slowest()
        # GPU collectives reduce inside the transfer kernels (NCCL): no separate gamma term
        return cls(device, Network(inner.alpha_s, inner.beta_s_per_byte), Network(outer.alpha_s, outer.beta_s_per_byte),
                   profile.ranks_per_node or 1, profile.rails)

    def allreduce_s(self, n_bytes: float, local: int, nodes: int) -> float:
        """``hierarchical_allreduce_s`` on this cluster."""
        return hierarchical_allreduce_s(n_bytes, local, nodes, self.intra, self.inter, self.rails)

    def network_of(self, size: int, stride: int) -> Network:
        """The network a group of ``size`` ranks ``stride`` apart talks over: between nodes if it spans several."""
        return self.inter if self.group(size, stride)[1] > 1 else self.intra

    def group(self, size: int, stride: int) -> tuple[int, int]:
        """(ranks per node, nodes) of a group of ``size`` ranks ``stride`` apart (rank = node x ranks_per_node + local)."""
        local = max(1, min(size, self.ranks_per_node // stride)) if stride < self.ranks_per_node else 1
        return local, math.ceil(size / local)


def hierarchical_allreduce_s(n_bytes: float, local: int, nodes: int, intra: Network, inter: Network,
                             rails: int = 1) -> float:
    """``formulas.allreduce_hierarchical_s`` as NCCL runs it: whole chunks per step (no segments).

    Reduce-scatter inside the node, one ring per local rank across nodes
    (each on its own NIC while there are as many rails as local ranks),
    all-gather inside the node.
    """
    return allreduce_hierarchical_s(n_bytes, local, nodes, intra, inter, rails, segment_bytes=math.inf)


def gathered_bytes(shape: ModelShape, lay: Layout, value_bytes: float) -> float:
    """ZeRO-3's gathered weights at the peak, three units: the running one, the one prefetched and one unit's
    full gradient before its reduce-scatter. A unit is a whole block plus the embedding on the first stage
    (``zero3_gather`` "layer", as parallel/zero3.py does), or the largest weight matrix ("matrix": DeepSpeed
    gathers module by module, holding at most stage3_max_live_parameters, 1e9 by default, beyond the running one)."""
    if lay.zero3_gather == "matrix":
        h, f = shape.n_embd, shape.ffn
        largest = max(h * (h + 2 * shape.kv_width), h * f, shape.vocab_size * h)
        return 3 * largest / lay.tp * value_bytes
    layer = shape.layer_params(shape.n_experts // lay.ep) / lay.tp
    return (3 * layer + shape.embedding_params() / lay.tp) * value_bytes


def memory_per_gpu(shape: ModelShape, lay: Layout) -> dict:
    """Bytes on the first pipeline stage's GPU (the fullest: embedding and the most micro-batches in flight; with
    uneven stages, the parameters of the stage with the most layers)."""
    per_stage = lay.layers_per_stage(shape.n_layer)
    params = stage_params(shape, lay.pp, lay.ep, layers=max(per_stage)) / lay.tp
    act_w = value_bytes(lay.precision)
    # the activations of this GPU's s/cp tokens, each query meeting every key of its sequence (ring attention)
    mine = replace(shape, seq_len=shape.seq_len // lay.cp)
    per_layer = mine.layer_activation_bytes(lay.micro_batch, lay.tp, lay.sequence_parallel, lay.recompute, act_w,
                                            shape.seq_len)
    held = mine.stored_micro_batches(lay.pp, lay.micro_batches, lay.virtual_stages)
    activations = per_stage[0] * per_layer * held
    if lay.recompute == "full":  # one block's full activations live while it is recomputed
        activations += mine.layer_activation_bytes(lay.micro_batch, lay.tp, lay.sequence_parallel, "none", act_w)
    memory = {**zero_shard(state_bytes(state_kind(lay.precision), lay.optimizer, lay.zero), params, lay.dp * lay.cp,
                           lay.zero), "activations": activations}
    if lay.zero == 3 and lay.dp * lay.cp > 1:
        memory["gathered_layers"] = gathered_bytes(shape, lay, act_w)
    return memory
