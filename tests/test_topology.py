"""Rank arithmetic: chunking and the power-of-two fold."""
import pytest

from parallel_lm.comm.topology import Pof2, Ring, chunk_offsets


@pytest.mark.parametrize("n,p", [(0, 1), (0, 3), (1, 4), (7, 8), (10, 3), (1_000_003, 8)])
def test_chunks_cover_the_buffer_and_differ_by_at_most_one(n, p):
    offs = chunk_offsets(n, p)
    sizes = [offs[i + 1] - offs[i] for i in range(p)]
    assert offs[0] == 0 and offs[-1] == n and len(offs) == p + 1
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("p", range(1, 17))
def test_fold_maps_every_rank_exactly_once(p):
    topos = [Pof2(r, p) for r in range(p)]
    pof2 = topos[0].pof2
    assert pof2 <= p < 2 * pof2 and pof2 & (pof2 - 1) == 0
    active = [t for t in topos if not t.folded_out]
    assert sorted(t.newrank for t in active) == list(range(pof2))
    assert all(t.real_rank(t.newrank) == t.rank for t in active)
    carried = sorted(r for i in range(pof2) for r in topos[0].represented(i))
    assert carried == list(range(p))
    for t in topos:
        if t.fold_partner is not None:
            assert topos[t.fold_partner].fold_partner == t.rank


@pytest.mark.parametrize("p", [2, 3, 5, 8])
def test_ring_reduce_scatter_ends_with_own_chunk(p):
    for r in range(p):
        ring = Ring(r, p)
        assert ring.reduce_scatter_chunks(p - 2)[1] == r  # last chunk added is this rank's
        # what r sends on a step is what its right neighbour receives
        nxt = Ring(ring.right, p)
        assert all(ring.reduce_scatter_chunks(s)[0] == nxt.reduce_scatter_chunks(s)[1] for s in range(p - 1))
        assert all(ring.all_gather_chunks(s)[0] == nxt.all_gather_chunks(s)[1] for s in range(p - 1))


def test_block_offsets_group_the_chunks_of_represented_ranks():
    topo = Pof2(0, 6)  # pof2 4, rem 2: newrank 0 carries ranks 0,1; newrank 1 carries 2,3
    offs = chunk_offsets(12, 6)  # two elements per rank
    assert topo.block_offsets(offs) == [0, 4, 8, 10, 12]

