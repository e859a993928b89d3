"""What each ZeRO stage shards, in one place: the predictor (layout.py) and training (parallel/zero.py) use it.

ZeRO (Rajbhandari et al., SC 2020) divides over the Nd data-parallel ranks
the optimizer state from stage 1, the gradients from stage 2 and the weights
from stage 3; everything else each rank holds whole.
"""
from __future__ import annotations


def zero_shard(bytes_per_param: tuple[float, float, float], params: float, dp: int, zero: int) -> dict:
    """Bytes per rank of {"weights", "gradients", "optimizer"} for ``params`` parameters at ZeRO stage ``zero``."""
    weights, gradients, optimizer = bytes_per_param
    return {"weights": weights * params / (dp if zero >= 3 else 1),
            "gradients": gradients * params / (dp if zero >= 2 else 1),
            "optimizer": optimizer * params / (dp if zero >= 1 else 1)}
