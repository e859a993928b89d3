"""What the checkers share: every rank's data drawn from one generator, and hints that name the element."""
from __future__ import annotations

import numpy as np


FRACTION = 2.0 ** -30  # below float32's resolution at these magnitudes, far above float64's


def every_rank(rng, p: int, n: int) -> list[np.ndarray]:
    """p float64 arrays of n small integers plus multiples of 2**-30.

    Every sum is exact in float64, in any order of addition, so results can be
    compared bitwise; none survives a trip through float32, so code that sends
    float32 chunks of float64 data is caught.
    """
    return [rng.integers(-8, 9, n) + rng.integers(0, 1 << 10, n) * FRACTION for _ in range(p)]


def mismatch(got, want, what: str, rtol: float = 0.0, atol: float = 0.0) -> str | None:
    """None if ``got`` equals ``want`` (within rtol/atol), else which element differs and how."""
    if got is None:
        return f"{what}: got None, expected an array of shape {np.shape(want)}"
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        return f"{what}: got shape {got.shape}, expected {want.shape}"
    bad = ~np.isclose(got, want, rtol=rtol, atol=atol) if (rtol or atol) else got != want
    if not np.any(bad):
        return None
    i = tuple(int(x) for x in np.argwhere(bad)[0])
    where = i[0] if len(i) == 1 else i
    return f"{what}: element {where} is {got[i].item()!r}, expected {want[i].item()!r} ({int(bad.sum())} of {bad.size} differ)"


def in_place(buf, want, what: str) -> str | None:
    """None if the caller's array ``buf`` now holds ``want``: the task said to work in place."""
    failure = mismatch(buf, want, f"your {what} after the call")
    return failure and (f"{failure}. The task says in place: the caller's array must hold the result "
                        "(a function that returns a new array leaves it as it was)")


def unchanged(buf, original, what: str) -> str | None:
    """None if the caller's array ``buf`` still equals ``original``: the task did not say it may change."""
    failure = mismatch(buf, original, f"your {what} after the call")
    return failure and (f"{failure}. The task does not say {what} may change, and the caller may still need it: "
                        "write into an array of your own")


def within(got, want: float, what: str, rtol: float) -> str | None:
    """None if the number ``got`` is within ``rtol`` of ``want``, relative."""
    if got is None or not np.isfinite(got):
        return f"{what}: got {got!r}, expected {want:.6g}"
    return None if abs(got - want) <= rtol * abs(want) else f"{what}: got {got:.6g}, expected {want:.6g}"


def at_most(count: int, limit: int, what: str, formula: str) -> str | None:
    return None if count <= limit else f"{what}: {count}, but the formula {formula} allows {limit}"


def exactly(count: int, want: int, what: str, formula: str) -> str | None:
    return None if count == want else f"{what}: {count}, expected {want} = {formula}"


def first(*failures) -> str | None:
    return next((f for f in failures if f), None)
