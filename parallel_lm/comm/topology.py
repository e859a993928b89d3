"""Rank arithmetic for the collectives, in one place.

Every algorithm asks these objects who its neighbours and partners are
instead of scattering ``(rank + 1) % size`` through the code.

- ``chunk_offsets(n, p)``: how an n-element buffer is cut into p chunks.
- ``Ring``: left/right neighbours and which chunk moves on which step.
- ``Pof2``: the standard way (MPICH, Thakur et al. 2005) of running a
  power-of-two algorithm on any p: the largest power of two ``pof2 <= p``
  ranks take part, and the ``rem = p - pof2`` extra ranks fold their data
  into a neighbour first and get the result back at the end.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def chunk_offsets(n: int, p: int) -> np.ndarray:
    """Offsets of p nearly equal chunks of n elements (int64 array of length p + 1).

    The first ``n % p`` chunks get one extra element, so chunk sizes differ
    by at most one and chunks may be empty when n < p. An array rather than
    a list so that ``offs[chunk]`` also works when ``chunk`` holds one value
    per rank: the simulator (``parallel_lm.sim``) runs an algorithm once for
    a whole group of ranks.
    """
    base, extra = divmod(n, p)
    i = np.arange(p + 1, dtype=np.int64)
    return i * base + np.minimum(i, extra)


@dataclass(frozen=True)
class Ring:
    """Rank r sends to r + 1 and receives from r - 1 (mod p)."""

    rank: int
    size: int

    @property
    def right(self) -> int:
        return (self.rank + 1) % self.size

    @property
    def left(self) -> int:
        return (self.rank - 1) % self.size

    def reduce_scatter_chunks(self, step: int) -> tuple[int, int]:
        """(chunk sent, chunk received) on a reduce-scatter step.

        Chosen so that after p - 1 steps rank r holds the full sum of chunk r.
        """
        p, r = self.size, self.rank
        return (r - step - 1) % p, (r - step - 2) % p

    def all_gather_chunks(self, step: int) -> tuple[int, int]:
        """(chunk sent, chunk received) on an all-gather step; r starts with chunk r."""
        p, r = self.size, self.rank
        return (r - step) % p, (r - step - 1) % p


@dataclass(frozen=True)
class Pof2:
    """Fold p ranks onto the largest power of two pof2 <= p.

    Ranks below ``2 * rem`` pair up: the even one hands its data to the odd
    one (rank + 1) and sits out; the odd one continues as ``newrank = rank // 2``.
    Ranks from ``2 * rem`` on continue as ``newrank = rank - rem``.
    """

    rank: int
    size: int

    @property
    def pof2(self) -> int:
        return 1 << (self.size.bit_length() - 1)

    @property
    def rem(self) -> int:
        return self.size - self.pof2

    @property
    def folded_out(self) -> bool:
        """True for the even ranks below 2 * rem, which sit out the pof2 phase."""
        return self.rank < 2 * self.rem and self.rank % 2 == 0

    @property
    def fold_partner(self) -> int | None:
        """The rank this one swaps data with when folding, or None."""
        if self.rank >= 2 * self.rem:
            return None
        return self.rank + 1 if self.rank % 2 == 0 else self.rank - 1

    @property
    def newrank(self) -> int:
        """Rank inside the power-of-two group (-1 when folded out)."""
        if self.folded_out:
            return -1
        return self.rank // 2 if self.rank < 2 * self.rem else self.rank - self.rem

    def real_rank(self, newrank: int) -> int:
        """The communicator rank that plays ``newrank`` in the pof2 phase."""
        return 2 * newrank + 1 if newrank < self.rem else newrank + self.rem

    def represented(self, newrank: int) -> list[int]:
        """The real ranks whose data ``newrank`` carries (two when it absorbed a fold)."""
        if newrank < self.rem:
            return [2 * newrank, 2 * newrank + 1]
        return [newrank + self.rem]

    def partner(self, mask: int) -> int:
        """Real rank of the pof2 partner at distance ``mask`` (newrank ^ mask)."""
        return self.real_rank(self.newrank ^ mask)

    def block_offsets(self, chunk_offs: list[int]) -> list[int]:
        """Offsets of the pof2 blocks when newrank i owns its represented ranks' chunks.

        ``chunk_offs`` cuts the buffer into p chunks (one per real rank); the
        result cuts it into pof2 contiguous blocks, so a pof2 algorithm ends
        with each real rank's chunk on the newrank that carries it.
        """
        return [chunk_offs[self.represented(i)[0]] for i in range(self.pof2)] + [chunk_offs[-1]]
