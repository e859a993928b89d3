"""A simulated cluster: the unchanged collectives on P virtual ranks, timed from a network profile."""
from .network import KINDS, Topology, topology_from_profile
from .replay import Deadlock
from .run import OPS, SimResult, simulate

__all__ = ["KINDS", "OPS", "Deadlock", "SimResult", "Topology", "simulate", "topology_from_profile"]
