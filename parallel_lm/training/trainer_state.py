"""What a Trainer writes to a checkpoint and restores from one: the whole model and optimizer state, by
single-process name, gathered from every rank's tensor, pipeline and expert slice (checkpoint.py's format).

``CheckpointedState`` holds these methods for ``Trainer``, whose attributes they read: the model and its stage,
the grid and its communicators, the update (optimizer) and its sync, the experts, the loss scaler.
"""
from __future__ import annotations

from ..services import checkpoint
from ..parallel.tensor_parallel_sharding import piece


class CheckpointedState:
    """The checkpoint side of a Trainer: ``save``, ``full_state_dict``, ``optimizer_state``, ``replica_state``."""

    def _restore(self, state: dict, saved_optimizer: dict) -> None:
        """This rank's piece of the checkpoint's optimizer state (by name), and the loss scaler's."""
        grid = self.grid
        mine = {}
        for p in self.params:
            name = self.names[id(p)]
            if name in saved_optimizer:
                mine[p] = {k: piece(name, v, grid.tp_rank, grid.tp) for k, v in saved_optimizer[name].items()}
        if mine:
            self.update.load_by_param(mine)
        if self.scaler and "loss_scaler" in state:
            self.scaler.load_state_dict(state["loss_scaler"])
        elif self.scaler and "loss_scale" in state:  # checkpoints from before the scaler saved its good steps
            self.scaler.scale = float(state["loss_scale"])

    def full_state_dict(self) -> dict | None:
        """The whole model's state_dict on rank 0 (single-process keys); None elsewhere. Collective."""
        with self.sync.full_parameters():  # ZeRO-3: gathered for the copy
            local = {k: v.clone() for k, v in self.model.state_dict().items()} if self.cfg.zero == 3 else \
                self.model.state_dict()  # single-process names, in single-process order (shard_model keeps both)
        if self.experts:  # every expert from the rank that trains it
            local = self.experts.gather(local)
        full = checkpoint.gather({k: v for k, v in local.items() if self.stage.owns(k)}, self.grid, self.tp_comm,
                                 self.pp_comm)
        return None if full is None else {k: full[k] for k in local}

    def optimizer_state(self) -> dict | None:
        """Every parameter's optimizer state, unsharded, by single-process name, on rank 0. Collective."""
        states = self.update.state_by_param()
        skip = {id(p) for p in self._tied_copy()}  # the first stage saves the tied weight's state
        mine = {f"{kind}:{self.names[id(p)]}": v for p, s in states.items() if id(p) not in skip
                for kind, v in s.items()}
        if self.experts:
            mine = self.experts.gather(mine)
        full = checkpoint.gather(mine, self.grid, self.tp_comm, self.pp_comm)
        if full is None:
            return None
        by_name = {}
        for key, value in full.items():
            kind, name = key.split(":", 1)
            by_name.setdefault(name, {})[kind] = value
        return by_name

    def replica_state(self) -> dict:
        """This rank's whole training state in checkpoint form, no communication: for a replica that holds
        everything (plain data parallelism), the state a survivor hands the others (shrink.py)."""
        states = self.update.state_by_param()
        return checkpoint.training_state(
            {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            {self.names[id(p)]: {k: v.detach().cpu().clone() for k, v in s.items()} for p, s in states.items()},
            self.completed, self.cfg.to_dict(), self.scaler.state_dict() if self.scaler else None)

    def save(self, out, step: int, keep: int = 1) -> None:
        """Write OUT/checkpoint.pt at ``step``, keeping the newest ``keep`` (collective: every rank sends its
        part; rank 0 writes)."""
        model_state, optimizer_state = self.full_state_dict(), self.optimizer_state()
        if self.comm.Get_rank() == 0:
            checkpoint.save(out, model_state, optimizer_state, step, self.cfg.to_dict(),
                            self.scaler.state_dict() if self.scaler else None, keep)
