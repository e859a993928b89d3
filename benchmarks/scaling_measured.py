"""Measured training throughput at 1, 2, 4 and 8 ranks, for the scaling plot's overlay.

    python benchmarks/scaling_measured.py            # about 3 minutes on a 2-core machine
    python -m parallel_lm.plot scaling --preset small --profile docs/data/accuracy/profile-p2.json \\
        --device measure --max-ranks 8 --global-batch-size 32 --batch-per-rank 8 \\
        --measured docs/data/scaling-measured.json

Strong scaling: 32 sequences per step whatever the rank count; weak: 8
sequences per rank. Each point is the median tokens/s over a run's steps
after the first 3 (benchmarks/train_bench.py's ``run``), ring all-reduce
with overlap, the small preset.
"""
import json
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench import run  # noqa: E402


@click.command()
@click.option("--ranks", default="1,2,4,8", show_default=True)
@click.option("--out", default="docs/data/scaling-measured.json", show_default=True)
@click.option("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"), show_default=True)
def main(ranks, out, mpiexec):
    points = []
    for k in (int(r) for r in ranks.split(",")):
        for mode, batch in (("strong", 32), ("weak", 8 * k)):
            got = run(mpiexec, k, ["--preset", "small", "--steps", 20, "--global-batch-size", batch])
            points.append({"ranks": k, "scaling": mode, "tokens_per_s": got["tokens_per_s"], "label": f"{k}",
                           "global_batch_size": batch})
            print(f"{mode:>6} {k} ranks, batch {batch}: {got['tokens_per_s']:,.0f} tokens/s", flush=True)
    Path(out).write_text(json.dumps({"points": points}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
