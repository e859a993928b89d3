"""The training loop of python -m parallel_lm.train, for a run whose flags train.py has parsed and checked:
the memory check, the data, the step implementation, and the one loop that steps it, records, evaluates,
checkpoints and survives failures.

A step implementation is ``Trainer`` (trainer.py: every layout of --sync allreduce) or ``PSRun``
(trainer_ps.py: --sync ps). The loop uses of it: ``train_step(step)`` (a StepRecord, or None once this rank is
done early), ``evaluate()`` and ``save(out, step, keep)`` (collective), ``aligned`` (whether every rank ends a
step at the same point, so that those may run between steps), ``finish()`` (collective after the last step; its
lines to print), ``recover(...)`` (--on-failure shrink), ``watchdog``, ``start_step``, ``n_params``,
``flops_per_token``, ``batches``, ``comm`` and ``close()``.
"""
from __future__ import annotations

import sys
import time

import torch
from mpi4py import MPI

from .. import environment
from . import memory_check, run_prediction, utilization
from ..services import shrink
from .data import load_batches
from ..services.metrics import MetricsWriter, Timeline, validation_line, write_chrome_trace
from ..parallel.schedules import bubble_formula
from ..runtime import agree, first_on_node, node_share, on_rank0, print0, threads_per_rank
from .trainer import Trainer
from ..services.watchdog import watchdog


def launch(cfg, comm, opts, state, out, netem, profile) -> None:
    """Train ``cfg`` on ``comm`` with the launch's ``opts`` (train_flags.RunOptions), from ``state`` when resuming,
    writing to ``out``; ``netem``: a Network that delays gradient messages; ``profile``: --predict's."""
    rank, p = comm.Get_rank(), comm.Get_size()
    share = node_share(comm)  # (ranks on this node, its cores): threads, the memory check, --predict
    torch.set_num_threads(threads_per_rank(comm, opts.threads, share))
    if cfg.device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())  # several ranks may share one GPU
    available = None if opts.force else memory_check.available_bytes(cfg.device)
    memory = agree(comm, lambda: memory_check.check(cfg, cfg.grid(cfg.data_ranks(p)), share[0], available))

    verify = first_on_node(comm)  # one rank per node hashes the shards its ranks read, not every rank
    batches = agree(comm, lambda: load_batches(cfg.data, cfg.model.block_size, cfg.seed, int(cfg.data_max_mb * 2**20),
                                               verify))
    timeline = Timeline() if opts.trace else None
    before_mib = memory_check.peak_mib()
    survivors = shrink.Survivors(comm, out) if opts.on_failure == "shrink" else None
    if cfg.sync == "ps":
        from .trainer_ps import PSRun

        def make_trainer(cfg, comm, state):
            return PSRun(cfg, comm, batches, state, timeline, undoable=survivors is not None)
    else:
        def make_trainer(cfg, comm, state):
            return Trainer(cfg, comm, batches, state, timeline, slow_factor=cfg.straggler_factor(comm.Get_rank()),
                           netem=netem)
    trainer = make_trainer(cfg, comm, state)
    trainer = run(cfg, comm, trainer, opts, state, out, timeline, share, profile, survivors, make_trainer)
    trainer.close()  # not on an exception: the job is about to be aborted, and Comm.Free is collective
    print0(memory_check.report(memory, before_mib))


def _probe_compute(cfg, comm, micro):
    """Rank 0 alone times the whole model (the others sleep, leaving it the cores); every rank gets the result."""
    return on_rank0(comm, lambda: run_prediction.measure_compute(cfg, micro, torch.get_num_threads()))


def _report_prediction(cfg, comm, grid, n_micro, probe, profile, trainer, records, out, share):
    """Rank 0 prints the predicted step beside the measured medians (and writes OUT/prediction.json)."""
    on_node, cores = share
    if comm.Get_rank() != 0:
        return
    pred = run_prediction.predict(cfg, grid, n_micro, probe, profile, trainer.n_params, trainer.flops_per_token,
                                  on_node, cores)
    meas = run_prediction.measured(records)
    print(run_prediction.report(pred, meas, probe, profile, on_node, cores, comm.Get_size()), flush=True)
    if out is not None:
        run_prediction.write_json(out / "prediction.json", pred, meas, probe, profile,
                                  {"dp": grid.dp, "cp": grid.cp, "tp": grid.tp, "pp": grid.pp, "zero": cfg.zero,
                                   "micro_batches": n_micro, "ranks": comm.Get_size()})


def _report_step(rec, cfg, bar, interactive: bool, log_every: int) -> None:
    """The progress bar's postfix; the validation loss, or every log_every-th step, as a line."""
    done = rec.step
    exposed = f", exposed comm {100 * rec.exposed_comm_s / rec.step_s:.0f}%" if rec.exposed_comm_s is not None else ""
    bubble = f", bubble {100 * rec.bubble:.0f}%" if rec.bubble is not None else ""
    experts = f", experts max/mean {rec.experts['imbalance']:.2f}, dropped {100 * rec.experts['dropped']:.1f}%" \
        if rec.experts else ""
    server = f", server busy {100 * rec.server_busy_s / rec.step_s:.0f}%, staleness {rec.staleness}" \
        if rec.server_busy_s is not None else ""
    progress = f"loss {rec.loss:.3f}, {rec.tokens_per_s:,.0f} tok/s{exposed}{bubble}{experts}{server}"
    bar.set_postfix_str(progress, refresh=False)
    bar.update()
    say = (lambda line: bar.write(line, file=sys.stdout)) if interactive else print0
    if rec.val_loss is not None:
        say(f"step {done}: train loss {rec.loss:.4f}, val loss {rec.val_loss:.4f}")
    elif log_every and done % log_every == 0:
        say(f"step {done}/{cfg.steps}: {progress}")


def expert_line(experts: dict, cfg) -> str:
    """Assignments per expert in the last step (summed over layers and ranks), the imbalance and the drops."""
    tokens = experts["tokens"]
    return (f"experts: last step's token assignments per expert (all {cfg.model.n_layer} layers) "
            f"{', '.join(str(t) for t in tokens)}; max/mean {experts['imbalance']:.2f}; "
            f"{100 * experts['dropped']:.1f}% dropped over capacity (factor {cfg.model.capacity_factor})")


def _checkpoint_due(cfg, out, done: int) -> bool:
    return out is not None and done > 0 and ((cfg.ckpt_every and done % cfg.ckpt_every == 0) or done == cfg.steps)


def _trainer_header(cfg, trainer, opts, p: int) -> list[str]:
    """What a Trainer's run prints first: ranks and engine, the model, the data and the batch, the layout."""
    grid, batches = trainer.grid, trainer.batches
    rows, micro, n_micro = cfg.per_rank(grid.dp)
    lines = [f"parallel_lm.train: {p} rank(s) x {torch.get_num_threads()} thread(s), engine {cfg.engine}"
             + (f", {cfg.dp_sync} dp, --allreduce {cfg.allreduce}, buckets {cfg.bucket_mb} MB, overlap {'on' if cfg.overlap else 'off'}"
                if cfg.engine == "explicit" else "")
             + f", precision {cfg.precision}, comm {cfg.comm_dtype}, device {cfg.device}"
             + (f", netem {opts.netem}" if opts.netem else "")
             + (f", ZeRO stage {cfg.zero}" if cfg.zero else ""),
             f"model: {trainer.n_params / 1e6:.2f}M parameters, {trainer.flops_per_token / 1e6:.2f} MFLOP/token, {cfg.model}"]
    B, dp = cfg.global_batch_size, grid.dp
    shares = f" = {dp} data-parallel rank(s) x {n_micro} micro-batch(es) x {micro} sequences" if B % dp == 0 and \
        rows == n_micro * micro else (f" over {dp} data-parallel rank(s) holding {B // dp}" +
                                      (f" or {B // dp + 1}" if B % dp else "") + " sequences")
    weighted = "" if B % dp == 0 and rows == n_micro * micro else \
        f" in {n_micro} micro-batch(es), each weighted by its rows"
    context = f", each cut over {cfg.cp} context-parallel ranks ({cfg.model.block_size // cfg.cp} bytes each)" \
        if cfg.cp > 1 else ""
    unit = "bytes" if cfg.model.vocab_size == 256 else "tokens"
    lines.append(f"data: {cfg.data}, {len(batches.train):,} train / {len(batches.val):,} val {unit}; global batch "
                 f"{B}{shares} of {cfg.model.block_size} {unit}{weighted}{context}")
    if grid.tp > 1 or grid.pp > 1 or cfg.cp > 1:
        v = cfg.virtual_stages
        kind = f"interleaved 1F1B, {v} chunks per rank, bubble formula (p-1)/(v m+p-1)" if v > 1 else \
            f"{cfg.schedule} schedule, bubble formula (p-1)/(m+p-1)"
        lines.append(f"layout: {grid.describe()}" + (f", {kind} = {bubble_formula(grid.pp, n_micro, v):.3f}" if grid.pp > 1 else ""))
    return lines


def _metrics(out, rank: int, tensorboard, resumed: bool, start_step: int, record=None, previous=None):
    """The metrics writer (OUT/metrics.jsonl on rank 0, TensorBoard with --tensorboard); after a recovery,
    ``previous`` reopened at ``start_step`` with the last completed step's ``record``."""
    path = out / "metrics.jsonl" if out is not None and rank == 0 else None
    if previous is not None:
        return previous.reopened(path, tensorboard, start_step, record)
    return MetricsWriter(path, resume=resumed, tensorboard=tensorboard, resumed_step=start_step)


def run(cfg, comm, trainer, opts, state, out, timeline, share, profile=None, survivors=None, make_trainer=None):
    """The training loop; returns the trainer it ends with (--on-failure shrink: the survivors' own, built by
    ``make_trainer(cfg, comm, state)``)."""
    rank, p = comm.Get_rank(), comm.Get_size()
    ps = cfg.sync == "ps"
    for line in trainer.header() if ps else _trainer_header(cfg, trainer, opts, p):
        print0(line)
    if trainer.start_step:
        print0(f"resumed from {opts.resume} at step {trainer.start_step}")

    probe = _probe_compute(cfg, comm, trainer.micro) if profile else None
    peak = utilization.peak_per_rank(comm, share, opts.peak_tflops, environment.current().cache / "matmul-peak.json")
    records = []
    tensorboard = out / "tb" if opts.tensorboard else None
    metrics = _metrics(out, rank, tensorboard, state is not None, trainer.start_step)
    trainer.watchdog = watchdog(comm, opts.timeout, kill=survivors is not None)
    comm.Barrier()
    if timeline:
        timeline.t0 = time.perf_counter()  # after the barrier: tracks of all ranks line up
    from tqdm import tqdm
    # A live bar on a terminal; in a log (not a TTY) a plain line every tenth of the run instead.
    interactive = rank == 0 and not opts.quiet and sys.stderr.isatty()
    log_every = max(1, (cfg.steps - trainer.start_step) // 10) if not opts.quiet and not interactive else 0
    bar = tqdm(total=cfg.steps, initial=trainer.start_step, unit="step", file=sys.stderr, mininterval=0.5,
               disable=not interactive, dynamic_ncols=True)
    val, step, first = None, trainer.start_step, trainer.start_step
    while True:
        try:
            rec = trainer.train_step(step) if step < cfg.steps else None
            if rec is None:  # the last step, or this rank is done early (a parameter server's update budget)
                if survivors:
                    survivors.settle()  # a rank that died after its last collective is found here
                break
            done = step + 1
            if step == first and not ps:
                print0(utilization.model_state_line(trainer))
                print0(utilization.activation_line(trainer, trainer.grid, trainer.micro))
            if trainer.aligned and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
                trainer.watchdog.at(step, "evaluation")
                val = rec.val_loss = trainer.evaluate()
            metrics.write(rec)
            records.append(rec)
            _report_step(rec, cfg, bar, interactive, log_every)
            if trainer.aligned and _checkpoint_due(cfg, out, done):
                trainer.watchdog.at(step, "checkpoint write")
                trainer.save(out, done, opts.keep_checkpoints)  # collective: every rank sends its part, unsharded, by single-process name
            step = done
        except MPI.Exception as error:
            if survivors is None or not shrink.is_failure(error):
                raise
            trainer, record = trainer.recover(survivors, error, records[-1] if records else None, make_trainer)
            comm, rank, p = trainer.comm, trainer.comm.Get_rank(), trainer.comm.Get_size()
            trainer.watchdog = watchdog(comm, opts.timeout, kill=True)
            metrics = _metrics(out, rank, tensorboard, True, trainer.start_step, record, previous=metrics)
            step = trainer.start_step
            records = [r for r in records if r.step <= step]  # a checkpoint's survivors do the steps after again
            if trainer.aligned and _checkpoint_due(cfg, out, step):  # the write may have been what the dead rank was doing
                trainer.save(out, step, opts.keep_checkpoints)
    bar.close()
    for line in trainer.finish():  # a parameter server: every rank gets the trained model, and the counts
        print0(line)
    trainer.watchdog.close()
    metrics.close()
    if timeline:
        per_rank = comm.gather(timeline.events, root=0)
        if rank == 0:
            write_chrome_trace(out / "trace.json", per_rank)
    ended = max(step, trainer.start_step)
    if val is None and (records or first >= cfg.steps or not trainer.aligned):
        val = trainer.evaluate()  # an asynchronous or budgeted run's, or a run with nothing left to train
        if first >= cfg.steps:
            print0(f"already at step {first} >= --steps {cfg.steps}: nothing to train")
    if out is not None and (not trainer.aligned or ended < cfg.steps):  # no checkpoint at a step boundary
        trainer.save(out, ended if trainer.aligned else cfg.steps, opts.keep_checkpoints)
    if val is not None:
        print0(validation_line(val, cfg.model.vocab_size))
    if records:
        print0(utilization.utilization_line(cfg, trainer.flops_per_token, records, p, peak))
    if records and records[-1].experts:
        print0(expert_line(records[-1].experts, cfg))
    if probe and records:
        _report_prediction(cfg, comm, trainer.grid, trainer.n_micro, probe, profile, trainer, records, out, share)
    if out is not None:
        files = ["metrics.jsonl", "checkpoint.pt"] + (["prediction.json"] if probe and records else []) \
            + (["trace.json"] if timeline else []) + (["tb/ (tensorboard --logdir " + str(out.parent) + ")"]
                                                      if opts.tensorboard else [])
        print0(f"wrote {', '.join(str(out / f) for f in files)}" + (" (open trace.json in ui.perfetto.dev)" if timeline else ""))
    return trainer
