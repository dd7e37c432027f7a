"""Pieces of benchmarks/bench_scale.py: the control plane with kwok's simulated nodes, what is
observed while N TrainingJobs start, run and are deleted, and the figures made of it."""
