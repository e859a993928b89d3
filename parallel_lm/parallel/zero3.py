"""ZeRO-3 (FSDP style): the parameters themselves are sharded; each layer is gathered only while it runs.

Each rank keeps 1/N_d of every layer's parameters (``shard_values``), of
their gradients and of the optimizer state: (2 + 2 + K)·Ψ/N_d bytes in
Rajbhandari et al.'s mixed-precision accounting, (4 + 4 + 12)·Ψ/N_d here in
fp32 with AdamW's master copy and two moments. One transformer block is
one unit; for each micro-batch:

    forward:  all-gather block i   (while block i-1 computes: prefetched)   run it   free it
    backward: all-gather block i   (prefetched behind block i+1's backward)  run it   reduce-scatter
              its gradient into the shard                                              free it

so a block's parameters live only while it runs, plus the one being
prefetched: 2 all-gathers and 1 reduce-scatter of Ψ per micro-batch, 1.5x
the bytes of data parallelism's all-reduce (Rajbhandari et al. 2020,
section 7.2.2). The embeddings and the final LayerNorm (the stage's
"root") are gathered at their first use and freed once their gradient is
reduce-scattered at the end of the step, after a pipeline has summed the
tied embedding between its first and last stage. The optimizer updates
the shard; nothing is all-gathered after it: the next forward gathers.

Gathers run on a communication thread over a duplicate of the data-parallel
communicator, so the next block's all-gather overlaps this block's compute;
every rank of the group asks for the same blocks in the same order (they run
the same schedule), so the gathers match. Freeing shrinks the unit's storage
to zero bytes; the parameters stay views of it, and the tensors autograd
saved (the weights a Linear keeps) see the values again once it is refilled
before backward. Filling writes through ``.data``, which autograd does not
count as a modification.

Built on zero.py's ``Zero`` (stage-2 reduce-scatter into shards), with the layers as its
buckets; zero.py's ``ShardedOptimizer`` updates ``shard_values`` as for ZeRO-1/2.
"""
from __future__ import annotations

import contextlib
import ctypes
import queue
import threading
import time

import numpy as np
import torch

from ..comm import all_gather
from ..comm.buffers import as_array
from ..comm.topology import chunk_offsets
from .zero import Zero


def _unpinned_view(t: torch.Tensor):
    """An array over ``t``'s memory that leaves its storage resizable (``Tensor.numpy()`` would pin it)."""
    if t.is_cuda:
        return as_array(t.data)
    raw = (ctypes.c_char * (t.numel() * t.element_size())).from_address(t.data_ptr())
    return np.frombuffer(raw, dtype=np.float32)


class Zero3(Zero):
    """Sharded parameters, gradients and optimizer state of ``stage``'s layers over ``comm``."""

    def __init__(self, stage, comm, algorithm: str = "ring", comm_dtype: str = "fp32", timeline=None,
                 prefetch: bool = True):
        blocks = [b for chunk in stage.chunks for b in chunk.blocks]
        groups = [[p for p in b.parameters() if p.requires_grad] for b in blocks]
        in_blocks = {id(p) for g in groups for p in g}
        root = [p for p in stage.parameters() if p.requires_grad and id(p) not in in_blocks]
        super().__init__([p for g in groups for p in g] + root, comm, 2, 0.0, algorithm, comm_dtype, timeline,
                         deferred=root, groups=groups)
        self.stage = 3  # shard_values (Zero's copy of this rank's chunk) are now the persistent parameters
        self.full = []  # each unit's gathered parameters; storage of 0 bytes while freed
        for a, b, members in self.buckets:
            full = self.flat[a:b].clone()
            offset = 0
            for p in members:
                p.data = full[offset: offset + p.numel()].view_as(p)
                offset += p.numel()
            self.full.append(full)
        self.flat = None  # the whole model is no longer held anywhere
        self.ready = [False] * len(self.buckets)
        self.live_bytes = self.peak_live_bytes = 0
        self.gather_s = self.wait_s = 0.0  # all-gather seconds; those the main thread spent on them
        self.gathered = self.scattered = 0  # elements all-gathered and reduce-scattered so far (whole units)
        self.error = None
        for i in range(len(self.buckets)):
            self._free(i)
        self._order(stage, blocks)
        self.pending = {}  # unit -> threading.Event of a prefetch on the communication thread
        self.prefetch = prefetch and self.dp > 1
        if self.prefetch:
            self.thread_comm = comm.Dup()
            self.jobs = queue.Queue()
            self.thread = threading.Thread(target=self._serve, name="zero3-gather", daemon=True)
            self.thread.start()

    def _order(self, stage, blocks) -> None:
        """Hooks on every block and chunk; each block's neighbour in forward and in backward (same chunk)."""
        self.next_forward, self.next_backward = {}, {}
        index = {id(b): i for i, b in enumerate(blocks)}
        for chunk in stage.chunks:
            ids = [index[id(b)] for b in chunk.blocks]
            self.next_forward.update(zip(ids, ids[1:]))
            self.next_backward.update(zip(ids[1:], ids))
            chunk.register_forward_pre_hook(lambda module, args: self._gather_root())
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(lambda module, args, i=i: self._before(i, self.next_forward))
            block.register_forward_hook(lambda module, args, out, i=i: self._after_forward(i, out))

    # -- gathering and freeing -------------------------------------------------------------------
    def _fill(self, i: int, comm) -> None:
        """Allocate unit i's storage, put this rank's shard in it, all-gather the others'."""
        a, b, _ = self.buckets[i]
        full = self.full[i]
        t0 = time.perf_counter()
        full.untyped_storage().resize_((b - a) * full.element_size())
        c = chunk_offsets(b - a, self.dp)
        full.data[c[self.rank]: c[self.rank + 1]] = self.shard_values[self.slices[i]]
        all_gather(_unpinned_view(full), comm, self.ag_alg)
        self.gather_s += time.perf_counter() - t0
        self.gathered += b - a
        if self.timeline:
            self.timeline.add(f"all-gather unit {i}", t0, time.perf_counter() - t0,
                              thread="main" if comm is self.comm else "comm")

    def _free(self, i: int) -> None:
        self.full[i].untyped_storage().resize_(0)
        if self.ready[i]:
            self.live_bytes -= self.full[i].numel() * self.full[i].element_size()
        self.ready[i] = False

    def _ensure(self, i: int) -> None:
        """Unit i gathered: wait for its prefetch, or gather it now."""
        if self.ready[i]:
            return
        t0 = time.perf_counter()
        done = self.pending.pop(i, None)
        if done is None and self.prefetch:
            done = self._submit(i)
        if done is not None:
            done.wait()
            if self.error is not None:
                raise RuntimeError("a ZeRO-3 all-gather failed on the communication thread") from self.error
        else:
            self._fill(i, self.comm)
        self.wait_s += time.perf_counter() - t0
        self.ready[i] = True
        self.live_bytes += self.full[i].numel() * self.full[i].element_size()
        self.peak_live_bytes = max(self.peak_live_bytes, self.live_bytes)

    def _submit(self, i: int) -> threading.Event:
        done = threading.Event()
        self.jobs.put((i, done))
        return done

    def _serve(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            i, done = job
            try:
                if self.error is None:
                    self._fill(i, self.thread_comm)
            except BaseException as e:  # raised on the main thread by _ensure
                self.error = e
            finally:
                done.set()

    def _before(self, i: int, following: dict) -> None:
        """Before unit i runs (forward, or backward through it): gather it, start gathering the next one."""
        self._ensure(i)
        j = following.get(i)
        if self.prefetch and j is not None and not self.ready[j] and j not in self.pending:
            self.pending[j] = self._submit(j)

    def _after_forward(self, i: int, out) -> None:
        if torch.is_grad_enabled() and out.requires_grad:
            out.register_hook(lambda grad: self._before(i, self.next_backward))
        self._free(i)

    def _gather_root(self) -> None:
        for i in range(self.first_deferred, len(self.buckets)):
            self._ensure(i)

    def _send(self, i: int) -> None:
        """A unit's gradient is complete: reduce-scatter it into the shard, free the unit."""
        super()._send(i)
        self.scattered += self.buckets[i][1] - self.buckets[i][0]
        self._free(i)

    @contextlib.contextmanager
    def full_parameters(self):
        """Every unit gathered inside the block (a checkpoint's full model); freed after. Collective.
        Not counted in ``peak_live_bytes``, which is what training holds."""
        peak = self.peak_live_bytes
        for i in range(len(self.buckets)):
            self._ensure(i)
        try:
            yield
        finally:
            for i in range(len(self.buckets)):
                self._free(i)
            self.peak_live_bytes = peak

    # -- the end of a step ---------------------------------------------------------------------
    def finish(self, tie=None) -> tuple[float, float]:
        """After backward: the root's gradients reduce-scattered (``Zero.finish``). Returns (comm_s,
        exposed_comm_s), with this step's all-gathers and the main thread's waits for them."""
        comm_s, exposed = super().finish(tie)
        return comm_s + self.gather_s, exposed + self.wait_s

    def zero_grad(self) -> None:
        super().zero_grad()
        self.gather_s = self.wait_s = 0.0

    def publish(self) -> float:
        """Nothing to send: the optimizer updated ``shard_values`` in place, and the next forward gathers them."""
        return 0.0

    def memory(self) -> dict:
        return {"params": self.shard_values.numel() * 4, "grads": self.grad_shard.numel() * 4,
                "bucket_in_flight": self.peak_bucket_bytes, "live_layers": self.peak_live_bytes}

    def close(self) -> None:
        if self.prefetch:
            self.jobs.put(None)
            self.thread.join()
            self.thread_comm.Free()
            self.prefetch = False

    def abandon(self) -> None:
        if self.prefetch:
            self.jobs.put(None)  # the thread ends once its revoked call returns; nothing collective here
            self.prefetch = False
