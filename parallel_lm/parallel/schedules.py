"""Pipeline schedules: the order in which a stage runs its micro-batches' forwards and backwards.

- GPipe (Huang et al. 2019): all m forwards, then all m backwards. Stage s
  idles while the first micro-batch reaches it and while the last
  gradient comes back: the *bubble*, (p-1)/(m+p-1) of the step when every
  micro-batch costs the same on every stage. It also holds all m
  micro-batches' activations at once.
- 1F1B (PipeDream-Flush, Narayanan et al. 2021): p-s-1 warm-up forwards,
  then one forward and one backward in turn, then the remaining
  backwards. Same bubble, but at most p-s micro-batches' activations live
  at once.
- Interleaved 1F1B (``--virtual-stages v``, Narayanan et al. 2021,
  section 2.2): each rank holds v chunks of L/(p·v) layers, chunk c of rank
  s being virtual stage c·p + s, and runs Megatron-LM's order
  (``interleaved_schedule``). A micro-batch goes around the ranks v times,
  each pass 1/v of the work, so the bubble shrinks to (p-1)/(v·m+p-1) of the
  step, for v times as many messages and (1 + (p-1)/(p·v)) times the
  activations of 1F1B at its peak.

``ideal_bubble`` runs any of them op by op with equal costs and free
messages: the idle fraction it finds is ``bubble_formula`` exactly
(tests/test_memory_features.py), which separates what a schedule costs from
what a machine adds.
"""
from __future__ import annotations


def schedule(kind: str, m: int, stage: int, stages: int) -> list[tuple[str, int]]:
    """The ("F" | "B", micro-batch) sequence stage ``stage`` runs."""
    if kind == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
    if kind != "1f1b":
        raise ValueError(f"unknown pipeline schedule {kind!r}; valid: gpipe, 1f1b")
    warm = min(stages - stage - 1, m)
    ops = [("F", i) for i in range(warm)]
    for i in range(m - warm):
        ops += [("F", warm + i), ("B", i)]
    return ops + [("B", i) for i in range(m - warm, m)]


def interleaved_schedule(m: int, stage: int, stages: int, virtual: int) -> list[tuple[str, int, int]]:
    """The ("F" | "B", chunk, micro-batch) sequence of interleaved 1F1B (Megatron-LM's order).

    Virtual step k runs micro-batch (k // pv)·p + k % p on chunk (k % pv) // p
    (backward: the chunks in reverse); stage s warms up with (p-s-1)·2 + (v-1)·p
    forwards (all of them when m = p), then alternates, then drains. Needs m % p == 0.
    """
    total, group = m * virtual, stages * virtual

    def op(kind: str, k: int) -> tuple[str, int, int]:
        chunk = (k % group) // stages
        return kind, chunk if kind == "F" else virtual - 1 - chunk, (k // group) * stages + k % stages

    warm = total if m == stages else min((stages - stage - 1) * 2 + (virtual - 1) * stages, total)
    ops = [op("F", k) for k in range(warm)]
    for k in range(total - warm):
        ops += [op("F", warm + k), op("B", k)]
    return ops + [op("B", k) for k in range(total - warm, total)]


def ops_for(kind: str, m: int, stage: int, stages: int, virtual: int = 1) -> list[tuple[str, int, int]]:
    """The ("F" | "B", chunk, micro-batch) sequence rank ``stage`` runs: interleaved when v > 1."""
    if virtual > 1:
        return interleaved_schedule(m, stage, stages, virtual)
    return [(op, 0, i) for op, i in schedule(kind, m, stage, stages)]


def bubble_formula(stages: int, m: int, virtual: int = 1) -> float:
    """(p-1)/(v·m+p-1): the idle fraction of a step with equal micro-batch costs; v = 1 for GPipe and 1F1B.

    Interleaving v chunks per rank shrinks the bubble to (p-1)/v of a chunk's
    work against m·v of them: (p-1)/(v·m) of the ideal time, as Narayanan et al. 2021 state it.
    """
    return (stages - 1) / (virtual * m + stages - 1)


def ideal_bubble(kind: str, m: int, stages: int, virtual: int = 1, backward: float = 2.0) -> float:
    """The idle fraction of a step when every chunk's forward takes 1/v and its backward ``backward``/v
    and messages take no time: each rank runs its schedule in order, an op starting once its input is
    there. What the schedule itself costs, apart from this machine's noise (bubble_formula's setting)."""
    ops = {r: ops_for(kind, m, r, stages, virtual) for r in range(stages)}
    done, clock, nxt = {}, [0.0] * stages, [0] * stages
    last = stages * virtual - 1
    while any(nxt[r] < len(ops[r]) for r in range(stages)):
        progressed = False
        for r in range(stages):
            while nxt[r] < len(ops[r]):
                op, c, i = ops[r][nxt[r]]
                v = c * stages + r
                need = ("F", v - 1, i) if op == "F" else ("B", v + 1, i) if v < last else ("F", v, i)
                if op == "F" and v == 0:
                    need = None
                if need is not None and need not in done:
                    break
                start = max(clock[r], done[need] if need else 0.0)
                clock[r] = start + (1.0 if op == "F" else backward) / virtual
                done[op, v, i] = clock[r]
                nxt[r] += 1
                progressed = True
        if not progressed:
            raise RuntimeError(f"the {kind} schedule waits in a cycle (m {m}, p {stages}, v {virtual})")
    span = max(clock)
    return 1 - m * (1 + backward) / span
