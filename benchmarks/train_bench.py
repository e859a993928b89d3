"""Training throughput: explicit ring all-reduce (overlap on/off) vs torch DDP, and a bucket-size sweep.

    python benchmarks/train_bench.py                 # about 8 minutes on a 2-core machine
    python benchmarks/train_bench.py --part sweep    # only the bucket sweep (+ plots/bucket_sweep.png)
    python benchmarks/train_bench.py --part comm     # --comm-dtype fp16 vs fp32

Every configuration is one `python -m parallel_lm.train` run under mpiexec;
tokens/s is the median over its steps after the first 3 (warm-up). Runs
alternate between configurations and repeat (--repeats), and the median
over repeats is reported, so a slow spell of the machine does not land on
one configuration only. Prints markdown tables for docs/benchmarks.md.
"""
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"ring, overlap": [], "ring, no overlap": ["--no-overlap"], "torch DDP (gloo)": ["--engine", "torch-ddp"]}


def run(mpiexec, ranks, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "parallel_lm.train", "--data", "synthetic",
               "--eval-every", "0", "--eval-batches", "1", "--quiet", "--out", tmp, *map(str, args)]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        recs = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()][3:]
    med = lambda k: statistics.median(r[k] for r in recs) if recs[0][k] is not None else None
    return {"tokens_per_s": med("tokens_per_s"), "exposed_comm_s": med("exposed_comm_s"), "step_s": med("step_s"),
            "comm_s": med("comm_s"), "final_loss": recs[-1]["loss"]}


def throughput(mpiexec, repeats):
    print("| preset | ranks | " + " | ".join(f"{c} tok/s" for c in CONFIGS) + " | ring+overlap / DDP | overlap on / off |")
    print("|---|---|" + "---|" * (len(CONFIGS) + 2))
    for preset, steps, batch in (("tiny", 30, 32), ("small", 15, 32)):
        for ranks in (2, 4):
            got = {c: [] for c in CONFIGS}
            for _ in range(repeats):
                for name, extra in CONFIGS.items():
                    got[name].append(run(mpiexec, ranks, ["--preset", preset, "--steps", steps,
                                                          "--global-batch-size", batch, *extra])["tokens_per_s"])
            tps = {c: statistics.median(v) for c, v in got.items()}
            cells = " | ".join(f"{tps[c]:,.0f}" for c in CONFIGS)
            print(f"| {preset} | {ranks} | {cells} | {tps['ring, overlap'] / tps['torch DDP (gloo)']:.2f}x "
                  f"| {tps['ring, overlap'] / tps['ring, no overlap']:.2f}x |", flush=True)


def comm_dtype(mpiexec, repeats):
    """--comm-dtype fp16 vs fp32: speed and the loss after 100 steps (small preset, 4 ranks)."""
    args = ["--preset", "small", "--steps", "100", "--global-batch-size", "32", "--data-max-mb", "1"]
    got = {d: [] for d in ("fp32", "fp16")}
    for _ in range(repeats):
        for d in got:
            got[d].append(run(mpiexec, 4, args + ["--comm-dtype", d]))
    print("\n| --comm-dtype | tokens/s | comm ms/step | final train loss |")
    print("|---|---|---|---|")
    for d, rs in got.items():
        print(f"| {d} | {statistics.median(r['tokens_per_s'] for r in rs):,.0f} | "
              f"{statistics.median(r['comm_s'] for r in rs) * 1e3:.1f} | {rs[0]['final_loss']:.4f} |", flush=True)


def sweep(mpiexec, repeats, out_png):
    sizes = [1, 5, 25, 100]
    rows = {mb: [] for mb in sizes}
    args = ["--preset", "medium", "--block-size", "64", "--steps", "8", "--global-batch-size", "8"]
    for _ in range(repeats):
        for mb in sizes:
            rows[mb].append(run(mpiexec, 4, args + ["--bucket-mb", mb]))
    print("\n| bucket MB | buckets | tokens/s | exposed comm ms/step |")
    print("|---|---|---|---|")
    n_bytes = 10.84e6 * 4  # medium preset's gradients in float32
    result = {}
    for mb in sizes:
        tps = statistics.median(r["tokens_per_s"] for r in rows[mb])
        exp = statistics.median(r["exposed_comm_s"] for r in rows[mb]) * 1e3
        result[mb] = (tps, exp)
        print(f"| {mb} | ~{max(1, round(n_bytes / (mb * 2**20)))} | {tps:,.0f} | {exp:.0f} |", flush=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, [result[m][0] for m in sizes], marker="o", label="tokens/s")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(m) for m in sizes])
    ax.set_xlabel("--bucket-mb")
    ax.set_ylabel("tokens/s")
    ax2 = ax.twinx()
    ax2.plot(sizes, [result[m][1] for m in sizes], marker="s", color="tab:red", label="exposed comm ms/step")
    ax2.set_ylabel("exposed comm (ms/step)")
    ax.set_title("medium preset (block 64), 4 ranks, ring all-reduce with overlap", fontsize=9)
    fig.legend(loc="lower right", fontsize=8)
    fig.savefig(out_png, dpi=120, bbox_inches="tight")
    fig.savefig(Path(out_png).with_suffix(".svg"), bbox_inches="tight")
    print(f"\nwrote {out_png}")


@click.command()
@click.option("--part", type=click.Choice(["all", "throughput", "comm", "sweep"]), default="all")
@click.option("--repeats", default=2, show_default=True)
@click.option("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"), show_default=True)
@click.option("--plot", default=str(ROOT / "plots" / "bucket_sweep.png"), show_default=True)
def main(part, repeats, mpiexec, plot):
    if part in ("all", "throughput"):
        throughput(mpiexec, repeats)
    if part in ("all", "comm"):
        comm_dtype(mpiexec, repeats)
    if part in ("all", "sweep"):
        sweep(mpiexec, repeats, plot)


if __name__ == "__main__":
    main()
