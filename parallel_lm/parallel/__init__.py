"""Parallel training strategies built on parallel_lm.comm (data parallelism for now)."""
