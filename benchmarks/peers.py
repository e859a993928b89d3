"""Ours beside the peers, side by side: the same GPT, data, batch and optimizer; tokens/s, memory, loss.

    python benchmarks/peers.py                         # 2 and 4 ranks, 3 trials each, alternating peers
    python benchmarks/peers.py --ranks 2 --trials 1 --steps 8 --preset tiny    # a quick look

Each run is one launch of benchmarks/peer_run.py (mpiexec -n K): ours with data parallelism and ZeRO-1/2/3,
torch DDP, torch FSDP2 (fully_shard), DeepSpeed ZeRO-1/2/3 when it imports, and Horovod when it imports
(``make horovod`` builds it from source). Peers alternate within a trial,
so a slow minute of the machine falls on all of them. Reported per peer and rank count: the median over
trials of tokens/s (each run's median step after the first 3) and its ratio to ours-dp, the peak RSS per rank
above what the process held before the model existed, and the largest |loss - ours-dp's loss| over the steps
(same seeds: like for like means within fp32 noise).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("ours-dp", "ours-zero1", "ours-zero2", "ours-zero3")
TORCH = ("ddp", "fsdp2")
DEEPSPEED = ("deepspeed-zero1", "deepspeed-zero2", "deepspeed-zero3")


def peers() -> tuple[str, ...]:
    """Ours and torch's always; DeepSpeed and Horovod where they are installed (``make horovod`` builds it)."""
    return (OURS + TORCH + (DEEPSPEED if importlib.util.find_spec("deepspeed") else ())
            + (("horovod",) if importlib.util.find_spec("horovod") else ()))


def launch(peer: str, ranks: int, steps: int, preset: str, batch: int, extra: tuple[str, ...] = ()) -> dict:
    mpiexec = os.environ.get("PARALLEL_LM_MPIEXEC", str(Path(sys.executable).parent / "mpiexec"))
    cmd = [mpiexec, "-n", str(ranks), sys.executable, str(ROOT / "benchmarks" / "peer_run.py"), peer,
           "--steps", str(steps), "--preset", preset, "--batch", str(batch), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:  # a run that printed its result and then failed at exit (DeepSpeed's, now and then) counts
        raise RuntimeError(f"{peer} on {ranks} ranks failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return {**json.loads(line[len("RESULT "):]), "exit": proc.returncode}


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for ranks in sorted({r["ranks"] for r in runs}):
        base = [r for r in runs if r["ranks"] == ranks and r["peer"] == "ours-dp"]
        base_tps = statistics.median(r["tokens_per_s"] for r in base)
        base_loss = base[0]["losses"]
        for peer in dict.fromkeys(r["peer"] for r in runs):
            mine = [r for r in runs if r["ranks"] == ranks and r["peer"] == peer]
            tps = statistics.median(r["tokens_per_s"] for r in mine)
            rows.append({"ranks": ranks, "peer": peer, "tokens_per_s": tps, "vs_ours_dp": tps / base_tps,
                         "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in mine),
                         "final_loss": mine[0]["losses"][-1],
                         "max_loss_diff": max(abs(a - b) for a, b in zip(mine[0]["losses"], base_loss))})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="2,4")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--peers", default=None, help="comma-separated subset (ours-dp is always run: the baseline)")
    ap.add_argument("--json", help="write every run and the summary here")
    ap.add_argument("--deepspeed-no-shm", action="store_true",
                    help="DeepSpeed on gloo, without its shared-memory op (g++ compiles it on first use, about 40 s)")
    args = ap.parse_args()
    names = peers() if args.peers is None else tuple(dict.fromkeys(("ours-dp", *args.peers.split(","))))
    runs = []
    print(f"# peers: {', '.join(names)}; {args.preset}, global batch {args.batch}, {args.steps} steps, "
          f"{args.trials} trial(s)", flush=True)
    for ranks in (int(r) for r in args.ranks.split(",")):
        for trial in range(args.trials):
            for peer in names:
                extra = ("--deepspeed-no-shm",) if args.deepspeed_no_shm and peer in DEEPSPEED else ()
                runs.append(launch(peer, ranks, args.steps, args.preset, args.batch, extra))
                print(f"# ranks {ranks} trial {trial + 1}: {peer} {runs[-1]['tokens_per_s']:.0f} tokens/s", flush=True)
    rows = summarize(runs)
    print(f"{'ranks':>5} {'peer':>16} {'tokens/s':>10} {'vs ours-dp':>10} {'peak MiB/rank':>13} {'final loss':>10} "
          f"{'max |loss diff|':>15}")
    for r in rows:
        print(f"{r['ranks']:>5} {r['peer']:>16} {r['tokens_per_s']:>10.0f} {r['vs_ours_dp']:>10.2f} "
              f"{r['peak_rss_mib']:>13.1f} {r['final_loss']:>10.4f} {r['max_loss_diff']:>15.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "summary": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
