"""Launching an MPI job across the nodes: a launch agent in place of ssh, and each MPI's settings.

Both MPIs start their remote daemons the way they would over ssh: ``AGENT [ssh options] HOST COMMAND``. The
agent (written at ``up``, one per cluster) maps HOST, a node's address or name, to its namespace and runs the
command there as ssh would (one string for a shell), inside new UTS, IPC and mount namespaces: the node gets
its own hostname (Open MPI hangs at start when two nodes share one), an /etc/hosts naming every node (gloo
finds its own address by its name), and its own System V IPC and /dev/shm
(otherwise MPICH's UCX finds the other node's ranks in shared memory and moves their bytes around the link).
The launcher itself starts inside node 0 through the same agent. Each node runs on its own CPUs (``taskset``:
the machine's cut evenly, when there are enough), so a rank sees its node's cores, not the whole machine's. The environment travels with the command
(the agent inherits the launcher's), as it does under mpiexec on one machine.

- Open MPI (PRRTE): ``--prtemca plm_ssh_agent AGENT``, no tree spawn, its out-of-band channel and TCP transport
  on the cluster's subnet, ``mpi_yield_when_idle`` (waiting ranks otherwise spin, and several ranks share a
  core here), ranks placed node by node (``--map-by ppr``, never ``--oversubscribe``, which puts every rank on
  the first node).
- MPICH (Hydra): ``-launcher ssh -launcher-exec AGENT -hosts A:K,B:K``.

``--intra-link``: the ranks of one node talk over TCP too (Open MPI without its shared-memory transport, UCX
with ``tcp``), through the node's shaped loopback.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from .nodes import stop_all
from .state import SUBNET, Cluster, ClusterError, agent_path, hosts_path, state_dir

NODE_SETUP = """#!/bin/sh
# parallel_lm cluster: run a command inside a node as ssh would: NODE-NAME HOSTS-FILE COMMAND-STRING
hostname "$1" && mount -t tmpfs -o size=1g parallel_lm-shm /dev/shm && mount --bind "$2" /etc/hosts || exit 255
exec sh -c "$3"
"""


def write_agent(cluster: Cluster) -> Path:
    """The launch agent of ``cluster`` (an executable POSIX shell script), written beside its state."""
    setup = state_dir() / "node-setup.sh"
    setup.write_text(NODE_SETUP)
    setup.chmod(0o755)
    hosts = hosts_path(cluster)  # each node's name resolves, as a cluster's DNS would do
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{cluster.address(i)} {node}\n"
                                                        for i, node in enumerate(cluster.nodes)))
    cpus = cluster.cpus or ["all"] * len(cluster.nodes)
    cases = "\n".join(f"  {cluster.address(i)}|{node}) node={node}; cpus={cpus[i]} ;;"
                      for i, node in enumerate(cluster.nodes))
    enter = ""
    if cluster.keeper is not None:  # rootless: enter the keeper's namespaces, unless already inside (node 0's launcher)
        enter = (f'[ "$(readlink /proc/self/ns/user)" = "$(readlink /proc/{cluster.keeper}/ns/user)" ] || '
                 f'enter="{" ".join(cluster.host_prefix())} --wd=$PWD"')
    agent = agent_path(cluster)
    agent.write_text(f"""#!/bin/sh
# parallel_lm cluster {cluster.name} ({cluster.prefix}): what mpiexec runs instead of ssh. AGENT [OPTIONS] HOST CMD...
while [ $# -gt 0 ]; do
  case "$1" in
    -o|-l|-p|-i|-F|-E|-c|-m|-b) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
host=$1; shift
case "$host" in
{cases}
  *) echo "parallel_lm cluster agent: no node $host in cluster {cluster.name}" >&2; exit 255 ;;
esac
enter=""
{enter}
pin=""
[ "$cpus" = all ] || pin="taskset -c $cpus"
exec $enter $pin ip netns exec "$node" unshare --uts --ipc --mount --propagation private {setup} "$node" {hosts} "$*"
""")
    agent.chmod(0o755)
    return agent


def flavour(mpiexec: str) -> str:
    """"openmpi" or "mpich", from what ``mpiexec --version`` prints; ClusterError for anything else."""
    try:
        text = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ClusterError(f"cannot run {mpiexec} --version ({e}): pass --mpiexec PATH") from None
    if "Open MPI" in text or "OpenRTE" in text or "PRRTE" in text:
        return "openmpi"
    if "HYDRA" in text or "MPICH" in text:
        return "mpich"
    raise ClusterError(f"{mpiexec} is neither Open MPI's nor MPICH's launcher: pass --mpiexec PATH")


def mpi_command(cluster: Cluster, mpiexec: str, kind: str, command: list[str], ranks: int | None = None,
                extra: list[str] = ()) -> list[str]:
    """The launcher's command line that runs ``command`` on every rank of the cluster, node by node (``extra``:
    more launcher options, before the command)."""
    agent = str(agent_path(cluster))
    per_node = [cluster.ranks_per_node[i] for i in cluster.live]
    n = ranks or cluster.ranks
    hosts = ",".join(f"{cluster.address(i)}:{cluster.ranks_per_node[i]}" for i in cluster.live)
    if kind == "openmpi":
        btl = "tcp,self" if cluster.intra_link else "tcp,sm,self"
        argv = [mpiexec, "--prtemca", "plm_ssh_agent", agent, "--prtemca", "plm_ssh_no_tree_spawn", "1",
                "--prtemca", "oob_tcp_if_include", SUBNET, "--mca", "btl", btl,
                "--mca", "btl_tcp_if_include", SUBNET, "--mca", "mpi_yield_when_idle", "1",
                "--bind-to", "none",  # a rank keeps its node's CPUs (Open MPI would bind it to the machine's core 0)
                "--host", hosts, "-np", str(n)]
        if len(set(per_node)) == 1:
            argv += ["--map-by", f"ppr:{per_node[0]}:node"]
        if os.geteuid() == 0 or cluster.keeper is not None:
            argv += ["--allow-run-as-root"]
        return argv + list(extra) + command
    return [mpiexec, "-launcher", "ssh", "-launcher-exec", agent, "-hosts", hosts, "-n", str(n)] + list(extra) + command


def environment(cluster: Cluster, mpiexec: str, kind: str) -> dict[str, str]:
    """The launcher's environment: this one, plus what its MPI needs across the nodes."""
    env = dict(os.environ)
    if kind == "openmpi":
        env.setdefault("OPAL_PREFIX", str(Path(mpiexec).resolve().parent.parent))
        env.pop("PRTE_MCA_rmaps_default_mapping_policy", None)  # :oversubscribe would put every rank on node 0
    elif cluster.intra_link:
        env.setdefault("UCX_TLS", "tcp,self")
    python_dir = str(Path(sys.executable).parent)
    env["PATH"] = python_dir + os.pathsep + env.get("PATH", "")  # the same Python and tools on every node
    return env


def run(cluster: Cluster, mpiexec: str, command: list[str], ranks: int | None = None,
        timeout: float | None = None, extra: list[str] = ()) -> int:
    """Run ``command`` on the ranks of the cluster's live nodes, launched from the first; its exit status (124
    after ``timeout`` seconds)."""
    mpiexec = str(Path(mpiexec).absolute()) if os.sep in mpiexec else mpiexec
    if not cluster.live:
        raise ClusterError(f"every node of cluster {cluster.name} is lost: down, then up")
    kind = flavour(mpiexec)
    write_agent(cluster)
    argv = [str(agent_path(cluster)), cluster.address(cluster.live[0]), shlex.join(mpi_command(cluster, mpiexec, kind, command,
                                                                                   ranks, extra))]
    launcher = subprocess.Popen(argv, env=environment(cluster, mpiexec, kind), start_new_session=True)
    try:
        return launcher.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, 9)
        launcher.wait()
        stop_all(cluster)
        return 124
    except KeyboardInterrupt:
        os.killpg(launcher.pid, 2)
        return launcher.wait()

