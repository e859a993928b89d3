"""The survey's case study, priced before buying anything: 100 nodes, data and model parallelism, sync vs async.

    python examples/case_study_100_nodes.py [--nodes 100] [--group 4]

A 1.2B-parameter GPT (24 layers, width 2048, 1,024-byte context) trained
on 100 nodes, one H100 each, 1,000 sequences per step. Four ways to
organise it, each on 10 Gb Ethernet and on InfiniBand NDR (the shipped
profiles, with their sources):

1. data parallel: every node holds the whole model and trains on its
   share of the data; gradients are ring all-reduced in 25 MiB buckets
   overlapped with backward (costmodel.predict; the bucket all-reduce is
   also run through the simulator on 100 virtual ranks, which must agree);
2. model split across groups: groups of --group nodes each hold one copy
   of the model cut into pipeline stages (1F1B, one sequence per
   micro-batch); activations cross each stage boundary forward and their
   gradients backward, and each stage's gradient is all-reduced across the
   100/group copies. The pipeline bubble idles (g-1)/(m+g-1) of the time;
3. parameter server, synchronous: 10 of the nodes serve shards, 90 push
   gradients and pull parameters every step and wait for each other;
4. parameter server, asynchronous: nobody waits, but every update still
   crosses the servers' links (costmodel.predict.async_ps_updates_per_s).

Printed: time per step (or per update), tokens/s, and which part
dominates. Compute is FLOPs / (989 TFLOP/s x 46.2% MFU).
"""
import math

import click

from parallel_lm.costmodel.devices import DEVICES
from parallel_lm.costmodel.formulas import COSTS
from parallel_lm.costmodel.predict import (
    async_ps_updates_per_s,
    compute_s,
    predict_step,
)
from parallel_lm.costmodel.profiles import load_profile
from parallel_lm.sim import Topology, simulate


def model_numbers():
    import torch

    from parallel_lm.model import GPT, GPTConfig
    cfg = GPTConfig(n_layer=24, n_head=16, n_embd=2048, block_size=1024)
    with torch.device("meta"):
        model = GPT(cfg)
    return cfg, model.num_params(), model.flops_per_token()


def data_parallel(n_params, flops_per_token, tokens, nodes, flops, net):
    ring = lambda n: COSTS["allreduce"]["ring"](n, nodes).time_s(net)
    pred = predict_step(n_params=n_params, flops_per_token=flops_per_token, tokens_per_step=tokens, ranks=nodes,
                        flops_per_s=flops, allreduce_s=ring)
    return pred.step_s, pred.compute_s, pred.exposed_comm_s, "all-reduce" if pred.exposed_comm_s > pred.compute_s else "compute"


def model_split(cfg, n_params, flops_per_token, sequences, nodes, group, flops, net):
    """Pipeline of `group` stages inside each group, data parallel across groups (1F1B, no overlap of the all-reduce)."""
    copies = nodes // group
    m = sequences // copies  # micro-batches of one sequence per copy
    stage_compute = compute_s(flops_per_token, m * cfg.block_size, flops) / group
    bubble = stage_compute * (group - 1) / m  # 1F1B: (g-1) micro-batch slots idle, each stage_compute/m long
    activation = cfg.block_size * cfg.n_embd * 4  # fp32 bytes crossing a boundary per micro-batch
    p2p = 2 * m * (net.alpha_s + activation * net.beta_s_per_byte)  # forward activations + backward gradients
    grads = 4 * n_params / group
    allreduce = COSTS["allreduce"]["ring"](grads, copies).time_s(net)
    parts = {"compute": stage_compute, "bubble": bubble, "activations": p2p, "all-reduce": allreduce}
    return sum(parts.values()), parts


@click.command()
@click.option("--nodes", default=100, show_default=True)
@click.option("--group", default=4, show_default=True, help="Nodes per model copy in the model-split layout.")
@click.option("--servers", default=10, show_default=True, help="Parameter-server nodes.")
@click.option("--sequences", default=1000, show_default=True, help="Sequences per step (global batch).")
def main(nodes, group, servers, sequences):
    cfg, n_params, flops_per_token = model_numbers()
    flops = DEVICES["h100-sxm"].flops("bf16")  # peak; compute_s and predict_step apply the MFU
    tokens = sequences * cfg.block_size
    print(f"model: {n_params / 1e9:.2f}B parameters ({4 * n_params / 1e9:.1f} GB of fp32 gradients), "
          f"{flops_per_token / 1e9:.1f} GFLOP per token; {nodes} nodes x 1 H100, {sequences} x {cfg.block_size} "
          f"= {tokens:,} tokens per step\n")
    fastest = {}
    for name in ("eth-10g", "ib-ndr"):
        prof = load_profile(name)
        net = prof.network()
        print(f"== {prof.description} (alpha {net.alpha_s * 1e6:g} us, {1e-9 / net.beta_s_per_byte:g} GB/s)")
        print(f"{'layout':>34} {'step':>10} {'tokens/s':>11}  dominated by")
        step, comp, exposed, top = data_parallel(n_params, flops_per_token, tokens, nodes, flops, net)
        print(f"{'1. data parallel, ring':>34} {step:>9.2f}s {tokens / step:>11,.0f}  {top} "
              f"(compute {comp:.2f} s, exposed all-reduce {exposed:.2f} s)")
        total, parts = model_split(cfg, n_params, flops_per_token, sequences, nodes, group, flops, net)
        top = max(parts, key=parts.get)
        print(f"{f'2. groups of {group}: pipeline x data':>34} {total:>9.2f}s {tokens / total:>11,.0f}  {top} ("
              + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()) + ")")
        workers = nodes - servers
        sync = predict_step(n_params=n_params, flops_per_token=flops_per_token, tokens_per_step=tokens, ranks=nodes,
                            flops_per_s=flops, strategy="parameter_server", servers=servers,
                            ps_network=net)
        print(f"{f'3. PS sync, {servers} servers':>34} {sync.step_s:>9.2f}s {tokens / sync.step_s:>11,.0f}  "
              f"server links ({sync.comm_s:.2f} s of {sync.step_s:.2f} s)")
        per_worker = math.ceil(sequences / workers)
        worker_compute = compute_s(flops_per_token, per_worker * cfg.block_size, flops)
        rate, bound = async_ps_updates_per_s(4 * n_params, workers, servers, worker_compute, net)
        print(f"{f'4. PS async, {servers} servers':>34} {1 / rate:>9.2f}s {rate * per_worker * cfg.block_size:>11,.0f}  "
              f"{bound} ({rate:.2f} updates/s of {per_worker} sequences each; the step column is time per update)")
        rates = {"data parallel": tokens / step, f"groups of {group}": tokens / total,
                 "PS sync": tokens / sync.step_s, "PS async": rate * per_worker * cfg.block_size}
        fastest[name] = max(rates.items(), key=lambda kv: kv[1])
        bucket = 25 * 2**20
        sim = simulate("allreduce", "ring", nodes, bucket, Topology.flat(net)).time_s
        formula = COSTS["allreduce"]["ring"](bucket, nodes).time_s(net)
        print(f"   check: one 25 MiB bucket on {nodes} simulated ranks takes {sim * 1e3:.2f} ms, "
              f"the formula {formula * 1e3:.2f} ms\n")
        assert abs(sim / formula - 1) < 1e-9
    for name, (layout, rate) in fastest.items():
        print(f"fastest on {name}: {layout} ({rate:,.0f} tokens/s)")
    print("The model split all-reduces only its stage's share of the gradient, across 100/group copies instead of 100;\n"
          "it pays the pipeline bubble and the activations instead. The parameter server's links carry every worker's\n"
          "gradient in and parameters out: asynchrony stops workers waiting for each other, not for the servers.")


if __name__ == "__main__":
    main()
