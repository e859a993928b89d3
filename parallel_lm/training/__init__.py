"""The training run's internals, below the entry points (train.py parses the flags and calls ``train_loop``):

- ``train_loop``: the loop around a step (records, evaluation, checkpoints, failures);
- ``parallelize``: the builder (the ``Mesh`` of communicators, the parts of a run in order);
- ``trainer`` and ``trainer_state``: one step through the parts, and what a checkpoint holds of it;
- ``trainer_ps``: the parameter server's run;
- ``data``: the corpus and the batches every layout samples alike;
- ``memory_check``, ``utilization``, ``run_prediction``: what a run will hold, what it used, and what the
  cost model predicted for it.
"""
