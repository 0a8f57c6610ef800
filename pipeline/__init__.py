"""Ray-distributed machine unlearning: data, models, methods, metrics, training glue, results."""

__version__ = "0.1.0"
