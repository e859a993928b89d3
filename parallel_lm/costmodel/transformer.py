"""A GPT's shapes, counted: parameters, FLOPs, the work of one layer, and activation memory.

No torch here: everything follows from the dimensions, so the predictor can
state runs far larger than this machine (Megatron-LM's 1T model included).

FLOPs (matrix multiplications only, 2 per multiply-add, the convention of
Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", SC21, section 5.1): a layer's forward pass costs
2·b·s·h·(q + 2·kv + h + 2f) for the four weight GEMMs (q = h; kv = the key
and value width, h with plain multi-head attention; f the MLP width) plus
4·b·s²·h for the attention scores and their product with V; the logits
add 2·b·s·h·V. Backward costs twice the forward. In the paper's shape
(kv = h, f = 4h) this is their 24·b·s·h² + 4·b·s²·h per layer, and
eq. 3 (full recomputation, one more forward) is 96·B·s·l·h²·(1 + s/6h +
V/16lh).

Activation memory follows Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models" (arXiv 2205.05198), section 4:
per layer, in bytes, with 16-bit activations and dropout,
34·s·b·h + 5·a·s²·b; tensor parallelism divides all but 10·s·b·h of it by
t, sequence parallelism divides that part too; selective recomputation
drops the 5·a·s²·b of the attention core; full recomputation keeps only
the layer's 2·s·b·h input. ``layer_activation_bytes`` writes those terms
out one stored tensor at a time, so the same count also holds for
grouped-query attention, another MLP width or no dropout.
"""
from __future__ import annotations

from dataclasses import dataclass

RECOMPUTE = ("none", "selective", "full")
# What each block architecture (--arch: model/config.py's ARCHS) sets in a ModelShape: the one place that says
# what "llama" means to the cost model, for the predictor's flags and for train's own model (training/utilization.py)
ARCH_SHAPES = {"gpt": {}, "llama": {"gated_mlp": True, "biases": False, "learned_positions": False,
                                    "tied_embeddings": False, "dropout": False}}


@dataclass(frozen=True)
class ModelShape:
    n_layer: int
    n_embd: int
    n_head: int
    seq_len: int
    vocab_size: int
    n_kv_head: int | None = None  # None: plain multi-head attention (as many as n_head)
    ffn_hidden: int | None = None  # None: 4 x n_embd
    dropout: bool = True  # Megatron's GPT keeps dropout masks; parallel_lm's own GPT has none
    fused_attention: bool = False  # a fused attention kernel keeps a log-sum-exp per row, not the a·s² scores
    n_experts: int = 0  # > 0: each MLP is a mixture of this many experts, top_k of them per token
    top_k: int = 1
    # the 2023+ shape (Llama): a gated MLP (SwiGLU: gate and up h -> f, down f -> h), RMSNorm, no biases,
    # rotary positions (no position parameters), a head of its own (not tied to the token embedding)
    gated_mlp: bool = False
    biases: bool = True  # and LayerNorm (2 vectors per norm); False: RMSNorm (1)
    learned_positions: bool = True
    tied_embeddings: bool = True

    def __post_init__(self):
        for name in ("n_layer", "n_embd", "n_head", "seq_len", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"--n-embd {self.n_embd} is not divisible by --n-head {self.n_head}: "
                             "each head gets n_embd / n_head channels")
        if self.kv_heads < 1 or self.n_head % self.kv_heads:
            raise ValueError(f"--n-kv-head {self.n_kv_head} must divide --n-head {self.n_head}")
        if self.ffn < 1:
            raise ValueError(f"--ffn-hidden must be positive, got {self.ffn_hidden}")
        if self.n_experts < 0 or (self.n_experts and not 1 <= self.top_k <= self.n_experts):
            raise ValueError(f"--top-k {self.top_k} must be between 1 and --n-experts {self.n_experts}")

    @property
    def active_mlps(self) -> int:
        """MLPs a token runs through: 1, or top_k of a mixture of experts."""
        return self.top_k if self.n_experts else 1

    @property
    def mlp_matrices(self) -> int:
        """h x f matrices in one MLP: 2 (up, down), 3 gated (gate, up, down)."""
        return 3 if self.gated_mlp else 2

    def mlp_params(self) -> int:
        """One MLP's weights and biases (one expert's, in a mixture)."""
        biases = (self.mlp_matrices - 1) * self.ffn + self.n_embd if self.biases else 0
        return self.mlp_matrices * self.n_embd * self.ffn + biases

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_width(self) -> int:
        """Width of K (and of V): kv heads x head size."""
        return self.kv_heads * self.head_dim

    @property
    def ffn(self) -> int:
        return self.ffn_hidden or 4 * self.n_embd

    # -- parameters -------------------------------------------------------------------------
    def layer_params(self, experts_held: int | None = None) -> int:
        """Weights and biases of one block: QKV, output projection, MLP (or the router and ``experts_held``
        of the experts, default all), two LayerNorms."""
        h, kv, b = self.n_embd, self.kv_width, self.biases
        qkv = h * (h + 2 * kv) + (h + 2 * kv) * b
        mlp = self.mlp_params() if not self.n_experts else \
            h * self.n_experts + self.mlp_params() * (self.n_experts if experts_held is None else experts_held)
        return qkv + h * h + h * b + mlp + (4 if b else 2) * h  # two LayerNorms (weight, bias) or RMSNorms

    def embedding_params(self) -> int:
        """Token and learned position embeddings (the head is tied to the token embedding, or has its own
        vocab x h matrix: ``head_params``)."""
        return (self.vocab_size + self.seq_len * self.learned_positions) * self.n_embd

    def head_params(self) -> int:
        """The output head's own parameters: none when tied to the token embedding."""
        return 0 if self.tied_embeddings else self.vocab_size * self.n_embd

    def params(self) -> int:
        """All parameters: 12·l·h²·(1 + 13/12h + (V + s)/12lh) for the paper's shape."""
        return (self.n_layer * self.layer_params() + self.embedding_params() + self.head_params()
                + (2 if self.biases else 1) * self.n_embd)

    # -- FLOPs ------------------------------------------------------------------------------
    def layer_forward_flops(self, tokens: float) -> float:
        """Matmul FLOPs of one block's forward over ``tokens`` tokens in sequences of seq_len."""
        h, f, kv, s = self.n_embd, self.ffn, self.kv_width, self.seq_len
        weights = 2 * tokens * h * (h + 2 * kv + h + self.mlp_matrices * f * self.active_mlps + self.n_experts)
        attention = 4 * tokens * s * h  # Q Kᵀ and (scores) V, each 2·s·h per token
        return weights + attention

    def attention_core_flops(self, tokens: float) -> float:
        return 4 * tokens * self.seq_len * self.n_embd

    def logits_flops(self, tokens: float) -> float:
        return 2 * tokens * self.n_embd * self.vocab_size

    def model_flops(self, tokens: float) -> float:
        """Forward + backward, no recomputation: what MFU counts (3 x forward)."""
        return 3 * (self.n_layer * self.layer_forward_flops(tokens) + self.logits_flops(tokens))

    def hardware_flops(self, tokens: float, recompute: str) -> float:
        """What the device executes: the model FLOPs plus the recomputed forward.

        full: every block's forward once more (Narayanan et al. 2021, eq. 3);
        selective: only the attention core again (Korthikanti et al. 2022).
        """
        extra = {"none": 0.0, "full": self.layer_forward_flops(tokens),
                 "selective": self.attention_core_flops(tokens)}[recompute]
        return self.model_flops(tokens) + self.n_layer * extra

    def flops_per_token(self) -> float:
        return self.model_flops(1.0)

    # -- activation memory ------------------------------------------------------------------
    def layer_activation_bytes(self, micro_batch: int, tp: int = 1, sequence_parallel: bool = False,
                               recompute: str = "none", bytes_per_value: int = 2, keys: int | None = None) -> float:
        """Bytes one block keeps for backward, per micro-batch, on one tensor-parallel rank.

        Each term is a stored tensor (Korthikanti et al. 2022, section 4.1),
        ``bytes_per_value`` per value (2 for fp16/bf16) and 1 per dropout mask:
        - replicated over tensor ranks unless sequence parallel: the two
          LayerNorm inputs, the QKV and first-MLP inputs, the two dropout masks;
        - split over tensor ranks: Q, K, V, the attention output (projection
          input), the MLP's GeLU input and second-GEMM input;
        - the attention core, split too: softmax output, its dropout mask and
          dropout output (a·s² values per sequence each) - what selective
          recomputation recomputes instead of keeping. A fused kernel
          (``fused_attention``: torch's scaled_dot_product_attention, FlashAttention)
          keeps instead one fp32 log-sum-exp per head and row, 4·a·s bytes per
          sequence, and writes its output straight into the projection's input.
        ``keys``: how many keys each query meets (default seq_len; all s of the sequence under context
        parallelism, where this shape holds the s/cp queries of one rank).
        """
        if recompute not in RECOMPUTE:
            raise ValueError(f"unknown recompute {recompute!r}; valid: {', '.join(RECOMPUTE)}")
        keys = self.seq_len if keys is None else keys
        sbh = self.seq_len * micro_batch * self.n_embd
        w = bytes_per_value
        mask = 1 if self.dropout else 0
        seq_split = tp if sequence_parallel else 1
        if recompute == "full":  # only the block's input, recomputed from it in backward
            return w * sbh / seq_split
        tokens = self.seq_len * micro_batch
        replicated = (2 * w * sbh  # LayerNorm inputs
                      + 2 * w * sbh  # inputs of the QKV and first MLP GEMMs
                      + 2 * mask * sbh)  # attention-output and MLP-output dropout masks
        split = (w * tokens * (self.n_embd + 2 * self.kv_width)  # Q, K, V
                 + w * sbh  # attention output: the projection's input
                 # GeLU's input and the down GEMM's; gated: the gate's and up's outputs and the down GEMM's input
                 + self.mlp_matrices * w * tokens * self.ffn * self.active_mlps)
        scores = self.n_head * self.seq_len * keys * micro_batch
        core = (w + mask + (w if self.dropout else 0)) * scores  # softmax out, mask, dropout out
        if self.fused_attention:
            core = 4 * self.n_head * self.seq_len * micro_batch
        total = replicated / seq_split + split / tp
        if recompute == "none":
            total += core / tp
        return total

    def ends_activation_bytes(self, micro_batch: int, first: bool, last: bool, tp: int = 1,
                              bytes_per_value: int = 2, sequence_parallel: bool = False) -> float:
        """Bytes the layers around the blocks keep per micro-batch: the token ids (int64) on the
        first stage; the final LayerNorm's and the head's inputs (split over tensor ranks along the
        sequence under sequence parallelism), the fp32 log-probabilities (split over tensor ranks)
        and the targets on the last."""
        tokens = self.seq_len * micro_batch
        out = 8 * tokens if first else 0
        if last:
            hidden = 2 * bytes_per_value * tokens * self.n_embd / (tp if sequence_parallel else 1)
            out += hidden + 4 * tokens * self.vocab_size / tp + 8 * tokens
        return out

    def stored_micro_batches(self, pp: int, micro_batches: int, virtual_stages: int = 1,
                             schedule: str = "1f1b") -> float:
        """Micro-batches' worth of a stage's layers the first stage holds at its peak.

        1F1B: the first stage runs pp forwards before its first backward, so
        it holds min(pp, m) micro-batches of its l/pp layers; interleaving
        adds (pp - 1)/(pp·v) of that (Korthikanti et al. 2022, section 4.2.3).
        GPipe holds all m.
        """
        if schedule == "gpipe":
            return micro_batches
        held = min(pp, micro_batches)
        if virtual_stages > 1:
            held *= 1 + (pp - 1) / (pp * virtual_stages)
        return held


def megatron_flops(shape: ModelShape, global_batch: int) -> float:
    """Eq. 3 of Narayanan et al. 2021: 96·B·s·l·h²·(1 + s/6h + V/16lh) per iteration (full recompute)."""
    b, s, l, h, v = global_batch, shape.seq_len, shape.n_layer, shape.n_embd, shape.vocab_size
    return 96 * b * s * l * h * h * (1 + s / (6 * h) + v / (16 * l * h))
