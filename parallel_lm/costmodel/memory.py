"""Bytes per parameter and what each ZeRO stage shards, in one place: the predictor (layout.py), the memory check
(memory_check.py) and training (parallel/zero.py) all use it.

ZeRO (Rajbhandari et al., SC 2020) divides over the Nd data-parallel ranks
the optimizer state from stage 1, the gradients from stage 2 and the weights
from stage 3; everything else each rank holds whole.
"""
from __future__ import annotations

# Bytes per parameter of each optimizer's state (AdamW, as torch's: exp_avg and exp_avg_sq in fp32; SGD: none).
MOMENT_BYTES = {"adamw": 8, "sgd": 0}


def state_bytes(kind: str, optimizer: str = "adamw", zero: int = 0) -> tuple[int, int, int]:
    """(weights, gradients, optimizer state) bytes per parameter, before any sharding.

    ``kind`` "fp32": how this project trains, fp32 weights and gradients (bf16/fp16 runs autocast the compute
    and keep both in fp32): 4 + 4 + the optimizer's moments. Under ZeRO each rank also keeps the shard it owns
    as a separate fp32 copy that the optimizer steps and the all-gather reads (parallel/zero.py): 4 bytes more
    of optimizer state, 12 with AdamW (tests/test_memory_check.py counts the tensors a run really holds).
    ``kind`` "mixed": Megatron-LM's mixed precision (Micikevicius et al. 2018): 16-bit weights (2), an fp32
    gradient accumulation buffer (4), fp32 master weights and the moments (4 + 8 for Adam); 18 bytes per
    parameter with Adam, the figure behind Korthikanti et al. 2022's Figure 1.
    """
    moments = MOMENT_BYTES[optimizer]
    if kind == "mixed":
        return 2, 4, 4 + moments
    return 4, 4, moments + (4 if zero else 0)


def zero_shard(bytes_per_param: tuple[float, float, float], params: float, dp: int, zero: int) -> dict:
    """Bytes per rank of {"weights", "gradients", "optimizer"} for ``params`` parameters at ZeRO stage ``zero``."""
    weights, gradients, optimizer = bytes_per_param
    return {"weights": weights * params / (dp if zero >= 3 else 1),
            "gradients": gradients * params / (dp if zero >= 2 else 1),
            "optimizer": optimizer * params / (dp if zero >= 1 else 1)}
