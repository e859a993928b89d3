"""python -m parallel_lm.predict: step time, throughput and memory of a training layout, before running it.

A real run, stated in full (the 145.6B row of Narayanan et al. 2021, Table 1, on 1,536 A100s):

    python -m parallel_lm.predict --n-layer 80 --n-embd 12288 --n-head 96 --seq-len 2048 --vocab-size 51200 \
        --ranks 1536 --tp 8 --pp 8 --virtual-stages 2 --global-batch-size 2304 --micro-batch-size 2 \
        --recompute full --precision fp16 --device a100-80gb --profile dgx-a100-hdr

On a GPU ``--device`` (a100-40gb, a100-80gb, h100-sxm, or a JSON file) the
model is ``costmodel/step.py``: GEMMs and element-wise kernels on the
device's roofline, tensor-parallel all-reduces, pipeline messages, bubble,
data-parallel sync behind backward, optimizer, memory by precision, ZeRO
stage and recomputation. With ``--device measure`` (this CPU) or a number
of FLOP/s, and for the parameter server, the simpler per-token model of
``costmodel/predict.py`` answers (compute = FLOPs / throughput x MFU).
"""
from __future__ import annotations

import functools
import json

import click

from . import environment
from .costmodel.devices import DEVICE_NAMES, PRECISIONS, load_device
from .costmodel.formulas import COSTS
from .costmodel.layout import ZERO3_GATHERS, Cluster
from .costmodel.predict import DEFAULT_MFU, predict_step
from .costmodel.profiles import PROFILE_NAMES, load_profile
from .costmodel.stack import apply, parse_factors
from .costmodel.transformer import ARCH_SHAPES, RECOMPUTE, ModelShape
from .services.metrics import write_atomic
from .predict_tables import calibrated, gpu_table, layout_table
from .runtime import comma_list, rank_count
from .sim import KINDS, collective_time_s
from .sim.network import topology_from_profile

STRATEGIES = ("data_parallel", "parameter_server")


def model_numbers(preset: str) -> tuple[int, float, int]:
    """(parameters, training FLOPs per token, context length) of a preset, built on torch's meta device."""
    import torch

    from .model import GPT, PRESETS
    with torch.device("meta"):
        model = GPT(PRESETS[preset])
    return model.num_params(), model.flops_per_token(), PRESETS[preset].block_size


def measured_flops_per_s(preset: str, batch: int = 32, steps: int = 5) -> float:
    """FLOP/s this machine's CPU reaches training the preset (forward + backward + AdamW), one process.

    The same probe as ``train --predict`` (``run_prediction.measure_compute``), with train's defaults.
    """
    import torch

    from .config import TrainConfig
    from .model import PRESETS
    from .training.run_prediction import measure_compute
    cfg = TrainConfig(model=PRESETS[preset])
    probe = measure_compute(cfg, batch, torch.get_num_threads(), reps=steps)
    flops_per_token = model_numbers(preset)[1]
    return flops_per_token * batch * cfg.model.block_size / (probe.micro_batch_s + probe.optimizer_s)


def device_flops(device: str, preset: str) -> tuple[float, float | None, str]:
    """(FLOP/s, MFU to apply or None for the flag's, description) for the per-token model."""
    if device in DEVICE_NAMES:
        dev = load_device(device)
        return dev.flops("bf16"), None, f"{device} bf16 peak ({dev.sources['peak_flops']})"
    if device == "measure":
        flops = measured_flops_per_s(preset)
        return flops, 1.0, f"measured here: {flops / 1e9:.2f} GFLOP/s achieved training {preset} on one CPU process"
    try:
        return float(device), None, f"given: {float(device):.3g} FLOP/s"
    except ValueError:
        raise click.BadParameter(f"{device!r}: use one of {', '.join(DEVICE_NAMES)}, a device JSON file, "
                                 "'measure', or a number of FLOP/s", param_hint="--device") from None


def model_shape(preset: str, dims: dict, dropout: bool, attention: str = "unfused", arch: str = "gpt") -> ModelShape:
    """The preset's shape with every dimension given on the command line put over it."""
    from .model import PRESETS
    cfg = PRESETS[preset]
    base = {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head, "seq_len": cfg.block_size,
            "vocab_size": cfg.vocab_size}
    try:
        return ModelShape(**{**base, **{k: v for k, v in dims.items() if v is not None}},
                          **{"dropout": dropout, **ARCH_SHAPES[arch]}, fused_attention=attention == "flash")
    except ValueError as e:
        raise click.UsageError(str(e)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--preset", type=click.Choice(["tiny", "small", "medium", "gpt2"]), default="gpt2",
              help="Model shape to start from; any dimension flag below replaces the preset's value.")
@click.option("--n-layer", type=click.IntRange(min=1), default=None, help="Transformer blocks.")
@click.option("--n-embd", type=click.IntRange(min=1), default=None, help="Hidden size h.")
@click.option("--n-head", type=click.IntRange(min=1), default=None, help="Attention heads.")
@click.option("--n-kv-head", type=click.IntRange(min=1), default=None, help="Key/value heads (grouped-query attention).")
@click.option("--ffn-hidden", type=click.IntRange(min=1), default=None, help="MLP width (default 4 x --n-embd).")
@click.option("--seq-len", type=click.IntRange(min=1), default=None, help="Tokens per sequence.")
@click.option("--vocab-size", type=click.IntRange(min=1), default=None, help="Vocabulary (the presets use 256 bytes).")
@click.option("--dropout/--no-dropout", default=True, help="Dropout masks kept for backward (activation memory).")
@click.option("--arch", type=click.Choice(list(ARCH_SHAPES)), default="gpt",
              help="GPU model: gpt (GeLU MLP, LayerNorm, biases, learned positions, head tied to the embedding, "
                   "dropout) or llama (SwiGLU MLP of three matrices, RMSNorm, no biases, rotary positions, a head "
                   "of its own, no dropout); --n-kv-head for grouped-query attention.")
@click.option("--layers-per-stage", default=None, metavar="N,N,...",
              help="GPU model: layers of each pipeline stage, one count per --pp (e.g. Llama 3's 126 layers on 16 "
                   "stages: 7,8,...,8,7); default n_layer / pp each.")
@click.option("--attention", type=click.Choice(["unfused", "flash"]), default="unfused",
              help="GPU model: unfused (the s x s scores in memory, every tile computed, as Megatron-LM ran in "
                   "2021-22) or flash (a fused kernel: no scores kept, the tiles above the causal diagonal skipped, "
                   "the scores computed again in backward).")
@click.option("--ranks", "-r", default="1,8,64,512", help="GPU (rank) counts, comma-separated.")
@click.option("--profile", "-p", default="dgx-h100-ndr",
              help=f"Network profile: {', '.join(PROFILE_NAMES)}, a JSON file, or alpha=S,beta=S_PER_B[,gamma=..].")
@click.option("--device", default="h100-sxm",
              help=f"A GPU ({', '.join(DEVICE_NAMES)}) or a device JSON file: the layout model. "
                   "'measure' (this CPU) or a number of FLOP/s: the per-token model with --mfu.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="bf16",
              help="Math and activation precision; fp16/bf16 mean mixed precision (18 bytes of state per parameter).")
@click.option("--global-batch-size", type=click.IntRange(min=1), default=512, help="Sequences per optimizer step.")
@click.option("--micro-batch-size", type=click.IntRange(min=1), default=1, help="Sequences per micro-batch (GPU model).")
@click.option("--dp", type=click.IntRange(min=1), default=None, help="Data-parallel degree (default: ranks / (tp x pp)).")
@click.option("--tp", type=click.IntRange(min=1), default=1, help="Tensor-parallel degree (model split inside layers).")
@click.option("--pp", type=click.IntRange(min=1), default=1, help="Pipeline stages.")
@click.option("--virtual-stages", type=click.IntRange(min=1), default=1,
              help="Chunks of layers per pipeline rank (interleaved 1F1B): the bubble shrinks by this factor.")
@click.option("--zero", type=click.IntRange(0, 3), default=0, help="ZeRO stage: 1 shards optimizer state, 2 + gradients, 3 + weights.")
@click.option("--zero3-gather", type=click.Choice(ZERO3_GATHERS), default="layer",
              help="GPU model, --zero 3: what is gathered at once, whole layers (parallel/zero3.py, FSDP per block) "
                   "or weight matrices (DeepSpeed); sets the memory of the gathered weights.")
@click.option("--recompute", type=click.Choice(RECOMPUTE), default="none",
              help="Activation recomputation: full (every block's forward again) or selective (attention core only).")
@click.option("--sequence-parallel", is_flag=True, help="Split LayerNorm/dropout activations over tensor ranks too.")
@click.option("--cp", type=click.IntRange(min=1), default=1,
              help="Context parallelism: each sequence cut over this many GPUs (ring attention); GPUs = dp x cp x tp x pp.")
@click.option("--n-experts", type=click.IntRange(min=0), default=0, help="Mixture of experts per MLP (0: dense).")
@click.option("--top-k", type=click.IntRange(min=1), default=1, help="Experts per token (--n-experts).")
@click.option("--ep", type=click.IntRange(min=1), default=1,
              help="Expert parallelism: each mixture's experts spread over this many of the dp x cp GPUs (all-to-all).")
@click.option("--dp-overlap/--no-dp-overlap", default=True, help="Data-parallel sync behind the last micro-batch's backward.")
@click.option("--micro-batches", type=click.IntRange(min=1), default=1,
              help="Micro-batches per step (per-token model; the GPU model derives them from the batch sizes).")
@click.option("--topology", "-t", type=click.Choice(KINDS), default=None,
              help="Per-token model: the simulator's topology (default: the profile's).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="data_parallel",
              help="Per-token model: gradients all-reduced, or pushed to parameter servers (--servers).")
@click.option("--algorithm", "-a", type=click.Choice(list(COSTS["allreduce"])), default="ring",
              help="Per-token model: data-parallel all-reduce.")
@click.option("--servers", type=click.IntRange(min=1), default=1, help="Parameter-server shards (--strategy parameter_server).")
@click.option("--mfu", type=click.FloatRange(min=0, max=1, min_open=True), default=DEFAULT_MFU,
              help="Per-token model: fraction of the FLOP/s reached (ignored with --device measure).")
@click.option("--bucket-mb", type=click.FloatRange(min=0, min_open=True), default=25.0, help="Gradient bucket size (MiB).")
@click.option("--comm-dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", help="Per-token model: gradient dtype on the wire.")
@click.option("--devices", type=click.IntRange(min=1), default=None,
              help="Per-token model: devices the ranks share (default: one per rank); e.g. 1 with --device measure.")
@click.option("--calibrate-to", default=None, metavar="STEP_S@GPUS[,...]",
              help="GPU model: measured seconds per step of this model and layout at one GPU count (or more, "
                   "comma-separated): fit how much slower your stack computes (and, from two counts, communicates) "
                   "than the model's defaults, and predict every --ranks with it.")
@click.option("--stack", default=None, metavar="compute=X,network=Y",
              help="GPU model: your stack's speed against the model's defaults, as factors on every kernel and "
                   "every message (what train --predict prints for a run, or --calibrate-to fits).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), help="Write the predictions here.")
def main(preset, n_layer, n_embd, n_head, n_kv_head, ffn_hidden, seq_len, vocab_size, dropout, arch, layers_per_stage,
         attention, ranks, profile, device,
         precision, global_batch_size, micro_batch_size, dp, tp, pp, virtual_stages, zero, zero3_gather, recompute,
         sequence_parallel, cp, n_experts, top_k, ep, dp_overlap, micro_batches, topology, strategy, algorithm, servers, mfu, bucket_mb,
         comm_dtype, devices, calibrate_to, stack, json_path):
    """Predict step time, TFLOP/s, MFU, memory per GPU and whether it fits, for a model and a layout.

    TFLOP/s per GPU counts every FLOP the GPU executes, the recomputed
    forward included (Megatron-LM's convention); MFU counts the model's
    FLOPs only (forward + backward), over the device's peak.
    """
    try:
        prof = load_profile(profile)
        if topology:
            topology_from_profile(prof, topology)  # fail now on a one-level profile with nodes
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--profile/--topology") from None
    rank_counts = comma_list(ranks, rank_count, "--ranks")
    if strategy == "data_parallel" and device not in ("measure",) and not _is_number(device):
        try:
            dev = load_device(device)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--device") from None
        shape = model_shape(preset, {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "n_kv_head": n_kv_head,
                                     "ffn_hidden": ffn_hidden, "seq_len": seq_len, "vocab_size": vocab_size,
                                     "n_experts": n_experts, "top_k": top_k}, dropout, attention, arch)
        layout = {"global_batch": global_batch_size, "micro_batch": micro_batch_size, "tp": tp, "pp": pp,
                  "virtual_stages": virtual_stages, "zero": zero, "recompute": recompute,
                  "sequence_parallel": sequence_parallel, "cp": cp, "ep": ep, "precision": precision,
                  "dp_overlap": dp_overlap, "stage_layers": _stage_layers(layers_per_stage),
                  "zero3_gather": zero3_gather}
        try:
            dev.flops(precision)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--precision") from None
        cluster = Cluster.from_profile(dev, prof)
        if stack:
            try:
                factors = parse_factors(stack)
            except ValueError as e:
                raise click.BadParameter(str(e), param_hint="--stack") from None
            print(f"# stack: {factors.describe()}")
            cluster = apply(cluster, factors)
        if calibrate_to:
            cluster = calibrated(shape, cluster, layout, dp, calibrate_to)
        rows = gpu_table(shape, cluster, rank_counts, layout, dp, prof.name)
        _write(json_path, rows)
        return
    if calibrate_to or stack or layers_per_stage or arch != "gpt" or attention != "unfused":
        raise click.UsageError("--calibrate-to, --stack, --layers-per-stage, --arch and --attention belong to the "
                               "GPU model: "
                               "give --device a GPU "
                               f"({', '.join(DEVICE_NAMES)}) or a device JSON file")
    n_params, flops_per_token, block = model_numbers(preset)
    flops, device_mfu, device_text = device_flops(device, preset)
    mfu = device_mfu or mfu
    if cp > 1 or ep > 1 or n_experts:
        raise click.UsageError("--cp, --ep and --n-experts are priced by the GPU model: give --device a GPU "
                               f"({', '.join(DEVICE_NAMES)}) or a device JSON file")
    if tp > 1 or pp > 1 or zero:
        rows = layout_table(preset, prof, rank_counts, tp, pp, micro_batches, zero, global_batch_size, algorithm,
                            n_params, flops_per_token, flops, mfu, devices, device_text)
        _write(json_path, rows)
        return
    tokens = global_batch_size * block
    grad_bytes = 4 if comm_dtype == "fp32" else 2
    print(f"# {preset}: {n_params / 1e6:.2f}M parameters, {flops_per_token / 1e6:.1f} MFLOP/token, "
          f"{global_batch_size} x {block} = {tokens} tokens per step")
    print(f"# device: {device_text}; MFU {mfu:.3f}" + (f"; {devices} device(s) shared by the ranks" if devices else ""))
    print(f"# network: {prof.name} ({prof.description or 'no description'}); "
          + (f"{strategy}, {algorithm} all-reduce in {bucket_mb:g} MiB buckets, overlap {'on' if dp_overlap else 'off'}, "
             f"{comm_dtype} gradients" if strategy == "data_parallel" else f"sync parameter server, {servers} server(s)"))
    print(f"{'ranks':>6} {'compute_ms':>11} {'comm_ms':>10} {'exposed_ms':>11} {'step_ms':>10} {'tokens/s':>12} "
          f"{'efficiency':>10} {'GiB/rank':>9}")
    rows = []
    for p in rank_counts:
        if strategy == "parameter_server" and p <= servers:
            raise click.UsageError(f"--ranks {p} leaves no workers with --servers {servers}: use more ranks")
        if strategy == "data_parallel" and global_batch_size % p:
            raise click.UsageError(f"--global-batch-size {global_batch_size} does not split over {p} ranks: "
                                   "use a multiple of every rank count")
        cost = functools.lru_cache(maxsize=None)(
            lambda n, p=p: collective_time_s("allreduce", algorithm, n, p, prof, topology or ""))
        pred = predict_step(n_params=n_params, flops_per_token=flops_per_token, tokens_per_step=tokens, ranks=p,
                            flops_per_s=flops, mfu=mfu, strategy=strategy, allreduce_s=cost,
                            bucket_bytes=bucket_mb * 2**20, grad_bytes_per_param=grad_bytes, overlap=dp_overlap,
                            servers=servers, ps_network=prof.slowest(), devices=devices)
        mem = sum(pred.memory_bytes.values())
        print(f"{p:>6} {pred.compute_s * 1e3:>11.3f} {pred.comm_s * 1e3:>10.3f} {pred.exposed_comm_s * 1e3:>11.3f} "
              f"{pred.step_s * 1e3:>10.3f} {pred.tokens_per_s:>12.0f} {pred.efficiency:>10.3f} {mem / 2**30:>9.2f}")
        rows.append({"preset": preset, "profile": prof.name, **pred.to_dict()})
    print("# memory per rank = parameters + gradients + AdamW moments in fp32 (4 + 4 + 8 bytes per parameter), "
          "activations not counted")
    _write(json_path, rows)


def _stage_layers(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(n) for n in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: layer counts separated by commas, one per pipeline stage",
                                 param_hint="--layers-per-stage") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _write(json_path, rows) -> None:
    if json_path:
        write_atomic(json_path, lambda tmp: tmp.write_text(json.dumps({"predictions": rows}, indent=1) + "\n"))
        print(f"# wrote {json_path}")


if __name__ == "__main__":
    environment.apply_or_exit()
    main()
