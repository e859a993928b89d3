"""Predict published training runs of real systems and print predicted vs published, with the error.

    python benchmarks/published_runs.py            # every table, the summary over all rows, plots into plots/
    python benchmarks/published_runs.py --fit      # refit the device's fitted efficiencies (prints them)
    python benchmarks/published_runs.py --zero3    # Table 2's ZeRO-3 rows under each ZERO3_OVERLAP

Tables (inputs per row from the papers, one set of device and network constants for all rows):
- Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using
  Megatron-LM" (SC21, arXiv 2104.04473), Table 1: per-GPU TFLOP/s, 1.7B to 1T parameters on 32 to
  3,072 A100s. Micro-batch size, interleaving and DDP implementation per row from the paper's
  reproduction script (Megatron-LM, examples/sc21/run_table_1.sh); full recomputation on every row.
- Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"
  (arXiv 2205.05198), Table 5: iteration time with full recomputation, and with sequence parallelism
  + selective recomputation (configurations from its Table 3), and Figure 1: memory per GPU.
- Narayanan et al. 2021, Table 2: PTD-P (tp 8, pp 12 / 35, micro-batch 1) and ZeRO-3 without model
  parallelism, per-GPU TFLOP/s of 175B and 530B on 384 to 2,240 A100s. Interleaving is not stated: the
  PTD-P rows take the Table 1 row of their size class (145.6B: 2; 529.6B: 3). The ZeRO-3 rows ran on
  DeepSpeed, which gathers weight matrix by weight matrix (--zero3-gather matrix).
- Dubey et al. 2024, "The Llama 3 Herd of Models" (arXiv 2407.21783), Table 4: BF16 MFU of Llama 3 405B
  on 8,192 and 16,384 H100s at 8K context and on 16,384 with cp 16 at 128K; tp 8, pp 16. Stated as the
  paper describes it (section 3.3.2): 126 layers with one fewer on the first and the last stage, whose
  first and last chunks hold only the embedding and the head (so chunks of one layer: 8 virtual stages),
  FSDP sharding gradients and optimizer state (--zero 2), no activation recomputation at 8K; sequence
  parallelism and micro-batch 1 are assumed. Llama 3 ran on its own stack: the rows are shown as predicted
  with the Megatron-fitted constants, and calibrated (``stack.fit``, what ``predict --calibrate-to`` does)
  on the 8,192-GPU row's step time, predicting the other two.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from parallel_lm.costmodel import stack  # noqa: E402
from parallel_lm.costmodel.devices import DEVICES, GIB  # noqa: E402
from parallel_lm.costmodel.layout import Cluster, Layout, memory_per_gpu  # noqa: E402
from parallel_lm.costmodel.step import predict_run  # noqa: E402
from parallel_lm.costmodel.profiles import load_profile  # noqa: E402
from parallel_lm.costmodel.transformer import ModelShape, megatron_flops  # noqa: E402

SEQ, VOCAB = 2048, 51200
# (name, heads, hidden, layers, tp, pp, gpus, batch, micro-batch, virtual stages, torch DDP (overlapped), TFLOP/s)
TABLE_1 = [
    ("1.7B", 24, 2304, 24, 1, 1, 32, 512, 16, 1, True, 137),
    ("3.6B", 32, 3072, 30, 2, 1, 64, 512, 16, 1, True, 138),
    ("7.5B", 32, 4096, 36, 4, 1, 128, 512, 16, 1, True, 142),
    ("18.4B", 48, 6144, 40, 8, 1, 256, 1024, 8, 1, True, 135),
    ("39.1B", 64, 8192, 48, 8, 2, 512, 1536, 4, 1, False, 138),
    ("76.1B", 80, 10240, 60, 8, 4, 1024, 1792, 2, 3, False, 140),
    ("145.6B", 96, 12288, 80, 8, 8, 1536, 2304, 2, 2, False, 148),
    ("310.1B", 128, 16384, 96, 8, 16, 1920, 2160, 1, 2, False, 155),
    ("529.6B", 128, 20480, 105, 8, 35, 2520, 2520, 1, 3, False, 163),
    ("1008.0B", 160, 25600, 128, 8, 64, 3072, 3072, 1, 1, False, 163),
]
# (name, heads, hidden, layers, tp, pp, gpus, batch, micro-batch, virtual stages,
#  seconds full recompute, seconds seq-parallel + selective, GiB params+optimizer, GiB act none, GiB act seq+sel)
TABLE_5 = [
    ("22B", 64, 6144, 48, 8, 1, 8, 4, 4, 1, 1.42, 1.10, 45.56, 59.25, 9.56),
    ("175B", 96, 12288, 96, 8, 8, 64, 64, 1, 3, 18.13, 13.75, 45.56, 66.84, 12.35),
    ("530B", 128, 20480, 105, 8, 35, 280, 280, 1, 3, 49.05, 37.83, 31.64, 114.02, 23.08),
    ("1T", 160, 25600, 128, 8, 64, 512, 512, 1, 1, 94.42, 71.49, 32.96, 131.25, 26.56),
]

# Narayanan et al. 2021, Table 2: ZeRO-3 without model parallelism (A100 80 GB, DGX A100, fp16, full recompute)
# (name, heads, hidden, layers, gpus, batch, micro-batch, TFLOP/s per GPU)
TABLE_2_ZERO3 = [
    ("175B", 96, 12288, 96, 384, 1536, 4, 144), ("175B", 96, 12288, 96, 768, 1536, 2, 88),
    ("175B", 96, 12288, 96, 1536, 1536, 1, 44), ("530B", 128, 20480, 105, 640, 2560, 4, 138),
    ("530B", 128, 20480, 105, 1120, 2240, 2, 98), ("530B", 128, 20480, 105, 2240, 2240, 1, 48),
]


# Table 2, PTD-P: (name, heads, hidden, layers, tp, pp, gpus, batch, micro-batch, virtual stages (assumed), TFLOP/s)
TABLE_2_PTDP = [
    ("175B", 96, 12288, 96, 8, 12, 384, 1536, 1, 2, 153), ("175B", 96, 12288, 96, 8, 12, 768, 1536, 1, 2, 149),
    ("175B", 96, 12288, 96, 8, 12, 1536, 1536, 1, 2, 141), ("530B", 128, 20480, 105, 8, 35, 560, 2240, 1, 3, 171),
    ("530B", 128, 20480, 105, 8, 35, 1120, 2240, 1, 3, 167), ("530B", 128, 20480, 105, 8, 35, 2240, 2240, 1, 3, 159),
]

LLAMA3 = ModelShape(126, 16384, 128, 8192, 128256, n_kv_head=8, ffn_hidden=53248, dropout=False, fused_attention=True,
                    gated_mlp=True, biases=False, learned_positions=False, tied_embeddings=False)
# Table 4: (GPUs, cp, sequence length, global batch in sequences (16M tokens), BF16 MFU)
TABLE_4_LLAMA3 = [(8192, 1, 8192, 2048, 0.43), (16384, 1, 8192, 2048, 0.41), (16384, 16, 131072, 128, 0.38)]
LLAMA3_STAGES = (7,) + (8,) * 14 + (7,)


def llama3_layout(gpus, cp, batch) -> Layout:
    return Layout(batch, 1, gpus // (8 * 16 * cp), tp=8, pp=16, cp=cp, virtual_stages=8, zero=2,
                  sequence_parallel=True, precision="bf16", stage_layers=LLAMA3_STAGES)


def llama3_cluster():
    return Cluster.from_profile(DEVICES["h100-sxm"], load_profile("dgx-h100-ndr"))


def table_4_llama3(calibrate: bool):
    """MFU of each row; ``calibrate``: the stack's factors fitted on the first row's step time (the step that
    MFU implies), the others predicted with them (their errors are predictions, the first row's is zero)."""
    cl, factors = llama3_cluster(), stack.StackFactors()
    if calibrate:
        gpus, cp, seq, batch, mfu = TABLE_4_LLAMA3[0]
        shape, lay = replace(LLAMA3, seq_len=seq), llama3_layout(gpus, cp, batch)
        base = predict_run(shape, lay, cl)
        measured = base.step_s * base.mfu / mfu  # the same FLOPs at the published MFU
        factors = stack.fit(lambda g, f: predict_run(shape, lay, stack.apply(cl, f)).step_s, [(measured, gpus)])
    rows = []
    for i, (gpus, cp, seq, batch, mfu) in enumerate(TABLE_4_LLAMA3):
        pred = predict_run(replace(LLAMA3, seq_len=seq), llama3_layout(gpus, cp, batch), stack.apply(cl, factors))
        rows.append({"model": f"{seq // 1024}K@{gpus}", "column": "calibrated" if calibrate else "Megatron constants",
                     "published": 100 * mfu, "predicted": 100 * pred.mfu, "fits": pred.fits,
                     "memory_gib": pred.memory_gib_per_gpu, "fitted_on": calibrate and i == 0,
                     "factors": factors.describe()})
    return rows


def table_2_ptdp(cl):
    rows = []
    for name, a, h, l, t, p, gpus, batch, mb, v, published in TABLE_2_PTDP:
        shape = ModelShape(l, h, a, SEQ, VOCAB)
        pred = predict_run(shape, Layout(batch, mb, gpus // (t * p), t, p, v, recompute="full", precision="fp16"), cl)
        rows.append({"model": f"{name}@{gpus}", "published": published, "step_s": pred.step_s, "fits": pred.fits,
                     "predicted": megatron_flops(shape, batch) / pred.step_s / gpus / 1e12, "terms_s": pred.terms_s})
    return rows


def cluster(device=None):
    return Cluster.from_profile(device or DEVICES["a100-80gb"], load_profile("dgx-a100-hdr"))


def table_1(cl):
    rows = []
    for name, a, h, l, t, p, gpus, batch, mb, v, ddp_overlap, published in TABLE_1:
        shape = ModelShape(l, h, a, SEQ, VOCAB)
        lay = Layout(batch, mb, gpus // (t * p), t, p, v, recompute="full", precision="fp16", dp_overlap=ddp_overlap)
        pred = predict_run(shape, lay, cl)
        # Megatron's eq. 3 over the predicted step, the paper's own way of turning time into TFLOP/s
        tflops = megatron_flops(shape, batch) / pred.step_s / gpus / 1e12
        rows.append({"model": name, "published": published, "predicted": tflops, "step_s": pred.step_s,
                     "terms_s": pred.terms_s})
    return rows


def table_2_zero3(cl, share=None):
    """The ZeRO-3 rows: TFLOP/s per GPU (eq. 3) predicted vs published; ``share``: ZERO3_OVERLAP to try."""
    from parallel_lm.costmodel import step
    rows, kept = [], step.ZERO3_OVERLAP
    step.ZERO3_OVERLAP = kept if share is None else share
    try:
        for name, a, h, l, gpus, batch, mb, published in TABLE_2_ZERO3:
            shape = ModelShape(l, h, a, SEQ, VOCAB)
            lay = Layout(batch, mb, gpus, zero=3, recompute="full", precision="fp16", zero3_gather="matrix")
            pred = predict_run(shape, lay, cl)  # DeepSpeed's ZeRO-3: gathered weight by weight
            rows.append({"model": f"{name}@{gpus}", "published": published, "step_s": pred.step_s,
                         "predicted": megatron_flops(shape, batch) / pred.step_s / gpus / 1e12,
                         "terms_s": pred.terms_s, "memory_gib": pred.memory_gib_per_gpu, "fits": pred.fits})
    finally:
        step.ZERO3_OVERLAP = kept
    return rows


def table_5(cl):
    rows = []
    for name, a, h, l, t, p, gpus, batch, mb, v, full_s, sel_s, *_ in TABLE_5:
        shape = ModelShape(l, h, a, SEQ, VOCAB)
        d = gpus // (t * p)
        full = predict_run(shape, Layout(batch, mb, d, t, p, v, recompute="full", precision="fp16"), cl)
        sel = predict_run(shape, Layout(batch, mb, d, t, p, v, recompute="selective", sequence_parallel=True,
                                        precision="fp16"), cl)
        rows.append({"model": name, "column": "full recompute", "published": full_s, "predicted": full.step_s,
                     "terms_s": full.terms_s})
        rows.append({"model": name, "column": "seq-par + selective", "published": sel_s, "predicted": sel.step_s,
                     "terms_s": sel.terms_s})
    return rows


def memory_rows():
    rows = []
    for name, a, h, l, t, p, gpus, batch, mb, v, _, _, state_gib, none_gib, sel_gib in TABLE_5:
        shape = ModelShape(l, h, a, SEQ, VOCAB)
        d = gpus // (t * p)
        none = memory_per_gpu(shape, Layout(batch, mb, d, t, p, v, precision="fp16"))
        sel = memory_per_gpu(shape, Layout(batch, mb, d, t, p, v, recompute="selective", sequence_parallel=True,
                                           precision="fp16"))
        state = (none["weights"] + none["gradients"] + none["optimizer"]) / GIB
        rows += [{"model": name, "column": "params + optimizer", "published": state_gib, "predicted": state},
                 {"model": name, "column": "activations, none", "published": none_gib,
                  "predicted": none["activations"] / GIB},
                 {"model": name, "column": "activations, seq + sel", "published": sel_gib,
                  "predicted": sel["activations"] / GIB}]
    return rows


def errors(rows):
    for r in rows:
        r["error_pct"] = (r["predicted"] / r["published"] - 1) * 100
    errs = [abs(r["error_pct"]) for r in rows]
    return sum(errs) / len(errs), max(errs)


def show(title, unit, rows):
    mean, worst = errors(rows)
    print(f"## {title}")
    print(f"{'model':>8} {'column':>22} {'published':>10} {'predicted':>10} {'error':>8}")
    for r in rows:
        print(f"{r['model']:>8} {r.get('column', unit):>22} {r['published']:>10.2f} {r['predicted']:>10.2f} "
              f"{r['error_pct']:>+7.1f}%")
    print(f"# mean |error| {mean:.1f}%, max {worst:.1f}%\n")
    return mean, worst


GRID = {"gemm_efficiency": (0.70, 0.72, 0.74, 0.76, 0.78, 0.80), "memory_efficiency": (0.5, 0.6, 0.7, 0.8, 0.9)}


def fit(tables=("table_1", "table_5")):
    """Grid search of the device's two fitted efficiencies: least (worst mean + 0.3 x worst max) |error| over ``tables``."""
    from itertools import product
    base, best = DEVICES["a100-80gb"], None
    for ge, me in product(*GRID.values()):
        cl = cluster(replace(base, gemm_efficiency=ge, memory_efficiency=me))
        scores = [errors(globals()[t](cl)) for t in tables]
        score = max(m for m, _ in scores) + 0.3 * max(x for _, x in scores)
        if best is None or score < best[0]:
            best = (score, {"gemm_efficiency": ge, "memory_efficiency": me})
    return best[1]


def cross_check():
    """Fit on one table, predict the other: how much the fit flatters the model."""
    for fitted, held_out in (("table_1", "table_5"), ("table_5", "table_1")):
        constants = fit((fitted,))
        mean, worst = errors(globals()[held_out](cluster(replace(DEVICES["a100-80gb"], **constants))))
        print(f"# fitted on {fitted} {constants}: {held_out} mean |error| {mean:.1f}%, max {worst:.1f}%")


def plot(folder: Path, t1, t5, mem):
    """One figure per table: published and predicted side by side, the error under each pair."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figures = (("published_megatron_table1", "Megatron-LM Table 1 (A100, DGX A100 + 8x HDR)", "TFLOP/s per GPU", t1),
               ("published_korthikanti_table5", "Korthikanti et al. Table 5: iteration time", "seconds", t5),
               ("published_korthikanti_memory", "Korthikanti et al. Figure 1: memory per GPU", "GiB", mem))
    for name, title, unit, rows in figures:
        fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows)), 3.6))
        x = range(len(rows))
        labels = [r["model"] + ("\n" + r["column"] if "column" in r else "") for r in rows]
        ax.bar([i - 0.2 for i in x], [r["published"] for r in rows], 0.4, label="published")
        ax.bar([i + 0.2 for i in x], [r["predicted"] for r in rows], 0.4, label="predicted")
        for i, r in zip(x, rows):
            ax.annotate(f"{r['error_pct']:+.1f}%", (i, max(r["published"], r["predicted"])), ha="center",
                        va="bottom", fontsize=7)
        ax.set_xticks(list(x), labels, fontsize=6 if "column" in rows[0] else 8)
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        for ext in ("png", "svg"):
            fig.savefig(folder / f"{name}.{ext}", dpi=110)
        plt.close(fig)
        print(f"# wrote {folder / name}.png")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write every row here")
    ap.add_argument("--plots", default=str(ROOT / "plots"), help="folder for the figures ('' for none)")
    ap.add_argument("--terms", action="store_true", help="print each row's step-time terms")
    ap.add_argument("--fit", action="store_true", help="refit the device's efficiencies on both tables, and cross-check")
    ap.add_argument("--zero3", action="store_true", help="the ZeRO-3 rows of Table 2, and ZERO3_OVERLAP refitted")
    args = ap.parse_args()
    if args.zero3:
        cl = cluster()
        for share in (0.0, 0.25, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 1.0):
            mean, worst = errors(table_2_zero3(cl, share))
            print(f"# ZERO3_OVERLAP {share:.2f}: mean |error| {mean:.1f}%, max {worst:.1f}%")
        show("Narayanan et al. Table 2, ZeRO-3 without model parallelism: TFLOP/s per GPU (eq. 3)", "TFLOP/s",
             table_2_zero3(cl))
        return
    if args.fit:
        print(f"# fitted on both tables: {fit()}")
        cross_check()
        return
    cl = cluster()
    t1, t5, mem = table_1(cl), table_5(cl), memory_rows()
    ptdp, zero3 = table_2_ptdp(cl), table_2_zero3(cl)
    llama_raw, llama = table_4_llama3(calibrate=False), table_4_llama3(calibrate=True)
    show("Megatron-LM Table 1: TFLOP/s per GPU (eq. 3)", "TFLOP/s", t1)
    show("Narayanan et al. Table 2, PTD-P: TFLOP/s per GPU (eq. 3)", "TFLOP/s", ptdp)
    show("Narayanan et al. Table 2, ZeRO-3 without model parallelism: TFLOP/s per GPU (eq. 3)", "TFLOP/s", zero3)
    show("Korthikanti et al. Table 5: iteration time (s)", "s", t5)
    show("Korthikanti et al. Figure 1: memory per GPU (GiB)", "GiB", mem)
    show("Llama 3 405B, Table 4: BF16 MFU (%), Megatron-fitted constants", "MFU %", llama_raw)
    print(f"# calibrated on the 8K@8192 row's step: {llama[0]['factors']}")
    show("Llama 3 405B, Table 4: BF16 MFU (%), calibrated on 8K@8192", "MFU %", llama)
    print("# memory per GPU (GiB) and fits in 80 GB: " + ", ".join(
        f"{r['model']} {r['memory_gib']:.1f} {'yes' if r['fits'] else 'NO'}" for r in llama))
    predicted = t1 + ptdp + zero3 + t5 + mem + [r for r in llama if not r["fitted_on"]]
    mean, worst = errors(predicted)
    ran = ptdp + zero3 + llama
    print(f"# every published row ({len(predicted)}; Llama 3 calibrated, its calibration row left out): mean |error| "
          f"{mean:.1f}%, max {worst:.1f}% ({max(predicted, key=lambda r: abs(r['error_pct']))['model']}); "
          f"fits for every run that ran: {all(r['fits'] for r in ran)} ({sum(r['fits'] for r in ran)}/{len(ran)})")
    if args.terms:
        for r in t1 + t5:
            print(r["model"], r.get("column", ""), {k: round(v, 4) for k, v in r["terms_s"].items()})
    if args.plots:
        plot(Path(args.plots), t1, t5, mem)
    if args.json:
        Path(args.json).write_text(json.dumps({"table_1": t1, "table_2_ptdp": ptdp, "table_2_zero3": zero3, "table_5": t5,
                                               "memory": mem, "llama3": llama_raw, "llama3_calibrated": llama},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
