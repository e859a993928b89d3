"""What ``python -m parallel_lm.predict`` prints: one table per question, one row per rank count.

- ``layout_table``: the per-token model (a measured or given FLOP/s and an MFU) of a dp x tp x pp layout;
- ``gpu_table``: a real run on a GPU device (costmodel/step.py), every exposed term of the step in its own
  column, so that the columns add up to step_s.
Both print as they go and return the rows that ``--json`` writes.
"""
from __future__ import annotations

import click

from .costmodel.formulas import COSTS
from .costmodel.layout import Cluster, Layout
from .costmodel.predict import predict_layout
from .costmodel.stack import StackFactors, apply, fit, parse_measurements
from .costmodel.step import predict_run
from .costmodel.transformer import ModelShape


def layout_table(preset, prof, rank_counts, tp, pp, m, zero, global_batch, algorithm, n_params, flops_per_token,
                 flops, mfu, devices, device_text) -> list[dict]:
    """Print and return predict_layout's terms for each rank count (dp = ranks / (tp pp))."""
    from .model import PRESETS
    cfg = PRESETS[preset]
    inner, outer = prof.network(), prof.slowest()  # tensor groups inside a node; data and pipeline across

    def allreduce_s(n, ranks, level):
        return COSTS["allreduce"][algorithm](n, ranks).time_s(inner if level == "tp" else outer)

    print(f"# {preset}: {n_params / 1e6:.2f}M parameters; {global_batch} x {cfg.block_size} tokens per step; "
          f"tp {tp}, pp {pp}, {m} micro-batch(es), ZeRO {zero}")
    print(f"# device: {device_text}; MFU {mfu:.3f}; network {prof.name}: tensor-parallel all-reduces on its first "
          f"level, data-parallel and pipeline traffic on its slowest")
    print(f"{'ranks':>6} {'dp':>4} {'compute_ms':>11} {'bubble_ms':>10} {'tp_comm_ms':>11} {'pp_comm_ms':>11} "
          f"{'dp_comm_ms':>11} {'step_ms':>9} {'tokens/s':>12} {'GiB/rank':>9}")
    rows = []
    for p in rank_counts:
        if p % (tp * pp) or global_batch % (p // (tp * pp) * m) or cfg.n_layer % pp or cfg.n_head % tp:
            raise click.UsageError(f"{p} ranks do not fit tp {tp} x pp {pp} with batch {global_batch}, {m} "
                                   f"micro-batches and {cfg.n_layer} layers / {cfg.n_head} heads: adjust the flags")
        dp = p // (tp * pp)
        pred = predict_layout(n_params=n_params, flops_per_token=flops_per_token, n_layer=cfg.n_layer,
                              block_size=cfg.block_size, n_embd=cfg.n_embd, global_batch=global_batch, dp=dp, tp=tp,
                              pp=pp, micro_batches=m, zero=zero, flops_per_s=flops, mfu=mfu, devices=devices,
                              allreduce_s=allreduce_s, p2p_s=lambda n: outer.alpha_s + n * outer.beta_s_per_byte)
        print(f"{p:>6} {dp:>4} {pred.compute_s * 1e3:>11.3f} {pred.bubble_s * 1e3:>10.3f} {pred.tp_comm_s * 1e3:>11.3f} "
              f"{pred.pp_comm_s * 1e3:>11.3f} {pred.dp_comm_s * 1e3:>11.3f} {pred.step_s * 1e3:>9.3f} "
              f"{pred.tokens_per_s:>12.0f} {sum(pred.memory_bytes.values()) / 2**30:>9.2f}")
        rows.append({"preset": preset, "profile": prof.name, "ranks": p, **pred.to_dict()})
    print("# memory per rank: this rank's parameters, gradients and AdamW state in fp32 under the ZeRO stage")
    return rows


def layout_at(gpus: int, layout: dict, dp: int | None) -> Layout:
    """The layout on ``gpus`` GPUs: dp = GPUs / (cp tp pp) unless --dp is given."""
    return Layout(dp=dp or max(1, gpus // (layout["tp"] * layout["pp"] * layout["cp"])), **layout)


def refuse_layouts(shape: ModelShape, layouts: dict[int, Layout], where: str) -> None:
    """UsageError listing every problem of each GPU count's layout, each line led by ``where`` (the count in {})."""
    problems = {gpus: lay.problems(shape, gpus) for gpus, lay in layouts.items()}
    errors = [f"{where.format(gpus)}: " + "; ".join(found) for gpus, found in problems.items() if found]
    if errors:
        raise click.UsageError("\n".join(errors))


def calibrated(shape: ModelShape, cluster: Cluster, layout: dict, dp: int | None, text: str) -> Cluster:
    """``cluster`` with the stack's factors fitted to the measured steps in ``text`` (--calibrate-to), printed
    with the model's step before and after at each measured count (costmodel/stack.py)."""
    try:
        measured = parse_measurements(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--calibrate-to") from None
    refuse_layouts(shape, {gpus: layout_at(gpus, layout, dp) for _, gpus in measured}, "--calibrate-to at {} GPUs")
    step_s = lambda gpus, f: predict_run(shape, layout_at(gpus, layout, dp), apply(cluster, f)).step_s
    try:
        factors = fit(step_s, measured)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--calibrate-to") from None
    points = "; ".join(f"{gpus} GPUs: measured {s:.4g} s, model {step_s(gpus, StackFactors()):.4g} s, "
                       f"calibrated {step_s(gpus, factors):.4g} s" for s, gpus in measured)
    print(f"# calibrated to {len(measured)} measurement(s): {factors.describe()}"
          + (" (one measurement: compute only; give two at different GPU counts to fit the network too)"
             if len(measured) == 1 else "") + f"; {points}")
    return apply(cluster, factors)


def gpu_table(shape: ModelShape, cluster: Cluster, rank_counts: list[int], layout: dict, dp: int | None,
              profile_name: str) -> list[dict]:
    """Print and return ``predict_run`` for each GPU count (dp = GPUs / (tp pp) unless --dp is given)."""
    tp, pp, cp = layout["tp"], layout["pp"], layout["cp"]
    dev = cluster.device
    if dp is None:
        uneven = [g for g in rank_counts if g % (tp * pp * cp)]
        if uneven:
            raise click.UsageError(f"--ranks {uneven[0]} is not divisible by " + (f"--cp {cp} x " if cp > 1 else "")
                                   + f"--tp {tp} x --pp {pp}: use a multiple of {tp * pp * cp}")
    layouts = [layout_at(gpus, layout, dp) for gpus in rank_counts]
    refuse_layouts(shape, dict(zip(rank_counts, layouts)), "--ranks {}")
    print(f"# model: {shape.n_layer} layers, hidden {shape.n_embd}, {shape.n_head} heads"
          + (f" ({shape.kv_heads} kv)" if shape.kv_heads != shape.n_head else "")
          + (f", {shape.n_experts} experts (top-{shape.top_k})" if shape.n_experts else "")
          + f", ffn {shape.ffn}, seq {shape.seq_len}, vocab {shape.vocab_size}, "
          + f"{'flash' if shape.fused_attention else 'unfused'} attention"
          + (", gated MLP, RMSNorm, rotary, untied head" if shape.gated_mlp else "")
          + f": {shape.params() / 1e9:.3f}B parameters")
    print(f"# device: {dev.name}, {dev.flops(layout['precision']) / 1e12:.0f} TFLOP/s {layout['precision']} peak, "
          f"{dev.memory_bytes / 2**30:.0f} GiB; GEMMs at {dev.gemm_efficiency:.2f} of peak + "
          f"{dev.gemm_overhead_s * 1e6:.0f} us each, element-wise at {dev.memory_efficiency:.2f} of "
          f"{dev.hbm_bytes_per_s / 1e12:.2f} TB/s")
    print(f"# layout: tp {tp}, pp {pp}"
          + (f" (layers {','.join(map(str, layout['stage_layers']))})" if layout["stage_layers"] else "")
          + f", virtual stages {layout['virtual_stages']}, micro-batch {layout['micro_batch']}, "
          f"global batch {layout['global_batch']}, ZeRO {layout['zero']}, recompute {layout['recompute']}"
          + (", sequence parallel" if layout["sequence_parallel"] else "")
          + (f", context parallel {cp}" if cp > 1 else "") + (f", expert parallel {layout['ep']}" if layout["ep"] > 1 else "")
          + f", data-parallel sync {'behind backward' if layout['dp_overlap'] else 'after backward'}")
    extra, zero3 = cp > 1 or layout["ep"] > 1, layout["zero"] == 3
    print(f"{'gpus':>6} {'dp':>5} {'step_s':>9} {'TFLOP/s':>8} {'MFU':>6} {'tokens/s':>11} {'compute':>8} {'tp':>7} "
          + (f"{'cp':>7} {'a2a':>7} " if extra else "") + f"{'pp':>7} {'bubble':>7} {'dp':>7} "
          + (f"{'gather':>7} " if zero3 else "") + f"{'optim':>7} {'GiB/GPU':>8} fits")
    rows = []
    for gpus, lay in zip(rank_counts, layouts):
        pred = predict_run(shape, lay, cluster)
        t = pred.terms_s
        print(f"{gpus:>6} {lay.dp:>5} {pred.step_s:>9.4g} {pred.tflops_per_gpu:>8.1f} {pred.mfu:>6.3f} "
              f"{pred.tokens_per_s:>11.4g} {t['compute_s']:>8.4g} {t['tp_comm_s']:>7.3g} "
              + (f"{t['cp_comm_exposed_s']:>7.3g} {t['ep_all_to_all_s']:>7.3g} " if extra else "") + f"{t['pp_comm_s']:>7.3g} "
              f"{t['bubble_s']:>7.3g} {t['dp_comm_exposed_s']:>7.3g} "
              + (f"{t['zero3_gather_exposed_s']:>7.3g} " if zero3 else "") + f"{t['optimizer_s']:>7.3g} "
              f"{pred.memory_gib_per_gpu:>8.2f} {'yes' if pred.fits else 'NO'}")
        mem = {k: v / 2**30 for k, v in pred.memory_bytes.items()}
        rows.append({"ranks": gpus, "dp": lay.dp, "model_params": shape.params(), "device": dev.name,
                     "profile": profile_name, **pred.to_dict(), "memory_gib_parts": mem})
    last = rows[-1]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in last["memory_gib_parts"].items())
    print(f"# memory per GPU at {last['ranks']} GPUs (GiB, first pipeline stage): {parts}")
    print("# TFLOP/s counts the recomputed forward (Megatron-LM's convention, eq. 3 of Narayanan et al. 2021); "
          "MFU counts model FLOPs only; terms in seconds per step, exposed parts only: they add up to step_s")
    return rows
