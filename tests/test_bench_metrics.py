"""Bandwidth arithmetic as nccl-tests defines it, and size parsing."""
import pytest

from parallel_lm.bench.metrics import algbw_GBps, bus_factor, busbw_GBps, sweep
from parallel_lm.sizes import format_size, parse_size


def test_bus_factors_match_nccl_tests():
    assert bus_factor("allreduce", 4) == pytest.approx(1.5)
    assert bus_factor("allreduce", 1) == 0
    assert bus_factor("reduce_scatter", 8) == pytest.approx(7 / 8)
    assert bus_factor("all_gather", 2) == pytest.approx(0.5)
    assert bus_factor("broadcast", 8) == 1
    with pytest.raises(ValueError, match="unknown op"):
        bus_factor("alltoall", 4)


def test_bandwidths():
    assert algbw_GBps(2_000_000_000, 2.0) == pytest.approx(1.0)
    # 64 MiB all-reduce in 50 ms on 4 ranks
    assert busbw_GBps("allreduce", 64 << 20, 0.05, 4) == pytest.approx((64 << 20) / 0.05 / 1e9 * 1.5)


def test_sizes():
    assert parse_size("64M") == 64 << 20 and parse_size("4k") == 4096 and parse_size("100") == 100
    assert format_size(64 << 20) == "64M" and format_size(100) == "100"
    with pytest.raises(ValueError, match="cannot read size"):
        parse_size("12 parsecs")
    assert sweep(1024, 16384, 4) == [1024, 4096, 16384]
    with pytest.raises(ValueError, match="factor"):
        sweep(1, 8, 1)
