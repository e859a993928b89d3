"""Average a torch tensor over MPI ranks with an explicit algorithm, without copying it.

    mpiexec -n 4 python examples/allreduce_torch_tensor.py --algorithm rabenseifner

The pattern data-parallel training uses for each gradient bucket: view the
tensor's memory as a NumPy (or, on a GPU, CuPy) array, all-reduce that
array in place, and the tensor holds the result.
"""
import click
import torch
from mpi4py import MPI

from parallel_lm.comm import ALGORITHMS, allreduce_mean
from parallel_lm.comm.buffers import as_array
from parallel_lm.runtime import main_guard, print0, world


@click.command()
@click.option("--algorithm", type=click.Choice(list(ALGORITHMS)), default="ring", show_default=True)
@click.option("--numel", default=1_000_000, show_default=True, help="Elements in the tensor.")
def main(algorithm, numel):
    comm = world()
    rank, p = comm.Get_rank(), comm.Get_size()
    grad = torch.full((numel,), float(rank))             # rank r's "gradient": all r
    allreduce_mean(as_array(grad), comm, algorithm)       # in place, through a zero-copy view
    expected = (p - 1) / 2                                # mean of 0..p-1
    ok = comm.allreduce(bool(torch.all(grad == expected)), op=MPI.LAND)
    print0(f"{algorithm}: mean over {p} ranks = {grad[0].item()} (expected {expected}); all ranks agree: {ok}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main_guard(main)
