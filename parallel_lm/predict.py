"""python -m parallel_lm.predict: step time, throughput and memory of a training layout, before running it.

    python -m parallel_lm.predict --preset gpt2 --ranks 8,64,512 --profile dgx-h100-ndr
    python -m parallel_lm.predict --preset small --ranks 1,2 --profile runs/profile-p2.json --device measure

For each rank count: compute (FLOPs / device throughput x MFU), the
gradient all-reduce in buckets (closed-form formula on one-level profiles,
the simulator on two-level ones), what of it is exposed after overlapping
with backward, tokens/s, scaling efficiency, and memory per rank
(``costmodel/predict.py`` has the model and its sources).
"""
from __future__ import annotations

import functools
import json
import time

import click

from .costmodel.formulas import COSTS
from .costmodel.predict import DEFAULT_MFU, DEVICES, predict_layout, predict_step
from .costmodel.profiles import PROFILE_NAMES, load_profile
from .metrics import write_atomic
from .runtime import comma_list, rank_count
from .sim import KINDS, collective_time_s
from .sim.network import topology_from_profile

STRATEGIES = ("data_parallel", "parameter_server")


def model_numbers(preset: str) -> tuple[int, float, int]:
    """(parameters, training FLOPs per token, context length) of a preset, built on torch's meta device."""
    import torch

    from .model.gpt import GPT, PRESETS
    with torch.device("meta"):
        model = GPT(PRESETS[preset])
    return model.num_params(), model.flops_per_token(), PRESETS[preset].block_size


def measured_flops_per_s(preset: str, batch: int = 32, steps: int = 5) -> float:
    """FLOP/s this machine's CPU reaches training the preset (forward + backward + AdamW), one process."""
    import torch

    from .model.gpt import GPT, PRESETS
    cfg = PRESETS[preset]
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return model.flops_per_token() * batch * cfg.block_size / sorted(times[1:])[len(times[1:]) // 2]


def device_flops(device: str, preset: str) -> tuple[float, float | None, str]:
    """(FLOP/s, MFU to apply or None for the flag's, description)."""
    if device in DEVICES:
        flops, source = DEVICES[device]
        return flops, None, source
    if device == "measure":
        flops = measured_flops_per_s(preset)
        return flops, 1.0, f"measured here: {flops / 1e9:.2f} GFLOP/s achieved training {preset} on one CPU process"
    try:
        return float(device), None, f"given: {float(device):.3g} FLOP/s"
    except ValueError:
        raise click.BadParameter(f"{device!r}: use one of {', '.join(DEVICES)}, 'measure', or a number of FLOP/s",
                                 param_hint="--device") from None


def layout_table(preset, prof, rank_counts, tp, pp, m, zero, global_batch, algorithm, n_params, flops_per_token,
                 flops, mfu, devices, device_text) -> list[dict]:
    """Print and return predict_layout's terms for each rank count (dp = ranks / (tp pp))."""
    from .model.gpt import PRESETS
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


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--preset", type=click.Choice(["tiny", "small", "medium", "gpt2"]), default="gpt2")
@click.option("--ranks", "-r", default="1,8,64,512", help="Rank counts, comma-separated.")
@click.option("--profile", "-p", default="dgx-h100-ndr",
              help=f"Network profile: {', '.join(PROFILE_NAMES)}, a JSON file, or alpha=S,beta=S_PER_B[,gamma=..].")
@click.option("--topology", "-t", type=click.Choice(KINDS), default=None, help="Default: the profile's (hierarchical if two-level).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="data_parallel")
@click.option("--algorithm", "-a", type=click.Choice(list(COSTS["allreduce"])), default="ring", help="Data-parallel all-reduce.")
@click.option("--servers", type=click.IntRange(min=1), default=1, help="Parameter-server shards (--strategy parameter_server).")
@click.option("--global-batch-size", type=click.IntRange(min=1), default=512, help="Sequences per optimizer step.")
@click.option("--device", default="h100", help=f"Compute throughput: {', '.join(DEVICES)}, 'measure' (this CPU), or FLOP/s.")
@click.option("--mfu", type=click.FloatRange(min=0, max=1, min_open=True), default=DEFAULT_MFU,
              help="Fraction of the device peak reached (ignored with --device measure).")
@click.option("--bucket-mb", type=click.FloatRange(min=0, min_open=True), default=25.0, help="Gradient bucket size (MiB).")
@click.option("--overlap/--no-overlap", default=True, help="Overlap bucket all-reduces with backward.")
@click.option("--comm-dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", help="Gradient dtype on the wire.")
@click.option("--devices", type=click.IntRange(min=1), default=None,
              help="Devices the ranks share (default: one per rank); e.g. 1 with --device measure on one machine.")
@click.option("--tp", type=click.IntRange(min=1), default=1, help="Tensor-parallel degree (model split inside layers).")
@click.option("--pp", type=click.IntRange(min=1), default=1, help="Pipeline stages.")
@click.option("--micro-batches", type=click.IntRange(min=1), default=1, help="Micro-batches per step (pipelines).")
@click.option("--zero", type=click.IntRange(0, 2), default=0, help="ZeRO stage for the memory estimate.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), help="Write the predictions here.")
def main(preset, ranks, profile, topology, strategy, algorithm, servers, global_batch_size, device, mfu,
         bucket_mb, overlap, comm_dtype, devices, tp, pp, micro_batches, zero, json_path):
    """Predict step time, tokens/s, scaling efficiency and memory per rank for a model and layout."""
    try:
        prof = load_profile(profile)
        if topology:
            topology_from_profile(prof, topology)  # fail now on a one-level profile with nodes
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--profile/--topology") from None
    n_params, flops_per_token, block = model_numbers(preset)
    flops, device_mfu, device_text = device_flops(device, preset)
    mfu = device_mfu or mfu
    if tp > 1 or pp > 1 or zero:
        rows = layout_table(preset, prof, comma_list(ranks, rank_count, "--ranks"), tp, pp, micro_batches, zero, global_batch_size, algorithm,
                            n_params, flops_per_token, flops, mfu, devices, device_text)
        if json_path:
            write_atomic(json_path, lambda tmp: tmp.write_text(json.dumps({"predictions": rows}, indent=1) + "\n"))
            print(f"# wrote {json_path}")
        return
    tokens = global_batch_size * block
    grad_bytes = 4 if comm_dtype == "fp32" else 2
    print(f"# {preset}: {n_params / 1e6:.2f}M parameters, {flops_per_token / 1e6:.1f} MFLOP/token, "
          f"{global_batch_size} x {block} = {tokens} tokens per step")
    print(f"# device: {device_text}; MFU {mfu:.3f}" + (f"; {devices} device(s) shared by the ranks" if devices else ""))
    print(f"# network: {prof.name} ({prof.description or 'no description'}); "
          + (f"{strategy}, {algorithm} all-reduce in {bucket_mb:g} MiB buckets, overlap {'on' if overlap else 'off'}, "
             f"{comm_dtype} gradients" if strategy == "data_parallel" else f"sync parameter server, {servers} server(s)"))
    print(f"{'ranks':>6} {'compute_ms':>11} {'comm_ms':>10} {'exposed_ms':>11} {'step_ms':>10} {'tokens/s':>12} "
          f"{'efficiency':>10} {'GiB/rank':>9}")
    rows = []
    for p in comma_list(ranks, rank_count, "--ranks"):
        if strategy == "parameter_server" and p <= servers:
            raise click.UsageError(f"--ranks {p} leaves no workers with --servers {servers}: use more ranks")
        if strategy == "data_parallel" and global_batch_size % p:
            raise click.UsageError(f"--global-batch-size {global_batch_size} does not split over {p} ranks: "
                                   "use a multiple of every rank count")
        cost = functools.lru_cache(maxsize=None)(
            lambda n, p=p: collective_time_s("allreduce", algorithm, n, p, prof, topology or ""))
        pred = predict_step(n_params=n_params, flops_per_token=flops_per_token, tokens_per_step=tokens, ranks=p,
                            flops_per_s=flops, mfu=mfu, strategy=strategy, allreduce_s=cost,
                            bucket_bytes=bucket_mb * 2**20, grad_bytes_per_param=grad_bytes, overlap=overlap,
                            servers=servers, ps_network=prof.slowest(), devices=devices)
        mem = sum(pred.memory_bytes.values())
        print(f"{p:>6} {pred.compute_s * 1e3:>11.3f} {pred.comm_s * 1e3:>10.3f} {pred.exposed_comm_s * 1e3:>11.3f} "
              f"{pred.step_s * 1e3:>10.3f} {pred.tokens_per_s:>12.0f} {pred.efficiency:>10.3f} {mem / 2**30:>9.2f}")
        rows.append({"preset": preset, "profile": prof.name, **pred.to_dict()})
    print("# memory per rank = parameters + gradients + AdamW moments in fp32 (4 + 4 + 8 bytes per parameter), "
          "activations not counted")
    if json_path:
        write_atomic(json_path, lambda tmp: tmp.write_text(json.dumps({"predictions": rows}, indent=1) + "\n"))
        print(f"# wrote {json_path}")


if __name__ == "__main__":
    main()
