"""Exercise 14.1 (lesson 14): model state per GPU.

Mixed-precision Adam keeps, per parameter, 2 bytes of fp16 weights, 2 of
fp16 gradients and 12 of optimizer state (fp32 master weights, momentum
and variance). Tensor parallelism (tp) and pipeline parallelism (pp)
split the parameters over tp * pp GPUs. ZeRO then shards over the dp
data-parallel replicas: stage 1 the optimizer state, stage 2 also the
gradients, stage 3 also the weights. Return the bytes one GPU holds.

The checker compares with the predictor's own count on configurations
you have not seen (the planner of lesson 14 rests on it).
"""


def model_state_bytes(params, dp, tp, pp, zero):
    """Bytes of weights + gradients + optimizer state on one GPU (``zero`` in 0..3)."""
    per_gpu = params / (tp * pp)
    weights = 2 * per_gpu / (dp if zero >= 3 else 1)
    grads = 2 * per_gpu / (dp if zero >= 2 else 1)
    optimizer = 12 * per_gpu / (dp if zero >= 1 else 1)
    return weights + grads + optimizer
