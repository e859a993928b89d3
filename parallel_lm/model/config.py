"""The model's shape and the presets: plain data, no torch, so a command line can offer them and check them
before anything heavy is imported."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

VOCAB_SIZE = 256  # byte-level tokens


MOE_FIELDS = ("n_experts", "top_k", "capacity_factor", "aux_loss_coef")
ARCHS = ("gpt", "llama")


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    block_size: int = 64
    vocab_size: int = VOCAB_SIZE
    n_experts: int = 0  # > 0: each block's MLP is a mixture of this many experts (model/moe.py)
    top_k: int = 1  # experts per token
    capacity_factor: float = 1.25  # assignments an expert takes per sequence, x T k / E (0: no limit)
    aux_loss_coef: float = 0.01  # weight of the load-balancing loss in the training loss
    # gpt: GELU MLP, LayerNorm, biases, learned positions, head tied to the token embedding (GPT-2);
    # llama: SwiGLU MLP, RMSNorm, no biases, rotary positions, a head of its own (Llama, Touvron et al. 2023)
    arch: str = "gpt"
    n_kv_head: int | None = None  # llama: key/value heads, each shared by n_head / n_kv_head queries (GQA); None: n_head

    def __post_init__(self):
        if min(self.n_layer, self.n_head, self.n_embd, self.block_size) < 1:
            raise ValueError(f"model sizes must be positive: {self}")
        if self.n_experts < 0 or (self.n_experts and not 1 <= self.top_k <= self.n_experts):
            raise ValueError(f"--top-k {self.top_k} must be between 1 and --n-experts {self.n_experts}: "
                             "each token goes to that many of the experts")
        if not (math.isfinite(self.capacity_factor) and self.capacity_factor >= 0):
            raise ValueError(f"--capacity-factor {self.capacity_factor} must be a finite number >= 0 (0: no limit)")
        if not (math.isfinite(self.aux_loss_coef) and self.aux_loss_coef >= 0):
            raise ValueError(f"--aux-loss-coef {self.aux_loss_coef} must be a finite number >= 0")
        if self.arch not in ARCHS:
            raise ValueError(f"--arch {self.arch!r} is not one of {', '.join(ARCHS)}")
        if self.arch == "llama" and self.n_embd // self.n_head % 2:
            raise ValueError(f"--arch llama rotates channel pairs: --n-embd {self.n_embd} / --n-head {self.n_head} "
                             "must be even")
        if self.n_kv_head is not None and (not self.llama or self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise ValueError(f"--n-kv-head {self.n_kv_head} must divide --n-head {self.n_head} (grouped-query "
                             "attention, with --arch llama)")
        if self.n_embd % self.n_head:
            raise ValueError(f"--n-embd {self.n_embd} is not divisible by --n-head {self.n_head}: "
                             "each head gets n_embd / n_head channels")

    @property
    def llama(self) -> bool:
        return self.arch == "llama"

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def ffn_hidden(self) -> int:
        """The MLP's width: 4C for gpt; for llama's gated MLP (three matrices), 2/3 of 4C rounded up to a multiple
        of 8 x heads (Llama rounds to 256), so the same parameters and any --tp that divides the heads divides it."""
        if not self.llama:
            return 4 * self.n_embd
        step = 8 * self.n_head
        return -(-8 * self.n_embd // (3 * step)) * step

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        """The fields that shape this model: the mixture-of-experts ones only when it has experts, the
        architecture when it is not the default."""
        shown = {k: v for k, v in asdict(self).items()
                 if (self.n_experts or k not in MOE_FIELDS) and (self.llama or k != "arch")
                 and (k != "n_kv_head" or v is not None)}
        return f"GPTConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


PRESETS = {
    "tiny": GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64),       # 0.12M parameters
    "small": GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128),    # 0.84M
    "medium": GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256),   # 10.8M (the size of nanoGPT's shakespeare-char)
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # GPT-2 small: 86M with 256 byte tokens
}
