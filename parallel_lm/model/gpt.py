"""A decoder-only transformer on bytes: GPT-2's shape, or Llama's.

Causal self-attention, a 4x GELU MLP, pre-LayerNorm residual blocks and a
language-model head tied to the token embedding (Radford et al. 2019;
the layout follows nanoGPT's model.py). ``arch="llama"`` swaps in the
parts of model/llama.py: rotary positions instead of a position embedding,
a SwiGLU MLP, RMSNorm, no biases and a head of its own. No dropout: training is a
deterministic function of the seed and the data, which the data-parallel
equivalence tests rely on.

Presets run from ``tiny`` (trains visibly in a minute on a 2-core CPU) to
``gpt2`` (GPT-2 small's shape: 124M parameters with its 50257-token
vocabulary, 86M with 256 byte tokens).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPTConfig
from .llama import GatedMLP, Rotary, norm
from .moe import ExpertMLP
from .recompute import MODES as RECOMPUTE_MODES
from .recompute import recomputed

def causal_attention(q, k, v):
    """The attention core softmax(QKᵀ/√d)V with a causal mask, (B, nh, T, hs) each (k and v with fewer heads under
    grouped-query attention, each shared by nh / their heads queries); torch's fused kernel."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])


def attention_core(attention=None, recompute: str = "none"):
    """The attention core a block runs: ``attention`` (default ``causal_attention``; under --cp the ring of
    parallel/context_parallel.py), recomputed in backward under --recompute selective."""
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"unknown --recompute {recompute!r}; valid: {', '.join(RECOMPUTE_MODES)}")
    core = attention or causal_attention
    return functools.partial(recomputed, core) if recompute == "selective" else core


class CausalSelfAttention(nn.Module):
    """gpt: one ``qkv`` projection with biases. llama: ``q`` and ``kv`` projections without (k and v with
    ``n_kv_head`` heads under grouped-query attention), queries and keys turned by ``rotary``."""

    def __init__(self, cfg: GPTConfig, core=causal_attention, rotary: Rotary | None = None):
        super().__init__()
        self.head_size, self.core, self.rotary = cfg.n_embd // cfg.n_head, core, rotary
        if cfg.llama:
            self.q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
            self.kv = nn.Linear(cfg.n_embd, 2 * cfg.kv_heads * self.head_size, bias=False)
        else:
            self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=not cfg.llama)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2) if self.rotary is None else (self.q(x), *self.kv(x).chunk(2, dim=2))
        q, k, v = (t.view(B, T, -1, self.head_size) for t in (q, k, v))  # (B, T, heads, hs)
        if self.rotary:  # v copied out of qkv's output, so q and k before rotation are not kept alive
            q, k, v = *self.rotary(q, k), v.contiguous()
        y = self.core(*(t.transpose(1, 2) for t in (q, k, v)))  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, recompute: str = "none", attention=None, rotary: Rotary | None = None):
        super().__init__()
        self.recompute = recompute == "full"  # the whole block recomputed in backward
        self.ln1 = norm(cfg)
        self.attn = CausalSelfAttention(cfg, attention_core(attention, recompute), rotary)
        self.ln2 = norm(cfg)
        mlp = GatedMLP if cfg.llama else MLP
        self.mlp = ExpertMLP(cfg, mlp) if cfg.n_experts else mlp(cfg)

    def forward(self, x):
        return recomputed(self.layers, x) if self.recompute else self.layers(x)

    def layers(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def balance_term(blocks, cfg):
    """aux_loss_coef x the balance losses of ``blocks``' last forward; 0 for dense blocks."""
    if not cfg.n_experts or not cfg.aux_loss_coef:
        return 0.0
    return cfg.aux_loss_coef * sum(block.mlp.aux for block in blocks)


def embed(tok_emb, pos_emb, idx):
    """The embedded tokens (B, T, C) of ids ``idx`` (B, T): token embeddings, plus learned positions (gpt)."""
    x = tok_emb(idx)
    return x if pos_emb is None else x + pos_emb(torch.arange(idx.shape[1], device=idx.device))


class GPT(nn.Module):
    """The model. ``recompute``: none, selective (the attention core) or full (each block) is recomputed in
    backward (model/recompute.py); ``attention``: the core (q, k, v) -> y each block runs, by default
    ``causal_attention`` (a context-parallel group gives its ring attention); ``positions``: with rotary
    positions (llama), the positions of the tokens each attention sees (a context-parallel rank's chunks;
    default 0..T-1). None of them changes the weights."""

    def __init__(self, cfg: GPTConfig, recompute: str = "none", attention=None, positions=None):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = None if cfg.llama else nn.Embedding(cfg.block_size, cfg.n_embd)
        rotary = Rotary(cfg.n_embd // cfg.n_head, positions) if cfg.llama else None
        self.blocks = nn.ModuleList(Block(cfg, recompute, attention, rotary) for _ in range(cfg.n_layer))
        self.ln_f = norm(cfg)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if self.tied:
            self.head.weight = self.tok_emb.weight  # tied (Press & Wolf 2017)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 L)
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @property
    def tied(self) -> bool:
        """Whether the head shares the token embedding's weight (gpt), or has its own (llama)."""
        return not self.cfg.llama

    @staticmethod
    def _init(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size {self.cfg.block_size}")
        x = embed(self.tok_emb, self.pos_emb, idx)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))  # (B, T, vocab)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    def num_params(self) -> int:
        """Parameters, a tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N + 12 L T C (PaLM, Chowdhery et al. 2022, appendix B).

        6N for the matmuls forward and backward, the second term for attention
        scores and values over a T-token context. N excludes what does no
        matmul: the position embedding, and a token embedding the head does
        not share.
        """
        cfg = self.cfg
        lookups = self.tok_emb.weight if not self.tied else self.pos_emb.weight
        n = self.num_params() - lookups.numel()
        if cfg.n_experts:  # a token runs through k experts of E
            per_expert = sum(p.numel() for p in self.blocks[0].mlp.experts[0].parameters())
            n -= cfg.n_layer * (cfg.n_experts - cfg.top_k) * per_expert
        return 6 * n + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd

    def balance_loss(self):
        """aux_loss_coef x the sum over blocks of their last forward's balance loss (0 for a dense model)."""
        return balance_term(self.blocks, self.cfg)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None, generator=None):
        """Sample ``max_new_tokens`` bytes after the prompt ``idx`` (B, T)."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.block_size:])
            logits = logits[:, -1, :].float() / max(temperature, 1e-6)  # (B, vocab)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits[logits < kth] = -float("inf")
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
