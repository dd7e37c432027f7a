"""dmlt trainer: data-parallel training of a tabular feed-forward net with MLflow tracking."""

__version__ = "0.1.0"
