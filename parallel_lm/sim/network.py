"""The simulated cluster's wiring: which alpha and beta a message between two ranks pays.

- flat: every pair of ranks pays the same alpha and beta (the closed-form
  formulas' world; the simulator must reproduce them exactly there);
- hierarchical: ranks are grouped into nodes of ``ranks_per_node``;
  messages inside a node use the fast level, between nodes the slow one;
- switch: hierarchical, and each node reaches the switch through
  ``rails`` ports (one by default; a DGX has one NIC per GPU), local rank
  i using port i mod rails, so messages leaving (or entering) a node
  through the same port at the same time queue for it: k of them take k
  times as long. The formulas assume every message has a link to itself;
  this is where they go wrong.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..costmodel.formulas import Network

KINDS = ("flat", "hierarchical", "switch")


@dataclass(frozen=True)
class Topology:
    intra: Network  # the whole network when flat
    inter: Network | None = None
    ranks_per_node: int = 0
    shared_port: bool = False
    rails: int = 1  # ports per node with a shared switch port; local rank i uses port i mod rails

    def __post_init__(self):
        if (self.inter is None) != (self.ranks_per_node == 0):
            raise ValueError("a hierarchical topology needs both an inter-node network and ranks_per_node")
        if self.ranks_per_node < 0:
            raise ValueError(f"ranks_per_node must be positive, got {self.ranks_per_node}")
        if self.rails < 1:
            raise ValueError(f"rails must be positive, got {self.rails}")
        if self.shared_port and self.inter is None:
            raise ValueError("a shared switch port needs nodes: give ranks_per_node and an inter-node network")

    @classmethod
    def flat(cls, net: Network) -> Topology:
        return cls(net)

    @property
    def kind(self) -> str:
        return "switch" if self.shared_port else "hierarchical" if self.inter is not None else "flat"

    @property
    def gamma_s_per_byte(self) -> float:
        return self.intra.gamma_s_per_byte

    def node(self, rank):
        return rank // self.ranks_per_node

    def port(self, rank):
        """(node, rail) a rank's inter-node messages go through."""
        return rank // self.ranks_per_node, rank % self.ranks_per_node % self.rails

    def link(self, src, dst):
        """(alpha_s, beta_s_per_byte) for messages src -> dst; scalars or arrays."""
        if self.inter is None:
            return self.intra.alpha_s, self.intra.beta_s_per_byte
        same = self.node(src) == self.node(dst)
        if isinstance(same, (bool, np.bool_)):
            net = self.intra if same else self.inter
            return net.alpha_s, net.beta_s_per_byte
        return (np.where(same, self.intra.alpha_s, self.inter.alpha_s),
                np.where(same, self.intra.beta_s_per_byte, self.inter.beta_s_per_byte))

    def describe(self, ranks: int) -> str:
        if self.inter is None:
            return f"flat, {ranks} ranks"
        nodes = -(-ranks // self.ranks_per_node)
        port = (f", {self.rails} shared port(s) per node" if self.shared_port else "")
        return f"{nodes} nodes x {self.ranks_per_node} ranks{port}"


def topology_from_profile(profile, kind: str = "", ranks_per_node: int | None = None,
                          message_bytes: float | None = None) -> Topology:
    """The profile's cluster: flat for one-level profiles, hierarchical for two-level ones by default.

    ``kind`` "flat" uses only the profile's first level; "switch" adds the
    shared node port. ``ranks_per_node`` overrides the profile's.
    """
    kind = kind or ("hierarchical" if profile.inter_node else "flat")
    if kind not in KINDS:
        raise ValueError(f"unknown topology {kind!r}; valid: {', '.join(KINDS)}")
    intra = profile.network(message_bytes)
    if kind == "flat":
        return Topology.flat(intra)
    rpn = ranks_per_node or profile.ranks_per_node
    if profile.inter_node is None or not rpn:
        raise ValueError(f"topology {kind!r} needs a two-level profile (with inter_node and ranks_per_node), "
                         f"and {profile.name!r} has one level: use --topology flat or a profile such as dgx-h100-ndr")
    return Topology(intra, profile.inter_node, rpn, shared_port=kind == "switch", rails=profile.rails)
