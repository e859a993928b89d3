"""The dp x cp x tp x pp grid: every rank in exactly one group of each kind, and clear errors for bad layouts."""
import itertools

import pytest

from parallel_lm.config import TrainConfig
from parallel_lm.config_checks import validate
from parallel_lm.model import GPTConfig
from parallel_lm.parallel.grid import Grid


@pytest.mark.parametrize("dp,tp,pp,cp", [(1, 1, 1, 1), (8, 1, 1, 1), (2, 2, 2, 1), (1, 4, 2, 1), (3, 1, 2, 1),
                                         (2, 3, 1, 1), (2, 1, 1, 2), (1, 2, 2, 2), (3, 2, 1, 2)])
def test_groups_partition_the_world(dp, tp, pp, cp):
    world = dp * cp * tp * pp
    grids = [Grid.for_world(world, r, dp, tp, pp, cp) for r in range(world)]
    for g in grids:
        assert g.world_rank(g.dp_rank, g.tp_rank, g.pp_rank, g.cp_rank) == g.rank
        assert g.replica_rank == g.dp_rank * cp + g.cp_rank
        assert g.rank in g.tp_group() and g.rank in g.replica_group() and g.rank in g.pp_group()
        assert len(g.tp_group()) == tp and len(g.replica_group()) == dp * cp and len(g.pp_group()) == pp
    for kind in ("tp_group", "replica_group", "pp_group"):
        groups = {tuple(getattr(g, kind)()) for g in grids}
        assert sorted(itertools.chain(*groups)) == list(range(world))  # disjoint and covering
    assert grids[0].tp_group() == list(range(tp))  # tensor-parallel ranks are consecutive
    # the cp ranks that share a sequence are consecutive replicas with one dp_rank: the same rows of the batch
    for g in grids:
        sharing = [h for h in grids if h.dp_rank == g.dp_rank and (h.tp_rank, h.pp_rank) == (g.tp_rank, g.pp_rank)]
        assert sorted(h.cp_rank for h in sharing) == list(range(cp))


def test_dp_defaults_to_what_is_left():
    assert Grid.for_world(8, 0, tp=2, pp=2).dp == 2
    grid = Grid.for_world(16, 0, tp=2, pp=2, cp=2)  # dp: the ways the batch is cut, as in the cost model
    assert (grid.dp, grid.cp, grid.replicas) == (2, 2, 4)


@pytest.mark.parametrize("world,dp,tp,pp,message", [
    (8, 3, 2, 2, "= 12, but the job has 8 ranks"),
    (6, None, 4, 1, "do not split into --tp 4 x --pp 1"),
    (4, 1, 0, 4, "must be >= 1"),
])
def test_bad_layouts_name_the_fix(world, dp, tp, pp, message):
    with pytest.raises(ValueError, match=message):
        Grid.for_world(world, 0, dp, tp, pp)


@pytest.mark.parametrize("world,dp,cp,message", [
    (6, None, 4, "--cp 4 must divide the 6 ranks left after --tp 1 x --pp 1: run a multiple of 4 ranks"),
    (8, 3, 2, r"--dp 3 x --cp 2 x --tp 1 x --pp 1 = 6, but the job has 8 ranks"),
])
def test_bad_context_layouts_name_the_fix(world, dp, cp, message):
    with pytest.raises(ValueError, match=message):
        Grid.for_world(world, 0, dp, cp=cp)


@pytest.mark.parametrize("n_layer,n_head,n_embd,message", [
    (4, 4, 64, None),
    (4, 6, 60, "divide the 6 attention heads: use --tp among 1, 2, 3, 6"),
    (3, 4, 64, "divide the 3 layers"),
])
def test_the_model_must_cut_evenly(n_layer, n_head, n_embd, message):
    cfg = TrainConfig(model=GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd), tp=4, pp=2,
                      global_batch_size=8)
    if message is None:
        validate(cfg, 8)
        return
    with pytest.raises(ValueError, match=message):
        validate(cfg, 8)


def test_the_vocabulary_must_cut_evenly():
    cfg = TrainConfig(model=GPTConfig(n_layer=2, n_head=6, n_embd=60), tp=3, global_batch_size=8)
    with pytest.raises(ValueError, match=r"--tp 3 must divide the vocabulary \(256\)"):
        validate(cfg, 3)
