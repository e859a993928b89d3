"""Graded exercises for the lessons: ``python -m parallel_lm.exercises`` (see __main__.py)."""
