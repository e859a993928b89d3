"""Loss vs step and vs wall time: ring all-reduce vs parameter server (sync, staleness 1 and 4, async),
with and without a straggler, at 8 ranks on the tiny preset.

    python benchmarks/ps_experiment.py              # about 4 minutes; writes plots/ps_loss.png/.svg and prints a table

The same global batch (56 sequences) everywhere: data parallel splits it over
8 ranks, the parameter server over 7 workers (rank 0 serves). With a
straggler, worker rank 3 computes 4x slower. Each configuration is one
`python -m parallel_lm.train` run; its metrics.jsonl gives loss per step and
the step times (cumulated into wall time).
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "ring all-reduce": [],
    "PS sync": ["--sync", "ps"],
    "PS staleness 1": ["--sync", "ps", "--staleness", "1"],
    "PS staleness 4": ["--sync", "ps", "--staleness", "4"],
    "PS async": ["--sync", "ps", "--staleness", "inf"],
}


def run(mpiexec, args):
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [mpiexec, "-n", "8", sys.executable, "-m", "parallel_lm.train", "--preset", "tiny",
               "--global-batch-size", "56", "--eval-every", "0", "--quiet", "--out", tmp, *args]
        out = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    val = next(float(line.split()[2]) for line in out.splitlines() if line.startswith("validation loss"))
    return rows, val


@click.command()
@click.option("--steps", default=150, show_default=True)
@click.option("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"), show_default=True)
@click.option("--plot", default=str(ROOT / "plots" / "ps_loss.png"), show_default=True)
def main(steps, mpiexec, plot):
    results = {}
    for straggler in (False, True):
        for name, args in CONFIGS.items():
            extra = ["--steps", str(steps)] + (["--straggler", "3:4"] if straggler else [])
            results[(name, straggler)] = run(mpiexec, args + extra)
            rows, val = results[(name, straggler)]
            wall = sum(r["step_s"] for r in rows)
            print(f"| {name} | {'rank 3 x4' if straggler else 'none'} | {val:.4f} | {rows[-1]['loss']:.4f} | {wall:.1f} | "
                  f"{steps * 56 * 64 / wall:,.0f} |", flush=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharey=True)
    for col, straggler in enumerate((False, True)):
        for name in CONFIGS:
            rows, _ = results[(name, straggler)]
            loss = [r["loss"] for r in rows]
            wall, t = [], 0.0
            for r in rows:
                t += r["step_s"]
                wall.append(t)
            style = "--" if name == "ring all-reduce" else "-"
            axes[0][col].plot(range(1, len(loss) + 1), loss, style, label=name)
            axes[1][col].plot(wall, loss, style, label=name)
        title = "straggler: rank 3 computes 4x slower" if straggler else "no straggler"
        axes[0][col].set_title(title, fontsize=10)
        axes[0][col].set_xlabel("step")
        axes[1][col].set_xlabel("wall time (s)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.set_ylabel("training loss (nats/byte)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("tiny GPT, 8 ranks, global batch 56: data parallel vs parameter server", fontsize=11)
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    fig.savefig(Path(plot).with_suffix(".svg"))
    print(f"wrote {plot}")


if __name__ == "__main__":
    main()
