"""The local reduction every algorithm uses."""
import pytest


def test_float16_add_through_torch_rounds_exactly_like_numpy():
    import sys

    import numpy as np
    torch = pytest.importorskip("torch")
    from parallel_lm.comm.collectives.local import add_into
    rng = np.random.default_rng(0)
    a = rng.standard_normal(100_003).astype(np.float16) * np.float16(100)
    b = rng.standard_normal(100_003).astype(np.float16)
    expected = a + b  # NumPy's own float16 add
    got = a.copy()
    assert "torch" in sys.modules and torch is not None
    add_into(got, b)  # takes torch's kernel
    assert np.array_equal(got.view(np.uint16), expected.view(np.uint16))
