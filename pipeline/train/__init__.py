"""Ray Train glue: Ray Data sets for each split, the worker loops, checkpoints and resume."""
