"""parallel_lm: learn, run and plan parallel training of language models on MPI."""
__version__ = "0.1.0"
