"""Run under mpiexec -n K: ring attention (parallel/context_parallel.py) against torch's causal attention.

Every rank builds the same random Q, K, V over the whole sequence, takes its
tokens (chunks r and 2K-1-r), runs RingAttention forward and backward, and
compares its output and its gradients of Q, K and V with the slices of one
process's full attention. Reports one case per sequence length and tensor (report.py), e.g. ``T16 dK``, with
its largest error over the ranks; a case passes below 1e-5.
"""
import torch
import torch.nn.functional as F
from mpi4py import MPI
from report import case

from parallel_lm.parallel.context_parallel import ContextParallel
from parallel_lm.runtime import start_script

start_script()
comm = MPI.COMM_WORLD
P = comm.Get_size()
for T, B, H, D in ((4 * P, 2, 3, 8), (16 * P, 1, 2, 16)):
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, requires_grad=True) for _ in range(3))
    grad = torch.randn(B, H, T, D)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref.backward(grad)
    cp = ContextParallel(comm, T)
    mine = cp.positions
    ql, kl, vl = (t.detach()[:, :, mine].clone().requires_grad_() for t in (q, k, v))
    out = cp.attention(ql, kl, vl)
    out.backward(grad[:, :, mine])
    for what, got, want in (("output", out, ref[:, :, mine]), ("dQ", ql.grad, q.grad[:, :, mine]),
                            ("dK", kl.grad, k.grad[:, :, mine]), ("dV", vl.grad, v.grad[:, :, mine])):
        error = comm.allreduce(float((got - want).detach().abs().max()), op=MPI.MAX)
        if comm.Get_rank() == 0:
            case(f"T{T} {what}", error < 1e-5, f"T {T} on {P} ranks, {what}: max error {error:.2e}", error=error)
