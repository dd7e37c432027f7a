"""The hyper-parameter search benchmark of issue 6 (run: python -m benchmarks.hpo [--quick])."""
