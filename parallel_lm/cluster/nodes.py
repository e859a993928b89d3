"""Nodes on one machine: each a network namespace, joined through a switch namespace, its links shaped.

    switch namespace  PREFIX-sw   a bridge br0, one port nI per node
    node namespaces   PREFIX-nI   eth0 198.18.0.(10+I)/24, the other end of port nI; lo

Every interface is created inside our own namespaces (``ip link add ... netns A type veth peer ... netns B``),
so nothing appears in the host's namespace, and removing the namespaces removes every link. A link shaped at
``rate`` has a token bucket (``tbf``) on both of its ends, so each direction runs at that rate; ``intra`` shapes
each node's loopback, which ranks of one node use when told to talk over TCP (``launch.py``).

Addresses come from 198.18.0.0/24, reserved for network benchmarking (RFC 2544), so they cannot be anyone's
real network. The prefix is ``plm`` and six random hex digits, chosen at ``up``: two clusters, or a cluster and
anything else on the machine, never share a name.

Rootless, where the kernel allows user namespaces, the same commands run inside a user, mount and network
namespace held open by a keeper process (``unshare -r -m -n``): everything lives and dies with that process.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .state import Cluster, ClusterError, agent_path, hosts_path, save, state_file

MAX_NODES = 200


def _run(cluster: Cluster, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """One ip/tc command in the cluster's world; ClusterError with its message when it fails and ``check``."""
    done = subprocess.run(cluster.host_prefix() + list(argv), capture_output=True, text=True)
    if check and done.returncode:
        raise ClusterError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


def in_node(cluster: Cluster, node: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(cluster, "ip", "netns", "exec", node, *argv, check=check)


def _need_tools() -> None:
    missing = [t for t in ("ip", "tc", "unshare", "nsenter") if shutil.which(t) is None]
    if missing:
        raise ClusterError(f"{', '.join(missing)} not found: install iproute2 and util-linux "
                           f"(Debian: apt-get install iproute2 util-linux)")


def _start_keeper() -> int:
    """Rootless: a process in a new user (mapped to root), mount and network namespace, with its own /run/netns.
    ClusterError naming what is missing when the kernel refuses."""
    script = ("mount -t tmpfs parallel_lm /run && mkdir -p /run/netns && echo ready && "
              "exec sleep 2147483647")
    keeper = subprocess.Popen(["unshare", "-r", "-m", "-n", "--propagation", "private", "sh", "-c", script],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = keeper.stdout.readline().strip()
    if line != "ready":
        keeper.wait()
        raise ClusterError(
            "cannot make network namespaces: not root, and the kernel refused an unprivileged user namespace "
            f"({keeper.stderr.read().strip() or 'no reason given'}). Run as root (or with CAP_NET_ADMIN), or "
            "allow user namespaces (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0)")
    return keeper.pid


UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}


def bits_per_s(rate: str) -> float:
    """tc's rate (1gbit, 100mbit, 2.5gbit) in bits per second; ValueError otherwise."""
    for unit in sorted(UNITS, key=len, reverse=True):
        if rate.endswith(unit) and rate[:-len(unit)].replace(".", "", 1).isdigit():
            return float(rate[:-len(unit)]) * UNITS[unit]
    raise ValueError(f"{rate!r}: give a rate with its unit, for example 1gbit, 100mbit or 10gbit")


def _shape(cluster: Cluster, ns: str, dev: str, rate: str) -> None:
    """A token bucket on ``dev`` in ``ns``: what leaves through it leaves at ``rate`` (tc's units: 1gbit, 100mbit).

    The bucket holds 100 us of the rate (at least 16 KiB): a larger one lets a message that fits in it leave at
    memory speed, which no wire does (measured with 1 MB at 1gbit: 64 KiB all-reduced in 57 us instead of the
    wire's 524); a smaller one cannot keep the rate (16 KiB at 10gbit: 0.3 GB/s of 1.25)."""
    burst = max(16 << 10, int(bits_per_s(rate) / 8 * 1e-4))
    in_node(cluster, ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
            "burst", str(burst), "latency", "100ms")


def split_cpus(nodes: int, cpus_per_node: int | None) -> list[str]:
    """Each node's own CPUs, as a machine's are its own: this process's CPUs cut evenly (``cpus_per_node`` each,
    default as many as divide evenly), so that a rank sees only its node's cores. [] (every node sees every CPU)
    when there are fewer CPUs than nodes need, or ``cpus_per_node`` is 0."""
    mine = sorted(os.sched_getaffinity(0))
    each = len(mine) // nodes if cpus_per_node is None else cpus_per_node
    if each < 1 or each * nodes > len(mine):
        return []
    return [",".join(map(str, mine[i * each:(i + 1) * each])) for i in range(nodes)]


def up(name: str, ranks_per_node: list[int], link: str | None, intra_link: str | None,
       rootless: bool = False, cpus_per_node: int | None = None) -> Cluster:
    """Make the nodes, the switch and the links (see the module docstring); ClusterError on any failure, with
    everything made so far removed again. ``rootless``: inside a user namespace even as root (what any other user
    gets)."""
    _need_tools()
    if not 1 <= len(ranks_per_node) <= MAX_NODES or min(ranks_per_node) < 1:
        raise ClusterError(f"--nodes must be 1..{MAX_NODES} and every node needs at least one rank")
    if state_file(name).exists():
        raise ClusterError(f"a cluster named {name!r} is already up: python -m parallel_lm.cluster down"
                           + ("" if name == "default" else f" --name {name}") + " first, or pick another --name")
    cluster = Cluster(name, "plm" + secrets.token_hex(3), ranks_per_node, link, intra_link,
                      cpus=split_cpus(len(ranks_per_node), cpus_per_node))
    if rootless or os.geteuid() != 0:
        cluster.keeper = _start_keeper()
    save(cluster)  # before anything exists: a crash from here on leaves a state file that down can clean up after
    try:
        _build(cluster)
    except BaseException:
        down(cluster)
        raise
    return cluster


def _build(cluster: Cluster) -> None:
    for ns in [cluster.switch] + cluster.nodes:
        done = _run(cluster, "ip", "netns", "add", ns, check=False)
        if done.returncode:
            raise ClusterError(f"ip netns add {ns}: {done.stderr.strip()}. Making network namespaces needs root "
                               "(CAP_NET_ADMIN and CAP_SYS_ADMIN) or user namespaces; in a container, run it with "
                               "--cap-add NET_ADMIN --cap-add SYS_ADMIN (or --privileged)")
        cluster.made.append(ns)
        save(cluster)
    sw = cluster.switch
    in_node(cluster, sw, "ip", "link", "add", "br0", "type", "bridge")
    in_node(cluster, sw, "ip", "link", "set", "br0", "up")
    for i, node in enumerate(cluster.nodes):
        _run(cluster, "ip", "link", "add", "eth0", "netns", node, "type", "veth", "peer", "name", f"n{i}",
             "netns", sw)
        in_node(cluster, sw, "ip", "link", "set", f"n{i}", "master", "br0")
        in_node(cluster, sw, "ip", "link", "set", f"n{i}", "up")
        in_node(cluster, node, "ip", "addr", "add", f"{cluster.address(i)}/24", "dev", "eth0")
        in_node(cluster, node, "ip", "link", "set", "eth0", "up")
        in_node(cluster, node, "ip", "link", "set", "lo", "up")
        if cluster.link:
            _shape(cluster, node, "eth0", cluster.link)
            _shape(cluster, sw, f"n{i}", cluster.link)
        if cluster.intra_link:
            _shape(cluster, node, "lo", cluster.intra_link)
    for i, node in enumerate(cluster.nodes):  # every node reaches every other before anyone launches
        for j in range(len(cluster.nodes)):
            if j != i and _ping(cluster, node, cluster.address(j)) is False:
                raise ClusterError(f"node {i} cannot reach node {j} ({cluster.address(j)}) over the switch")


def _ping(cluster: Cluster, node: str, address: str) -> bool | None:
    """Whether ``node`` reaches ``address`` (None: no ping installed, nothing to say)."""
    if shutil.which("ping") is None:
        return None
    for _ in range(20):  # the bridge's ports take a moment to forward
        if in_node(cluster, node, "ping", "-c", "1", "-W", "1", address, check=False).returncode == 0:
            return True
        time.sleep(0.1)
    return False


def kill_node(cluster: Cluster, i: int, cut_link: bool = False) -> list[int]:
    """A node lost: every process on node ``i`` (its ranks and the launcher's daemon there) SIGKILLed at once, as
    when its operating system ends them all; their connections close, so the launcher on another node sees its
    daemon gone. ``cut_link``: the machine vanishes instead (power, network): then the link goes down as well,
    the others hear nothing more, and only a heartbeat (train's watchdog, --timeout) notices. The node is
    recorded as lost; returns the pids killed."""
    node = cluster.nodes[i]
    killed = processes(cluster).get(node, [])
    for pid in killed:
        stop(cluster, pid)
    if cut_link:
        in_node(cluster, node, "ip", "link", "set", "eth0", "down")
    cluster.lost = sorted(set(cluster.lost) | {i})
    save(cluster)
    return killed


def counters(cluster: Cluster) -> dict[str, dict[str, int]]:
    """Bytes each node's link has sent and received (the kernel's own counters on eth0), by node name."""
    out = {}
    for node in cluster.nodes:
        done = in_node(cluster, node, "cat", "/sys/class/net/eth0/statistics/tx_bytes",
                       "/sys/class/net/eth0/statistics/rx_bytes")
        tx, rx = (int(v) for v in done.stdout.split())
        out[node] = {"tx_bytes": tx, "rx_bytes": rx}
    return out


def processes(cluster: Cluster) -> dict[str, list[int]]:
    """The pids running inside each of the cluster's namespaces that still exist."""
    out = {}
    for ns in cluster.made:
        done = _run(cluster, "ip", "netns", "pids", ns, check=False)
        out[ns] = [int(p) for p in done.stdout.split()] if done.returncode == 0 else []
    return out


def down(cluster: Cluster) -> list[str]:
    """Kill whatever runs in the cluster's namespaces, delete them (their links go with them), end the keeper,
    forget the cluster. Safe after a crash or a killed run, and to call twice. Returns what it removed."""
    removed = []
    if cluster.keeper is None or alive(cluster.keeper):
        stop_all(cluster)
        for ns in reversed(cluster.made):
            if _run(cluster, "ip", "netns", "del", ns, check=False).returncode == 0:
                removed.append(ns)
    if cluster.keeper is not None and alive(cluster.keeper):
        os.killpg(cluster.keeper, signal.SIGKILL)
        removed.append(f"keeper {cluster.keeper}")
    for path in (state_file(cluster.name), agent_path(cluster), hosts_path(cluster)):
        path.unlink(missing_ok=True)
    return removed


def stop_all(cluster: Cluster) -> None:
    """SIGKILL every process in the cluster's namespaces (the nodes stay up)."""
    for pids in processes(cluster).values():
        for pid in pids:
            stop(cluster, pid)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by whoever adopted it, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def stop(cluster: Cluster, pid: int) -> None:
    """SIGKILL ``pid`` (a process in one of the cluster's namespaces)."""
    if cluster.keeper is None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    else:
        _run(cluster, "kill", "-9", str(pid), check=False)


def existing(cluster: Cluster) -> list[str]:
    """Which of the cluster's namespaces exist now (``ip netns list``)."""
    done = _run(cluster, "ip", "netns", "list", check=False)
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
    return [ns for ns in cluster.made if ns in listed]
