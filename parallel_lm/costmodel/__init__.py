"""Closed-form costs of the collectives (no MPI, no torch): see formulas.py."""
from .formulas import COSTS, Cost, Network, bus_factor

__all__ = ["COSTS", "Cost", "Network", "bus_factor"]
