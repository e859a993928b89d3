"""A simulated cluster: the unchanged collectives on P virtual ranks, timed from a network profile."""
from .network import KINDS, Topology, topology_from_profile
from .replay import Deadlock
from .run import OPS, SimResult, collective_time_s, simulate

__all__ = ["KINDS", "OPS", "Deadlock", "SimResult", "Topology", "collective_time_s", "simulate", "topology_from_profile"]
