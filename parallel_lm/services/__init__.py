"""The services a run relies on besides its step: checkpoints written atomically
(``checkpoint``), step records and traces (``metrics``), the hang watchdog (``watchdog``), surviving dead ranks
(``shrink``). The faults injected to test them are ``parallel_lm.faults``, one floor lower: the gradient sync
and the parameter server are wrapped by it."""
