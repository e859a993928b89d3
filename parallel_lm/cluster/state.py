"""What a cluster is, and where it is written down: ``up`` saves it as JSON so that every later command, and
``down`` after a crash, finds what was made. One folder per user holds each cluster's description, its launch
agent and its /etc/hosts (launch.py writes those two).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

SUBNET = "198.18.0.0/24"
FIRST_HOST = 10  # node I is 198.18.0.(10 + I)


class ClusterError(RuntimeError):
    """What went wrong, and what to do about it (one line for the user)."""


@dataclass
class Cluster:
    """What ``up`` made, saved as JSON so that later commands (and ``down`` after a crash) find it."""
    name: str
    prefix: str
    ranks_per_node: list[int]
    link: str | None = None
    intra_link: str | None = None
    keeper: int | None = None  # rootless: the pid holding the user, mount and network namespaces
    made: list[str] = field(default_factory=list)  # the namespaces created, in order
    lost: list[int] = field(default_factory=list)  # nodes taken down by ``kill_node``: no job is placed on them
    cpus: list[str] = field(default_factory=list)  # each node's CPUs (taskset's list, "0" or "2-3"); []: all shared

    @property
    def nodes(self) -> list[str]:
        return [f"{self.prefix}-n{i}" for i in range(len(self.ranks_per_node))]

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def address(self, i: int) -> str:
        return f"198.18.0.{FIRST_HOST + i}"

    @property
    def live(self) -> list[int]:
        """The nodes a job may run on (not lost)."""
        return [i for i in range(len(self.ranks_per_node)) if i not in self.lost]

    @property
    def ranks(self) -> int:
        """The ranks of the live nodes."""
        return sum(self.ranks_per_node[i] for i in self.live)

    def host_prefix(self) -> list[str]:
        """What runs a command in the namespaces' world: nothing as root; rootless, enter the keeper's."""
        if self.keeper is None:
            return []
        return ["nsenter", "-t", str(self.keeper), "-U", "-m", "-n", "--preserve-credentials"]


def state_dir() -> Path:
    """Where clusters are described: one JSON file and one launch agent per cluster, per user."""
    return Path("/tmp") / f"parallel_lm-clusters-{os.getuid()}"


def state_file(name: str) -> Path:
    return state_dir() / f"{name}.json"


def load(name: str) -> Cluster:
    path = state_file(name)
    if not path.exists():
        raise ClusterError(f"no cluster named {name!r} is up: start one with "
                           f"python -m parallel_lm.cluster up --nodes N --ranks-per-node K"
                           + ("" if name == "default" else f" --name {name}"))
    return Cluster(**json.loads(path.read_text()))


def save(cluster: Cluster) -> None:
    state_dir().mkdir(mode=0o700, exist_ok=True)
    tmp = state_file(cluster.name).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(cluster), indent=1))
    os.replace(tmp, state_file(cluster.name))


def agent_path(cluster: Cluster) -> Path:
    return state_dir() / f"{cluster.name}.agent"


def hosts_path(cluster: Cluster) -> Path:
    return state_dir() / f"{cluster.name}.hosts"
