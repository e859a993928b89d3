"""Step-time prediction error on this machine: real training runs beside ``train --predict``.

    python benchmarks/step_time_accuracy.py          # about 10 minutes on a 2-core machine

For each rank count P (default 2, 4, 8), back to back:
  mpiexec -n P python -m parallel_lm.calibrate -e 16M --out DIR/profile-pP.json
then, for each layout of P ranks below,
  mpiexec -n P python -m parallel_lm.train --preset small --data synthetic --steps 12 LAYOUT \\
      --predict DIR/profile-pP.json --out RUN
and reads RUN/prediction.json: the median measured step (after 2 warm-up
steps) against the predicted one. Prints one markdown row per run and
the median |error| per P and over all runs; writes DIR/step-time.json.
"""
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {
    2: {"dp 2": [], "tp 2": ["--tp", "2"], "pp 2 (m 2)": ["--pp", "2", "--micro-batches", "2"],
        "dp 2, ZeRO-1": ["--zero", "1"]},
    4: {"dp 4": [], "dp 2 x tp 2": ["--tp", "2"], "dp 2 x pp 2 (m 2)": ["--pp", "2", "--micro-batches", "2"],
        "dp 4, ZeRO-2": ["--zero", "2"]},
    8: {"dp 8": [], "dp 4 x tp 2": ["--tp", "2"], "dp 2 x pp 4 (m 4)": ["--pp", "4", "--micro-batches", "4"],
        "dp 2 x tp 2 x pp 2, ZeRO-1": ["--tp", "2", "--pp", "2", "--zero", "1", "--micro-batches", "2"]},
}


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def pair(pred: dict, meas: dict, key: str) -> str:
    """'predicted / measured' in ms, or '-' where the layout has no such term."""
    if not pred[key] and not meas.get(key):
        return "-"
    shown = f"{meas[key] * 1e3:.2f}" if meas.get(key) is not None else "n/a"
    return f"{pred[key] * 1e3:.2f} / {shown}"


def row(r: dict) -> str:
    pred, meas = r["predicted"], r["measured"]
    return (f"| {r['ranks']} | {r['name']} | {pred['step_s'] * 1e3:.1f} | {meas['step_s'] * 1e3:.1f} | "
            f"{100 * r['error']:+.0f}% | {pair(pred, meas, 'comm_s')} | {pair(pred, meas, 'tp_comm_s')} |")


@click.command()
@click.option("--ranks", default="2,4,8", show_default=True)
@click.option("--preset", default="small", show_default=True)
@click.option("--steps", default=12, show_default=True, type=click.IntRange(min=4))
@click.option("--out", default="docs/data/step-time", show_default=True, type=click.Path(file_okay=False))
@click.option("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"), show_default=True)
def main(ranks, preset, steps, out, mpiexec):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = [int(r) for r in ranks.split(",")]
    unknown = [p for p in counts if p not in LAYOUTS]
    if unknown:
        raise click.BadParameter(f"no layouts for {unknown}; choose from {sorted(LAYOUTS)}", param_hint="--ranks")
    rows = []
    print(f"| ranks | layout ({preset}, batch 32) | predicted step ms | measured step ms | error | "
          "gradient sync ms, predicted / measured | tensor-parallel all-reduces ms, predicted / measured |")
    print("|---|---|---|---|---|---|---|")
    for p in counts:
        mpi = [mpiexec, "-n", str(p), sys.executable, "-m"]
        profile = out / f"profile-p{p}.json"
        run([*mpi, "parallel_lm.calibrate", "-e", "16M", "-n", "10", "--out", str(profile)])
        for name, extra in LAYOUTS[p].items():
            with tempfile.TemporaryDirectory() as tmp:
                run([*mpi, "parallel_lm.train", "--preset", preset, "--data", "synthetic", "--steps", str(steps),
                     "--global-batch-size", "32", "--eval-every", "0", "--eval-batches", "1", "--quiet",
                     "--predict", str(profile), "--out", tmp, *extra])
                doc = json.loads((Path(tmp) / "prediction.json").read_text())
            pred, meas = doc["predicted"], doc["measured"]
            rows.append({"ranks": p, "name": name, "error": pred["step_s"] / meas["step_s"] - 1, **doc})
            print(row(rows[-1]), flush=True)
    print()
    for p in counts + [None]:
        errs = [abs(r["error"]) * 100 for r in rows if p is None or r["ranks"] == p]
        print(f"median |error| {'over all runs' if p is None else f'at {p} ranks'}: {statistics.median(errs):.1f}% "
              f"(max {max(errs):.1f}%, {len(errs)} runs)")
    (out / "step-time.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
