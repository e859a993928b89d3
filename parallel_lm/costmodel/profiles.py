"""Network profiles: alpha, beta and gamma with where each number came from.

A profile is a JSON file: ``alpha_s``, ``beta_s_per_byte``,
``gamma_s_per_byte``, a ``sources`` entry for each, and optionally
- ``overhead_s``: software time per message added to every alpha (what
  Python and scheduling add to MPI's latency on this machine);
- ``pieces`` and ``gamma_pieces``: piecewise fits from
  ``python -m parallel_lm.calibrate`` (latency, bandwidth and reduction
  speed change where MPI switches protocol and where data stops fitting
  in cache);
- ``ranks_per_node`` and ``inter_node`` (its own alpha, beta, sources):
  a two-level cluster, fast inside a node and slow between nodes;
- ``rails``: network ports (NICs) per node, each at inter_node's speed;
  a DGX has one per GPU, and NCCL runs one ring per rail (default 1).

``load_profile`` takes a shipped name (``PROFILE_NAMES``), a path, or an
inline ``alpha=2e-6,beta=1e-10[,gamma=1e-11]`` (seconds and seconds per
byte); an inline two-level cluster adds ``inter_alpha=..,inter_beta=..,
ranks_per_node=L``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from .calibration import Piece
from .formulas import Network

SHIPPED = Path(__file__).with_name("profiles")
PROFILE_NAMES = sorted(p.stem for p in SHIPPED.glob("*.json"))
INLINE_KEYS = {"alpha": "alpha_s", "beta": "beta_s_per_byte", "gamma": "gamma_s_per_byte"}
INLINE_INTER = {"inter_alpha": "alpha_s", "inter_beta": "beta_s_per_byte"}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    alpha_s: float
    beta_s_per_byte: float
    gamma_s_per_byte: float = 0.0
    overhead_s: float = 0.0  # software time per message on top of alpha (LogP's o), from calibration
    sources: dict = field(default_factory=dict)
    pieces: tuple[Piece, ...] = ()
    gamma_pieces: tuple[Piece, ...] = ()  # from calibration: reduction speed by buffer size (cache vs memory)
    ranks_per_node: int = 0
    rails: int = 1  # NICs per node, each carrying its own inter-node ring
    inter_node: Network | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def network(self, size_bytes: float | None = None) -> Network:
        """The (intra-node, or only) level; with piecewise fits, the pieces for that size.

        Calibration times messages and adds on buffers of the measured
        size, so a piece describes a regime of buffer size (in cache or in
        memory, eager or rendezvous protocol); predictions pass the size of
        the collective's buffer.
        """
        alpha, beta, gamma = self.alpha_s, self.beta_s_per_byte, self.gamma_s_per_byte
        if size_bytes is not None:
            if self.pieces:
                piece = _piece(self.pieces, size_bytes)
                alpha, beta = piece.alpha_s, piece.beta_s_per_byte
            if self.gamma_pieces:
                gamma = _piece(self.gamma_pieces, size_bytes).beta_s_per_byte
        return Network(alpha + self.overhead_s, beta, gamma)

    def slowest(self) -> Network:
        """The inter-node level when there is one, else the only level."""
        if self.inter_node:
            return Network(self.inter_node.alpha_s + self.overhead_s, self.inter_node.beta_s_per_byte,
                           self.inter_node.gamma_s_per_byte)
        return self.network()

    def emulated(self, net: Network) -> Profile:
        """This machine under network emulation: ``net``'s alpha and beta, this profile's overhead and gamma."""
        return replace(self, name=f"{self.name} as netem", alpha_s=net.alpha_s, beta_s_per_byte=net.beta_s_per_byte,
                       pieces=(), inter_node=None, ranks_per_node=0)


def _piece(pieces, size_bytes: float) -> Piece:
    return next((p for p in pieces if size_bytes < p.max_bytes), pieces[-1])


def _number(d: dict, key: str, where: str) -> float:
    value = d.get(key)
    if not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{where}: {key!r} must be a non-negative number of seconds (per byte), got {value!r}")
    return float(value)


def from_dict(d: dict, where: str = "profile") -> Profile:
    inter = None
    if "inter_node" in d:
        i = d["inter_node"]
        inter = Network(_number(i, "alpha_s", where + " inter_node"), _number(i, "beta_s_per_byte", where + " inter_node"),
                        _number(d, "gamma_s_per_byte", where) if "gamma_s_per_byte" in d else 0.0)
        if not isinstance(d.get("ranks_per_node"), int) or d["ranks_per_node"] < 1:
            raise ValueError(f"{where}: a profile with inter_node needs ranks_per_node, a positive integer")
    pieces = tuple(Piece(**p) for p in d.get("pieces", []))
    gamma_pieces = tuple(Piece(**p) for p in d.get("gamma_pieces", []))
    return Profile(
        name=str(d.get("name", where)), description=str(d.get("description", "")),
        alpha_s=_number(d, "alpha_s", where), beta_s_per_byte=_number(d, "beta_s_per_byte", where),
        gamma_s_per_byte=_number(d, "gamma_s_per_byte", where) if "gamma_s_per_byte" in d else 0.0,
        overhead_s=_number(d, "overhead_s", where) if "overhead_s" in d else 0.0,
        sources=dict(d.get("sources", {})), pieces=pieces, gamma_pieces=gamma_pieces,
        ranks_per_node=int(d.get("ranks_per_node", 0)) if inter else 0, inter_node=inter,
        rails=_rails(d, where), raw=d)


def _rails(d: dict, where: str) -> int:
    rails = d.get("rails", 1)
    if not isinstance(rails, int) or rails < 1:
        raise ValueError(f"{where}: 'rails' (NICs per node) must be a positive integer, got {rails!r}")
    return rails


def parse_inline(spec: str) -> Profile:
    usage = (f"bad profile {spec!r}: write alpha=SECONDS,beta=SECONDS_PER_BYTE[,gamma=SECONDS_PER_BYTE], "
             "and for two levels also inter_alpha=..,inter_beta=..,ranks_per_node=L")
    values, inter = {}, {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in {**INLINE_KEYS, **INLINE_INTER, "ranks_per_node": 0}:
            raise ValueError(usage)
        try:
            number = int(value) if key == "ranks_per_node" else float(value)
        except ValueError:
            raise ValueError(f"bad profile {spec!r}: {key}={value!r} is not a number") from None
        if key in INLINE_INTER:
            inter[INLINE_INTER[key]] = number
        else:
            values[INLINE_KEYS.get(key, key)] = number
    if "alpha_s" not in values or "beta_s_per_byte" not in values:
        raise ValueError(f"bad profile {spec!r}: give at least alpha= and beta=")
    if inter and len(inter) != 2:
        raise ValueError(usage)
    if inter:
        values["inter_node"] = inter
    return from_dict({"name": spec, "description": "given on the command line", **values}, spec)


def load_profile(spec: str) -> Profile:
    """A shipped profile by name, a JSON file by path, or inline ``alpha=..,beta=..``."""
    if "=" in spec:
        return parse_inline(spec)
    path = Path(spec)
    if not path.is_file():
        path = SHIPPED / f"{spec}.json"
    if not path.is_file():
        raise ValueError(f"no profile {spec!r}: give a JSON file, one of {', '.join(PROFILE_NAMES)}, "
                         "or alpha=SECONDS,beta=SECONDS_PER_BYTE")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"profile {path} is not valid JSON: {e}") from None
    return from_dict(d, str(path))
