"""python -m parallel_lm.plot: predicted vs measured communication, scaling curves, training runs.

    python -m parallel_lm.plot comm --bench runs/bench-p4.json --profile runs/profile-p4.json
    python -m parallel_lm.plot scaling --preset gpt2 --profile dgx-h100-ndr --max-ranks 1024
    python -m parallel_lm.plot run runs/dp8 runs/tp2 [...]

``comm``: time vs message size per algorithm, measured (markers) and
predicted from the profile (lines), log-log, with a relative-error panel;
one figure per rank count, and the error table printed and saved.
Several --profile files are matched to bench files by their rank count
(``calibrate`` records it); bench runs made with --netem are predicted
with the emulated network and the profile's overhead and gamma.

``scaling``: tokens/s and efficiency vs ranks (1 to --max-ranks), strong
(fixed global batch) and weak (fixed batch per rank) scaling, for every
all-reduce algorithm and a synchronous parameter server, from the
predictor; --measured overlays measured points.
``run``: loss, throughput, exposed communication and memory of one or
several training runs side by side, from each --out folder's metrics.jsonl.
PNG and SVG go to --out (default plots/).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import click
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from . import environment
from .figures import run_figure, write
from .sizes import format_size
from .costmodel.compare import compare, error_table, format_table
from .costmodel.formulas import COSTS, Network
from .costmodel.predict import DEFAULT_MFU, predict_step
from .costmodel.profiles import PROFILE_NAMES, load_profile
from .services.metrics import write_atomic
from .runtime import size_option

SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}


@click.group(context_settings=SETTINGS)
def main():
    """Plots of the cost model against measurements, and scaling curves."""


def _profiles_by_ranks(specs):
    try:
        profiles = [load_profile(s) for s in specs]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--profile") from None
    by_ranks = {p.raw.get("ranks"): p for p in profiles}

    def pick(ranks: int):
        if len(profiles) == 1:
            return profiles[0]
        if ranks not in by_ranks:
            raise click.UsageError(f"no --profile calibrated with {ranks} ranks (have: "
                                   f"{', '.join(str(k) for k in by_ranks)}); calibrate with mpiexec -n {ranks}")
        return by_ranks[ranks]
    return pick


@main.command(context_settings=SETTINGS)
@click.option("--bench", "bench_files", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="Bench JSON (python -m parallel_lm.bench --json); repeat for several rank counts.")
@click.option("--profile", "profiles", multiple=True, required=True,
              help="Profile(s) to predict with; several are matched to bench files by rank count.")
@click.option("--min-bytes", default="64K", callback=size_option, help="Smallest size counted in the error table.")
@click.option("--out", default="plots", type=click.Path(file_okay=False), help="Folder for figures and the table.")
@click.option("--name", default="comm", help="File name prefix.")
def comm(bench_files, profiles, min_bytes, out, name):
    """Predicted vs measured collective time per algorithm, and the error table."""
    pick = _profiles_by_ranks(profiles)
    points = []
    for path in bench_files:
        data = _bench(path)
        netem = data.get("meta", {}).get("netem")

        def profile_for(ranks, netem=netem):
            base = pick(ranks)
            return base.emulated(Network(netem["alpha_s"], netem["beta_s_per_byte"])) if netem else base
        points += compare(data["records"], profile_for)
    if not points:
        raise click.UsageError("the bench files hold no algorithm with a formula (only 'mpi'?): bench with -a all")
    written = []
    for ranks in sorted({p.ranks for p in points}):
        mine = [p for p in points if p.ranks == ranks]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True, height_ratios=[3, 1.3])
        for i, algorithm in enumerate(dict.fromkeys(p.algorithm for p in mine)):
            rows = sorted((p for p in mine if p.algorithm == algorithm), key=lambda p: p.size_bytes)
            x = [p.size_bytes for p in rows]
            color = f"C{i}"
            top.plot(x, [p.measured_s * 1e6 for p in rows], "o", color=color, label=f"{algorithm} measured")
            top.plot(x, [p.predicted_s * 1e6 for p in rows], "-", color=color, alpha=0.8, label=f"{algorithm} predicted")
            bottom.plot(x, [100 * p.rel_error for p in rows], "o-", color=color, ms=3)
        top.set(xscale="log", yscale="log", ylabel="time (us)")
        top.set_title(f"all-reduce on {ranks} ranks: measured vs alpha-beta-gamma prediction", fontsize=10)
        top.grid(True, which="both", alpha=0.3)
        top.legend(fontsize=7, ncol=2)
        bottom.axhspan(-20, 20, color="green", alpha=0.08)
        bottom.axhline(0, color="black", lw=0.8)
        bottom.set(xscale="log", xlabel="buffer size (bytes)", ylabel="error (%)")
        sizes = sorted({p.size_bytes for p in mine})
        bottom.set_xticks(sizes, [format_size(s) for s in sizes], fontsize=7)
        bottom.minorticks_off()
        bottom.grid(True, alpha=0.3)
        written += write(fig, Path(out), f"{name}_p{ranks}")
    rows = error_table(points, min_bytes)
    table = format_table(rows, min_bytes)
    click.echo(table)
    write_atomic(Path(out) / f"{name}_errors.txt", lambda tmp: tmp.write_text(table + "\n"))
    write_atomic(Path(out) / f"{name}_errors.json", lambda tmp: tmp.write_text(json.dumps(rows, indent=1) + "\n"))
    for path in written:
        click.echo(f"# wrote {path}")


def _bench(path) -> dict:
    """A bench JSON file, or a usage error naming it."""
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            raise ValueError("no list of records")
        return data
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise click.BadParameter(f"{path} is not a bench file ({e}): write one with python -m parallel_lm.bench "
                                 "--json FILE", param_hint="--bench") from None


def _measured(path):
    if not path:
        return []
    try:
        return json.loads(Path(path).read_text())["points"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise click.BadParameter(f"{path}: expected JSON {{\"points\": [{{ranks, tokens_per_s, label, scaling}}]}} ({e})",
                                 param_hint="--measured") from None


@main.command(context_settings=SETTINGS)
@click.option("--preset", type=click.Choice(["tiny", "small", "medium", "gpt2"]), default="gpt2",
              help="Model whose training step is predicted.")
@click.option("--profile", default="dgx-h100-ndr", help=f"{', '.join(PROFILE_NAMES)}, a JSON file, or alpha=..,beta=..")
@click.option("--device", default="h100-sxm", help="a100-40gb, a100-80gb, h100-sxm (bf16 peak), 'measure' (this CPU) or FLOP/s.")
@click.option("--mfu", type=float, default=DEFAULT_MFU, help="Fraction of device peak (ignored with --device measure).")
@click.option("--max-ranks", type=click.IntRange(min=2), default=1024, help="Largest rank count (powers of two up to it).")
@click.option("--global-batch-size", type=click.IntRange(min=1), default=1024, help="Strong scaling: sequences per step.")
@click.option("--batch-per-rank", type=click.IntRange(min=1), default=8, help="Weak scaling: sequences per rank per step.")
@click.option("--bucket-mb", type=float, default=25.0, help="Gradient bucket size (MiB).")
@click.option("--measured", type=click.Path(exists=True, dir_okay=False), default=None,
              help='JSON {"points": [{"ranks", "tokens_per_s", "label", "scaling": "strong"|"weak"}]} to overlay.')
@click.option("--devices", type=click.IntRange(min=1), default=None,
              help="Devices the ranks share (default: one per rank); 1 with --device measure on one machine.")
@click.option("--out", default="plots", type=click.Path(file_okay=False), help="Folder for the figures.")
def scaling(preset, profile, device, mfu, max_ranks, global_batch_size, batch_per_rank, bucket_mb, measured,
            devices, out):
    """Throughput and efficiency vs ranks, strong and weak scaling, per all-reduce algorithm and parameter server."""
    from .predict import device_flops, model_numbers
    from .sim import collective_time_s
    try:
        prof = load_profile(profile)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--profile") from None
    n_params, flops_per_token, block = model_numbers(preset)
    flops, device_mfu, _ = device_flops(device, preset)
    mfu = device_mfu or mfu
    ranks = [1 << k for k in range(max_ranks.bit_length()) if 1 << k <= max_ranks]
    points = _measured(measured)

    @functools.cache
    def cost(algorithm, n, p):
        return collective_time_s("allreduce", algorithm, n, p, prof)

    strategies = [(name, "data_parallel") for name in COSTS["allreduce"]] + [("parameter server", "parameter_server")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    table = []
    for col, mode in enumerate(("strong", "weak")):
        for i, (label, strategy) in enumerate(strategies):
            xs, tput, eff = [], [], []
            for p in ranks:
                servers = max(1, p // 8)
                if strategy == "parameter_server" and p <= servers:
                    continue
                batch = global_batch_size if mode == "strong" else batch_per_rank * p
                pred = predict_step(n_params=n_params, flops_per_token=flops_per_token, tokens_per_step=batch * block,
                                    ranks=p, flops_per_s=flops, mfu=mfu, strategy=strategy,
                                    allreduce_s=lambda n, a=label, p=p: cost(a, n, p),
                                    bucket_bytes=bucket_mb * 2**20, servers=servers, ps_network=prof.slowest(),
                                    devices=devices)
                base = predict_step(n_params=n_params, flops_per_token=flops_per_token,
                                    tokens_per_step=batch * block if mode == "strong" else batch_per_rank * block,
                                    ranks=1, flops_per_s=flops, mfu=mfu, allreduce_s=None)
                xs.append(p)
                tput.append(pred.tokens_per_s)
                eff.append(pred.tokens_per_s / (p * base.tokens_per_s))
                table.append({"scaling": mode, "strategy": label, "ranks": p, "tokens_per_s": pred.tokens_per_s,
                              "efficiency": eff[-1], "step_s": pred.step_s, "exposed_comm_s": pred.exposed_comm_s})
            style = "--" if strategy == "parameter_server" else "-"
            name = f"{label} (P/8 servers)" if strategy == "parameter_server" else label
            axes[0, col].plot(xs, tput, style, marker=".", color=f"C{i}", label=name)
            axes[1, col].plot(xs, eff, style, marker=".", color=f"C{i}", label=name)
        mine = sorted((q["ranks"], q["tokens_per_s"]) for q in points if q.get("scaling", "strong") == mode)
        if mine:
            axes[0, col].plot(*zip(*mine), "k*", ms=10, label="measured")
        what = (f"strong: {global_batch_size} sequences per step" if mode == "strong"
                else f"weak: {batch_per_rank} sequences per rank")
        axes[0, col].set(xscale="log", yscale="log", ylabel="tokens/s", title=what)
        axes[1, col].set(xscale="log", ylim=(0, 1.05), xlabel="ranks", ylabel="efficiency")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    if points:
        axes[0, 1].legend(fontsize=7)
    shared = f", {devices} device(s) shared by all ranks" if devices else ", one device per rank"
    fig.suptitle(f"{preset} ({n_params / 1e6:.1f}M parameters) on {prof.name}; device {device}: "
                 f"{flops / 1e12:.3g} TFLOP/s x MFU {mfu:.2f}{shared}", fontsize=9)
    stem = f"scaling_{preset}_{Path(prof.name).stem if '=' not in prof.name else 'custom'}"
    paths = write(fig, Path(out), stem)
    write_atomic(Path(out) / f"{stem}.json", lambda tmp: tmp.write_text(json.dumps({"rows": table}, indent=1) + "\n"))
    best = {}
    for row in table:
        key = (row["scaling"], row["ranks"])
        if key not in best or row["tokens_per_s"] > best[key]["tokens_per_s"]:
            best[key] = row
    click.echo(f"# best strategy per rank count ({preset} on {prof.name})")
    click.echo(f"{'scaling':>7} {'ranks':>6} {'best':>20} {'tokens/s':>12} {'efficiency':>10}")
    for (mode, p), row in sorted(best.items()):
        click.echo(f"{mode:>7} {p:>6} {row['strategy']:>20} {row['tokens_per_s']:>12.0f} {row['efficiency']:>10.3f}")
    for path in paths:
        click.echo(f"# wrote {path}")




def _run_records(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        raise click.BadParameter(f"{folder} has no metrics.jsonl: pass the --out folder of a training run",
                                 param_hint="RUN_DIR")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise click.BadParameter(f"{path} is empty: the run wrote no step yet", param_hint="RUN_DIR")
    return records


@main.command(context_settings=SETTINGS)
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
                metavar="RUN_DIR [RUN_DIR...]")
@click.option("--out", default="plots", type=click.Path(file_okay=False), help="Folder for the figure.")
@click.option("--name", default="runs", help="File name prefix.")
def run(runs, out, name):
    """Loss, throughput, communication and memory of one or more training runs, side by side.

    Each RUN_DIR is a train --out folder (its metrics.jsonl); one colour per run in every panel. Dashed:
    validation loss, the memory formula. Communication: the shaded band is all of it, the line the part
    backward did not hide (exposed).
    """
    for path in write(run_figure([(folder.name, _run_records(folder)) for folder in runs]), Path(out), name):
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    environment.apply_or_exit()
    main()
