"""The optimizer's rules, each in one place: which parameters decay, the optimizer, the global-norm clip.

Every layout (one process, data parallel, ZeRO shards, pipeline stages,
tensor slices, parameter-server shards) builds its optimizer and clips
its gradient through these, so the rules cannot drift apart.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from mpi4py import MPI

BETAS = (0.9, 0.95)  # AdamW's betas (GPT-3, nanoGPT)
EPS_NORM = 1e-6  # torch.nn.utils.clip_grad_norm_'s guard: coef = max_norm / (norm + 1e-6)


def decays(p: torch.Tensor) -> bool:
    """Weight decay applies to matrices and embeddings (2-D and up), not to biases and LayerNorm gains (nanoGPT)."""
    return p.dim() >= 2


def decay_groups(params, weight_decay: float) -> list[dict]:
    """Two parameter groups: the decayed ones with ``weight_decay``, the rest with 0."""
    params = list(params)
    return [{"params": [p for p in params if decays(p)], "weight_decay": weight_decay},
            {"params": [p for p in params if not decays(p)], "weight_decay": 0.0}]


def decay_mask(params) -> torch.Tensor:
    """Bool, one entry per element of the parameters laid end to end: True where weight decay applies."""
    return torch.cat([torch.full((p.numel(),), decays(p), dtype=torch.bool) for p in params])


class Optimizer:
    """What the layouts use of a torch optimizer: ``param_groups`` (each with its "lr"), ``state`` per parameter,
    ``step()`` and ``zero_grad()``. The two below write torch's updates out instead of calling torch.optim, whose
    optimizers import torch._dynamo on their first call: as long again as ``import torch`` on every rank here
    (about 3 s of CPU each, measured with 1-rank runs)."""

    def __init__(self, groups: list[dict], lr: float):
        self.param_groups = [{**g, "lr": lr} for g in groups]
        self.state: dict = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


class AdamW(Optimizer):
    """torch.optim.AdamW(betas=BETAS, foreach=False): the same operations in the same order, so the same bits
    (tests/test_optim.py holds it to torch's), and the same state per parameter (a float32 step count on the
    host, exp_avg, exp_avg_sq), so checkpoints are unchanged."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float] = BETAS, eps: float = 1e-8):
        super().__init__(groups, lr)
        self.betas, self.eps = betas, eps

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for group in self.param_groups:
            lr, weight_decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, state = p.grad, self.state.get(p)
                if not state:
                    state = self.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                             "exp_avg_sq": torch.zeros_like(p)}
                state["step"] += 1
                if weight_decay != 0:
                    p.mul_(1 - lr * weight_decay)  # decoupled weight decay
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = state["step"].item()
                denom = (state["exp_avg_sq"].sqrt() / (1 - beta2 ** step) ** 0.5).add_(self.eps)
                p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** step))


class SGD(Optimizer):
    """torch.optim.SGD(foreach=False) without momentum, written out (weight decay added to the gradient, as
    torch's SGD does); no state."""

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] != 0 else p.grad
                    p.add_(grad, alpha=-group["lr"])


def build_optimizer(groups: list[dict], kind: str, lr: float) -> Optimizer:
    """AdamW (betas 0.9, 0.95) or plain SGD over ``groups``, per tensor in order, so shards sum alike."""
    return SGD(groups, lr) if kind == "sgd" else AdamW(groups, lr)


def clip_coefficient(sum_of_squares: float, max_norm: float, comms=()) -> float:
    """min(1, max_norm / (norm + 1e-6)) of the global norm, this rank's squares summed over ``comms`` in order.

    Each rank passes the squares of the gradient elements it counts (every
    element of the model counted on exactly one rank of the groups); the
    sum is float64 and every rank gets the same coefficient.
    """
    sq = np.array([sum_of_squares], dtype=np.float64)
    for comm in comms:
        comm.Allreduce(MPI.IN_PLACE, sq, op=MPI.SUM)
    return min(1.0, max_norm / (math.sqrt(sq[0]) + EPS_NORM))


def flat_state(states: dict, params) -> dict:
    """{kind: one tensor over ``params`` laid end to end} from per-parameter optimizer states {p: {kind: tensor}}.

    A parameter without a state contributes zeros; a step count stays a scalar. ZeRO and the parameter
    server keep their shards of this layout; ``param_states`` is the inverse.
    """
    kinds = {kind: v for s in states.values() for kind, v in s.items()}
    out = {}
    for kind, sample in kinds.items():
        if sample.dim() == 0:
            out[kind] = sample
            continue
        out[kind] = torch.cat([states[p][kind].reshape(-1).to(p.device) if p in states
                               else torch.zeros(p.numel(), dtype=sample.dtype, device=p.device) for p in params])
    return out


def param_states(flat: dict, params) -> dict:
    """{p: {kind: p's slice of each flat tensor, shaped like p}} for ``params`` laid end to end (``flat_state``'s)."""
    out, offset = {}, 0
    for p in params:
        out[p] = {kind: v if v.dim() == 0 else v[offset: offset + p.numel()].view_as(p).clone() for kind, v in flat.items()}
        offset += p.numel()
    return out


class ReplicatedOptimizer:
    """The optimizer of every parameter this rank holds, whole (no ZeRO): the same update on every replica."""
    norm_comms = ()  # every replica holds the whole gradient: its squares need no sum over data-parallel ranks

    def __init__(self, params, kind: str, lr: float, weight_decay: float):
        self.params = list(params)
        self.optimizer = build_optimizer(decay_groups(self.params, weight_decay), kind, lr)

    def grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.params if p.grad is not None]

    def squares(self, skip=()) -> float:
        """Sum of squares of the gradients, leaving out the parameters in ``skip`` (counted elsewhere)."""
        left_out = {id(p) for p in skip}
        return sum(float(torch.sum(p.grad.double() ** 2)) for p in self.params
                   if p.grad is not None and id(p) not in left_out)

    def step(self, lr: float, coef: float = 1.0) -> float:
        """Scale the gradients by ``coef`` (the clip) and update; returns 0.0 seconds of communication."""
        if coef < 1:
            for g in self.grads():
                g.mul_(coef)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        return 0.0

    def state_by_param(self) -> dict:
        return {p: dict(self.optimizer.state[p]) for p in self.params if p in self.optimizer.state}

    def load_by_param(self, states: dict) -> None:
        for p, state in states.items():  # AdamW keeps its step count on the host, the moments beside p
            self.optimizer.state[p] = {k: v.clone() if v.dim() == 0 else v.to(p.device, copy=True)
                                       for k, v in state.items()}

    def memory(self) -> dict:
        size = lambda ts: sum(t.numel() * t.element_size() for t in ts)
        state = [t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
        return {"params": size(self.params), "grads": size(self.grads()), "optimizer": size(state)}


class LossScaler:
    """Dynamic loss scaling for fp16 (Micikevicius et al. 2018): halve on overflow, double after a run of good steps."""

    def __init__(self, scale: float = 2.0**16, growth_interval: int = 1000):
        self.scale, self.growth_interval, self.good_steps = scale, growth_interval, 0

    def unscale_or_skip(self, grads, comm) -> bool:
        """Divide the gradients by the scale; False (skip the step) if any rank of ``comm`` holds an inf/nan.

        Under tensor or pipeline parallelism or ZeRO each rank holds other
        gradients, so the ranks agree (one MAX of a flag) and all skip together.
        """
        bad = np.array([0 if all(bool(torch.isfinite(g).all()) for g in grads) else 1], dtype=np.int64)
        comm.Allreduce(MPI.IN_PLACE, bad, op=MPI.MAX)
        if bad[0]:
            self.scale /= 2
            self.good_steps = 0
            return False
        for g in grads:
            g.div_(self.scale)
        self.good_steps += 1
        if self.good_steps % self.growth_interval == 0:
            self.scale *= 2
        return True

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state.get("good_steps", 0))


class ShardOptimizer:
    """The optimizer (AdamW or SGD above) over a 1-D shard of the parameters laid end to end (a ZeRO or
    parameter-server shard).

    ``values``: the shard's elements; ``decay``: True where weight decay applies. The decayed and the
    other elements are one parameter each, in two groups, so every element gets the update the
    whole-model optimizer would give it (AdamW and SGD are element-wise).
    """

    def __init__(self, values: torch.Tensor, decay: torch.Tensor, kind: str, lr: float, weight_decay: float):
        decay = decay.to(values.device)
        self.where = (decay.nonzero().squeeze(1), (~decay).nonzero().squeeze(1))
        self.parts = [torch.nn.Parameter(values[w].clone()) for w in self.where]
        self.size = values.numel()
        self.optimizer = build_optimizer([{"params": [self.parts[0]], "weight_decay": weight_decay},
                                          {"params": [self.parts[1]], "weight_decay": 0.0}], kind, lr)

    def step(self, grad: torch.Tensor, lr: float, out: torch.Tensor) -> None:
        """One update with the shard's gradient ``grad``; the new values are written into ``out``."""
        for part, where in zip(self.parts, self.where):
            part.grad = grad[where]
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        with torch.no_grad():
            for part, where in zip(self.parts, self.where):
                out[where] = part

    def state(self) -> dict:
        """{kind: tensor over the shard's elements, in shard order} (a step count stays a scalar)."""
        out = {}
        for part, where in zip(self.parts, self.where):
            for kind, value in self.optimizer.state.get(part, {}).items():
                if value.dim() == 0:
                    out.setdefault(kind, value.clone())
                else:
                    out.setdefault(kind, torch.zeros(self.size, dtype=value.dtype, device=value.device))[where] = value
        return out

    def restore(self, values: torch.Tensor, state: dict) -> None:
        """Go back to ``values`` and ``state`` (what ``state()`` returned then): undo the steps since."""
        self.optimizer.state.clear()
        with torch.no_grad():
            for part, where in zip(self.parts, self.where):
                part.copy_(values[where])
        self.load(state)

    def load(self, state: dict) -> None:
        """Take the state ``state()`` returns (of the same shard)."""
        for part, where in zip(self.parts, self.where):
            self.optimizer.state[part] = {kind: v.clone() if v.dim() == 0 else v[where].to(part.device, copy=True)
                                          for kind, v in state.items()}

    def tensors(self):
        """The shard's own copies and state tensors (for memory accounting)."""
        return list(self.parts) + [t for s in self.optimizer.state.values() for t in s.values()
                                   if torch.is_tensor(t) and t.dim() > 0]
