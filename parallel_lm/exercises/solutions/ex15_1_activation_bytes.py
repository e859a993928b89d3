"""Exercise 15.1 (lesson 15): activation memory of one transformer layer.

Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", section 4) count the bytes one layer keeps for
backward, with 16-bit activations and dropout, for sequence length s,
micro-batch b, hidden size h and a heads:
    s*b*h * (34 + 5*a*s/h)
Of the 34, tensor parallelism over t ranks splits 24 (and all of the
5*a*s/h attention core); 10 stay whole on every rank unless sequence
parallelism splits them too. Selective recomputation drops the attention
core; full recomputation keeps only the layer's input, 2*s*b*h (split by
t under sequence parallelism).

The checker compares with the predictor's count on shapes you have not
seen, for every recompute mode with and without sequence parallelism.
"""


def activation_bytes(s, b, h, a, t=1, sequence_parallel=False, recompute="none"):
    """Bytes of activations one layer keeps per micro-batch on one tensor-parallel rank."""
    sbh = s * b * h
    split_seq = t if sequence_parallel else 1
    if recompute == "full":
        return 2 * sbh / split_seq
    total = sbh * (10 / split_seq + 24 / t)
    if recompute == "none":
        total += sbh * 5 * a * s / (h * t)
    return total
