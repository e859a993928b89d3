"""Data parallelism by hand: every rank computes gradients on its shard, the ranks average them.

Two versions side by side, as picotron does:

- ``NaiveDataParallel``: after backward, one all-reduce per parameter. Easy
  to read; pays one latency per tensor and cannot overlap with backward.
- ``BucketedDataParallel``: gradients live in flat buckets (``param.grad``
  is a view into one, so nothing is copied), filled in the order backward
  produces them. A bucket is all-reduced as soon as its last gradient is
  accumulated, on a communication thread, while backward carries on with
  earlier layers (``overlap=True``); or all at the end (``overlap=False``).
  This is PyTorch DDP's design (Li et al., VLDB 2020), with our own
  collectives: ``--allreduce NAME`` takes any registry name.

Both follow the gradient-sync interface of ``grad_sync.py``. Gradient
accumulation: ``begin_backward(last=False)`` before every micro-batch's
backward but the last, so nothing is communicated until the gradients of
all micro-batches have summed up in the buckets.

``--comm-dtype fp16`` sends each gradient as float16 (half the bytes), after
dividing by the world size so the sum cannot overflow, and widens it back.
"""
from __future__ import annotations

import queue
import threading
import time

import torch

from ..comm import allreduce, allreduce_mean
from ..comm.buffers import as_array
from .grad_sync import GradSync


def average(flat: torch.Tensor, comm, algorithm: str, half: torch.Tensor | None = None) -> None:
    """``flat`` (fp32, contiguous) becomes its mean over ``comm``; through the fp16 buffer ``half`` if given.

    fp16: divide in float32 first, so a sum of K gradients cannot overflow float16's 65504.
    """
    if half is None:
        allreduce_mean(as_array(flat), comm, algorithm)
        return
    half.copy_(flat.div_(comm.Get_size()))
    allreduce(as_array(half), comm, algorithm)
    flat.copy_(half)


class NaiveDataParallel(GradSync):
    """One all-reduce per parameter gradient, after backward."""

    def __init__(self, params, comm, algorithm: str, comm_dtype: str = "fp32", timeline=None):
        super().__init__(params)
        self.comm, self.algorithm, self.comm_dtype, self.timeline = comm, algorithm, comm_dtype, timeline

    def finish(self, tie=None) -> tuple[float, float]:
        """Average every gradient over the ranks, then ``tie()``; returns (comm_s, exposed_comm_s)."""
        t0 = time.perf_counter()
        for p in self.params:
            if p.grad is None:  # a parameter this step did not reach: its gradient is zero
                p.grad = torch.zeros_like(p)
            half = torch.empty_like(p.grad, dtype=torch.float16).view(-1) if self.comm_dtype == "fp16" else None
            average(p.grad.view(-1), self.comm, self.algorithm, half)
        spent = time.perf_counter() - t0
        if self.timeline:
            self.timeline.add("allreduce (per parameter)", t0, spent)
        if tie:
            tie()
        return spent, spent


def bucket_groups(params_in_backward_order, bucket_bytes: int) -> list[list]:
    """Consecutive parameters, in the order backward finishes them, grouped until each group holds
    at least ``bucket_bytes`` of fp32 gradient (the last group takes what is left)."""
    groups, current, size = [], [], 0
    for p in params_in_backward_order:
        current.append(p)
        size += p.numel() * 4
        if size >= bucket_bytes:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


class Bucket:
    def __init__(self, index: int, params: list, dtype=torch.float32):
        self.index, self.params = index, params
        # (n,) the gradients, contiguous, on the parameters' device (a CuPy view on a GPU)
        self.flat = torch.zeros(sum(p.numel() for p in params), dtype=dtype, device=params[0].device)
        self.pending = len(params)


class BucketedDataParallel(GradSync):
    """Gradients in flat buckets, all-reduced as they become ready (see the module docstring)."""

    def __init__(self, params, comm, algorithm: str, bucket_mb: float = 25.0, overlap: bool = True,
                 comm_dtype: str = "fp32", timeline=None):
        self.comm, self.algorithm, self.timeline = comm, algorithm, timeline
        self.world = comm.Get_size()
        self.comm_dtype = comm_dtype
        params = [p for p in params if p.requires_grad]
        self.buckets = self._make_buckets(list(reversed(params)), int(bucket_mb * 2**20))
        self.half = {b.index: torch.empty_like(b.flat, dtype=torch.float16)
                     for b in self.buckets} if comm_dtype == "fp16" else {}
        self.sync = True
        self.comm_s = 0.0
        self.error = None
        # With one bucket there is nothing to overlap (it completes as backward ends): no thread.
        self.overlap = overlap and len(self.buckets) > 1
        if self.overlap:
            # A separate communicator, so the thread's messages never match the main thread's.
            self.thread_comm = comm.Dup()
            self.jobs = queue.Queue()
            threading.Thread(target=self._serve, name="allreduce", daemon=True).start()
        for bucket in self.buckets:
            for p in bucket.params:
                p.register_post_accumulate_grad_hook(lambda p, b=bucket: self._grad_ready(b))

    @staticmethod
    def _make_buckets(params_in_backward_order, bucket_bytes: int) -> list[Bucket]:
        """Group parameters, in the order backward finishes them, into buckets of ~bucket_bytes."""
        buckets = [Bucket(i, g) for i, g in enumerate(bucket_groups(params_in_backward_order, bucket_bytes))]
        for b in buckets:
            offset = 0
            for p in b.params:
                p.grad = b.flat[offset: offset + p.numel()].view_as(p)  # autograd accumulates into this view
                offset += p.numel()
        return buckets

    def zero_grad(self):
        for b in self.buckets:
            b.flat.zero_()  # keep the views; set_to_none would detach .grad from the bucket

    def begin_backward(self, last: bool):
        """Call before each micro-batch's backward; last=False accumulates without communicating."""
        self.sync = last
        for b in self.buckets:
            b.pending = len(b.params)

    def _grad_ready(self, bucket: Bucket):
        bucket.pending -= 1
        # The last bucket (the first layers and the embedding) completes only as backward
        # ends, so nothing could overlap with it: finish() reduces it on the main thread
        # and spares the hand-off to the communication thread (with one bucket: no thread at all).
        if bucket.pending == 0 and self.sync and self.overlap and bucket is not self.buckets[-1]:
            if bucket.flat.is_cuda:  # the kernels that wrote these gradients must finish before MPI reads them
                bucket.ready = torch.cuda.Event()
                bucket.ready.record()
            self.jobs.put(bucket)

    def _reduce(self, bucket: Bucket, comm):
        t0 = time.perf_counter()
        if bucket.flat.is_cuda:
            if comm is self.comm:
                torch.cuda.current_stream(bucket.flat.device).synchronize()
            else:
                bucket.ready.synchronize()
        average(bucket.flat, comm, self.algorithm, self.half.get(bucket.index))
        spent = time.perf_counter() - t0
        self.comm_s += spent
        if self.timeline:
            self.timeline.add(f"allreduce bucket {bucket.index} ({bucket.flat.numel() * 4 / 2**20:.2f} MB)", t0, spent,
                              thread="comm" if comm is not self.comm else "main")

    def close(self):
        """Stop the communication thread and free its communicator."""
        if self.overlap:
            self.jobs.put(None)
            self.jobs.join()
            self.thread_comm.Free()
            self.overlap = False

    def abandon(self):
        if self.overlap:
            self.jobs.put(None)  # the thread ends once its revoked call returns; nothing collective here
            self.overlap = False

    def _serve(self):
        while True:
            bucket = self.jobs.get()
            if bucket is None:
                self.jobs.task_done()
                return
            try:
                if self.error is None:
                    self._reduce(bucket, self.thread_comm)
            except BaseException as e:  # handed to the main thread in finish()
                self.error = e
            finally:
                self.jobs.task_done()

    def finish(self, tie=None) -> tuple[float, float]:
        """After the last micro-batch's backward: wait until every bucket is averaged, then ``tie()``.

        Returns (comm_s, exposed_comm_s): time spent all-reducing this step, and
        the part of it the main thread sat waiting for (not hidden behind backward).
        ``tie`` (pipelines) sums the tied embedding's gradient between the first
        and last stage; averaging first is the same, the sum being linear.
        """
        t0 = time.perf_counter()
        if self.overlap:
            for bucket in self.buckets[:-1]:
                if bucket.pending > 0:  # a parameter without a gradient this step: send the bucket anyway
                    self.jobs.put(bucket)
            self.jobs.join()
            if self.error is not None:
                raise RuntimeError("gradient all-reduce failed on the communication thread") from self.error
            self._reduce(self.buckets[-1], self.comm)
        else:
            for bucket in self.buckets:
                self._reduce(bucket, self.comm)
        exposed = time.perf_counter() - t0
        spent, self.comm_s = self.comm_s, 0.0
        if tie:
            tie()
        return spent, exposed
