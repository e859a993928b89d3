"""Memory layouts side by side: ZeRO stages, recomputation, cutting the sequence, the interleaved pipeline.

    python benchmarks/memory_layouts.py                 # all four tables, about 7 minutes on 2 cores
    python benchmarks/memory_layouts.py --part zero     # one of them: zero | recompute | sequence | bubble

Every row is one ``mpiexec -n K python -m parallel_lm.train`` run on the
synthetic corpus; the settings of a table alternate and repeat
(``--repeats``), and each cell is the median over repeats of the median
over steps (the first step left out). Memory comes from the lines the run
prints after its first step: the model state per rank measured beside the
formula (every layout prints it), and the activations one micro-batch keeps
measured beside theirs.

- zero: plain data parallelism, ZeRO-1, -2 and -3 on 4 ranks: bytes per
  rank of parameters + gradients + optimizer state against (4+4+12)Ψ/N_d's
  pieces, the whole layers ZeRO-3 holds at once, and tokens/s;
- recompute: none, selective, full on one rank: activation MiB per
  micro-batch (and the formula), step time, and the ratios to none;
- sequence: tensor parallelism with and without --sequence-parallel, and
  --cp 2 and 4, on 4 ranks: activation MiB per micro-batch per rank
  against Korthikanti's formula (with T/cp tokens for --cp), and tokens/s;
- bubble: pp 2 and 4, v 1 and 2, m 8: the measured idle fraction against
  (p-1)/(v m+p-1), for a model whose chunks compute for well under a
  millisecond (tiny) and one whose chunks compute for tens (--bubble-preset).
"""
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]


def run(mpiexec, k, args) -> tuple[str, list[dict]]:
    """(stdout, metrics.jsonl rows) of one training run on k ranks."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [mpiexec, "-n", str(k), sys.executable, "-m", "parallel_lm.train", "--data", "synthetic",
               "--eval-every", "0", "--quiet", "--out", out, *args]
        stdout = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return stdout, rows


def median_of(rows, key) -> float:
    return statistics.median(r[key] for r in rows[1:])


def repeated(mpiexec, settings: dict, repeats: int) -> dict:
    """{name: [(stdout, rows) per repeat]}, the settings alternating."""
    results = {name: [] for name in settings}
    for _ in range(repeats):
        for name, (k, args) in settings.items():
            results[name].append(run(mpiexec, k, args))
    return results


def zero_table(mpiexec, repeats):
    common = ["--preset", "small", "--steps", "8", "--global-batch-size", "16"]
    settings = {f"ZeRO-{z}" if z else "data parallel": (4, common + ["--zero", str(z)]) for z in (0, 1, 2, 3)}
    results = repeated(mpiexec, settings, repeats)
    print("| layout (4 ranks, small) | params + grads + optimizer per rank, MiB | formula | whole layers at once "
          "| tokens/s | vs data parallel |")
    print("|---|---|---|---|---|---|")
    base = None
    for name, runs in results.items():
        stdout = runs[0][0]
        tokens = statistics.median(median_of(rows, "tokens_per_s") for _, rows in runs)
        base = base or tokens
        m = re.search(r"memory per rank: params ([\d.]+) MiB \(formula ([\d.]+)\), grads ([\d.]+) MiB "
                      r"\(formula ([\d.]+)\), optimizer ([\d.]+) MiB \(formula ([\d.]+)\)", stdout)
        v = [float(x) for x in m.groups()]
        have, want = v[0] + v[2] + v[4], v[1] + v[3] + v[5]
        live = re.search(r"whole layers at once.*? ([\d.]+) MiB", stdout)
        live = f"{float(live.group(1)):.2f}" if live else "all"
        print(f"| {name} | {have:.2f} | {want:.2f} | {live} | {tokens:,.0f} | {tokens / base:.2f} |", flush=True)


def recompute_table(mpiexec, repeats):
    common = ["--preset", "small", "--steps", "6", "--global-batch-size", "8"]
    settings = {mode: (1, common + ["--recompute", mode]) for mode in ("none", "selective", "full")}
    results = repeated(mpiexec, settings, repeats)
    print("| --recompute (1 rank, small, 8 x 128 tokens) | activations MiB | formula | step ms | memory vs none "
          "| time vs none |")
    print("|---|---|---|---|---|---|")
    ref = None
    for mode, runs in results.items():
        stdout = runs[0][0]
        have, want = map(float, re.search(r"measured ([\d.]+) MiB per micro-batch, formula ([\d.]+) MiB",
                                          stdout).groups())
        step = statistics.median(median_of(rows, "step_s") for _, rows in runs)
        ref = ref or (have, step)
        print(f"| {mode} | {have:.2f} | {want:.2f} | {1e3 * step:.1f} | {have / ref[0]:.2f} | {step / ref[1]:.2f} |",
              flush=True)


def sequence_table(mpiexec, repeats):
    common = ["--preset", "small", "--steps", "6", "--global-batch-size", "8"]
    settings = {"data parallel": (4, common), "--tp 4": (4, common + ["--tp", "4"]),
                "--tp 4 --sequence-parallel": (4, common + ["--tp", "4", "--sequence-parallel"]),
                "--cp 2 (dp 2)": (4, common + ["--cp", "2"]), "--cp 4": (4, common + ["--cp", "4"])}
    results = repeated(mpiexec, settings, repeats)
    print("| layout (4 ranks, small, 8 x 128 tokens) | sequences per rank | activations MiB per rank | formula "
          "| vs formula | tokens/s |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        stdout = runs[0][0]
        have, want = map(float, re.search(r"measured ([\d.]+) MiB per micro-batch, formula ([\d.]+) MiB",
                                          stdout).groups())
        share = re.search(r"global batch 8 = \d+ data-parallel rank\(s\) x \d+ micro-batch\(es\) x (\d+) sequences",
                          stdout).group(1)
        tokens = statistics.median(median_of(rows, "tokens_per_s") for _, rows in runs)
        print(f"| {name} | {share} | {have:.2f} | {want:.2f} | {100 * (have / want - 1):+.1f}% | {tokens:,.0f} |",
              flush=True)


def bubble_table(mpiexec, repeats, preset):
    print("| model | p | v | measured bubble | formula (p-1)/(v m+p-1) | step ms |")
    print("|---|---|---|---|---|---|")
    for name, model in (("tiny", ["--preset", "tiny", "--n-layer", "8"]),
                        (preset, ["--preset", preset, "--n-layer", "8"])):
        for p in (2, 4):
            settings = {v: (p, model + ["--pp", str(p), "--virtual-stages", str(v), "--micro-batches", "8",
                                        "--global-batch-size", "16", "--steps", "5"]) for v in (1, 2)}
            results = repeated(mpiexec, settings, repeats)
            for v, runs in results.items():
                bubble = statistics.median(median_of(rows, "bubble") for _, rows in runs)
                formula = runs[0][1][0]["bubble_formula"]
                step = statistics.median(median_of(rows, "step_s") for _, rows in runs)
                print(f"| {name} | {p} | {v} | {bubble:.3f} | {formula:.3f} | {1e3 * step:.0f} |", flush=True)


@click.command()
@click.option("--part", type=click.Choice(["all", "zero", "recompute", "sequence", "bubble"]), default="all",
              show_default=True)
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--bubble-preset", default="small", show_default=True, help="The heavier model of the bubble table.")
@click.option("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"), show_default=True)
def main(part, repeats, bubble_preset, mpiexec):
    if part in ("all", "zero"):
        zero_table(mpiexec, repeats)
    if part in ("all", "recompute"):
        print()
        recompute_table(mpiexec, repeats)
    if part in ("all", "sequence"):
        print()
        sequence_table(mpiexec, repeats)
    if part in ("all", "bubble"):
        print()
        bubble_table(mpiexec, repeats, bubble_preset)


if __name__ == "__main__":
    main()
