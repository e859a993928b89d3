"""Run under mpiexec -n K: ring attention (parallel/context_parallel.py) against torch's causal attention.

Every rank builds the same random Q, K, V over the whole sequence, takes its
tokens (chunks r and 2K-1-r), runs RingAttention forward and backward, and
compares its output and its gradients of Q, K and V with the slices of one
process's full attention. Prints "RING K ranks: max error E"; exits 1 above 1e-5.
"""
import sys

import torch
import torch.nn.functional as F
from mpi4py import MPI

from parallel_lm.parallel.context_parallel import ContextParallel
from parallel_lm.runtime import install_abort_hook

install_abort_hook()
comm = MPI.COMM_WORLD
P = comm.Get_size()
worst = 0.0
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
    for got, want in ((out, ref[:, :, mine]), (ql.grad, q.grad[:, :, mine]), (kl.grad, k.grad[:, :, mine]),
                      (vl.grad, v.grad[:, :, mine])):
        worst = max(worst, float((got - want).detach().abs().max()))
worst = comm.allreduce(worst, op=MPI.MAX)
if comm.Get_rank() == 0:
    print(f"RING {P} ranks: max error {worst:.2e}", flush=True)
sys.exit(0 if worst < 1e-5 else 1)
