"""Which of the package's modules one training step enters: the measure of how much a reader must follow.

    mpiexec -n 8 python benchmarks/step_modules.py                       # --tp 2 --pp 2 --zero 1, 2 micro-batches
    mpiexec -n 4 python benchmarks/step_modules.py --tp 1 --pp 1 --zero 0

Builds the run's Trainer on the synthetic corpus, takes one step to warm up, then records every Python function
call of the second step (``sys.setprofile`` on the main thread, ``threading.setprofile`` on threads started
during it) and keeps the files under parallel_lm/. Rank 0 prints, for each module, on how many ranks the step
entered it, and the count (all ranks together, and outside comm/). docs/architecture.md quotes the result.
"""
import sys
import threading
from pathlib import Path

import click
from mpi4py import MPI

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from parallel_lm import environment  # noqa: E402
from parallel_lm.config import TrainConfig  # noqa: E402
from parallel_lm.model import GPTConfig  # noqa: E402
from parallel_lm.training.data import Batches, load_corpus  # noqa: E402
from parallel_lm.training.trainer import Trainer  # noqa: E402

PACKAGE = ROOT / "parallel_lm"


def entered_during(fn) -> set[str]:
    """The package's modules (paths relative to parallel_lm/) whose code runs while ``fn()`` runs."""
    seen = set()

    def profile(frame, event, arg):
        if event == "call":
            seen.add(frame.f_code.co_filename)
        return None
    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    inside = (Path(f) for f in seen if f.startswith(str(PACKAGE)))
    return {str(p.relative_to(PACKAGE)) for p in inside}


@click.command()
@click.option("--tp", default=2, show_default=True)
@click.option("--pp", default=2, show_default=True)
@click.option("--zero", default=1, show_default=True)
@click.option("--micro-batches", default=2, show_default=True)
def main(tp, pp, zero, micro_batches):
    environment.apply()
    comm = MPI.COMM_WORLD
    model = GPTConfig(n_layer=2 * pp, n_head=4, n_embd=32, block_size=32)
    cfg = TrainConfig(model=model, global_batch_size=4 * micro_batches * max(1, comm.Get_size() // (tp * pp)),
                      tp=tp, pp=pp, zero=zero, micro_batches=micro_batches if pp > 1 else None, steps=2)
    trainer = Trainer(cfg, comm, Batches.from_bytes(load_corpus("synthetic"), model.block_size, cfg.seed))
    trainer.train_step(0)
    mine = entered_during(lambda: trainer.train_step(1))
    trainer.close()
    every = comm.gather(mine, root=0)
    if comm.Get_rank() == 0:
        counts = {}
        for modules in every:
            for m in modules:
                counts[m] = counts.get(m, 0) + 1
        for m in sorted(counts):
            print(f"{counts[m]}/{len(every)} ranks  {m}")
        outside = [m for m in counts if not m.startswith("comm/")]
        print(f"one step of --tp {tp} --pp {pp} --zero {zero} on {len(every)} ranks enters {len(counts)} modules "
              f"of the package ({len(outside)} outside comm/); at most {max(len(s) for s in every)} on one rank")


if __name__ == "__main__":
    main()
