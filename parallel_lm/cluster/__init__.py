"""A real cluster on one machine: nodes as network namespaces joined by shaped links, MPI launched across them
(``python -m parallel_lm.cluster``; docs/cluster.md)."""
