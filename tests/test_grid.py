"""The dp x tp x pp grid: every rank in exactly one group of each kind, and clear errors for bad layouts."""
import itertools

import pytest

from parallel_lm.parallel.grid import Grid


@pytest.mark.parametrize("dp,tp,pp", [(1, 1, 1), (8, 1, 1), (2, 2, 2), (1, 4, 2), (3, 1, 2), (2, 3, 1)])
def test_groups_partition_the_world(dp, tp, pp):
    world = dp * tp * pp
    grids = [Grid.for_world(world, r, dp, tp, pp) for r in range(world)]
    for g in grids:
        assert g.world_rank(g.dp_rank, g.tp_rank, g.pp_rank) == g.rank
        assert g.rank in g.tp_group() and g.rank in g.dp_group() and g.rank in g.pp_group()
        assert len(g.tp_group()) == tp and len(g.dp_group()) == dp and len(g.pp_group()) == pp
    for kind in ("tp_group", "dp_group", "pp_group"):
        groups = {tuple(getattr(g, kind)()) for g in grids}
        assert sorted(itertools.chain(*groups)) == list(range(world))  # disjoint and covering
    assert grids[0].tp_group() == list(range(tp))  # tensor-parallel ranks are consecutive


def test_dp_defaults_to_what_is_left():
    assert Grid.for_world(8, 0, tp=2, pp=2).dp == 2


@pytest.mark.parametrize("world,dp,tp,pp,message", [
    (8, 3, 2, 2, "= 12, but the job has 8 ranks"),
    (6, None, 4, 1, "do not split into --tp 4 x --pp 1"),
    (4, 1, 0, 4, "must be >= 1"),
])
def test_bad_layouts_name_the_fix(world, dp, tp, pp, message):
    with pytest.raises(ValueError, match=message):
        Grid.for_world(world, 0, dp, tp, pp)


def test_the_model_must_cut_evenly():
    grid = Grid.for_world(8, 0, 1, 4, 2)
    grid.check_model(n_layer=4, n_head=4, n_embd=64, vocab_size=256)
    with pytest.raises(ValueError, match="divide the 6 attention heads: use --tp among 1, 2, 3, 6"):
        grid.check_model(n_layer=4, n_head=6, n_embd=60, vocab_size=256)
    with pytest.raises(ValueError, match="divide the 3 layers"):
        grid.check_model(n_layer=3, n_head=4, n_embd=64, vocab_size=256)
