"""How a run reads its data, as plain constants: the command line's flags, checks and help need them, and
importing them must not pull in torch or Ray (the datasets and worker-source modules that use them do)."""

DATA_MODES = ("auto", "memory", "stream")
# Decoded data below this is read once by the driver and held in Ray's object store (see datasets.plan_sets).
IN_MEMORY_LIMIT_BYTES = 256 * 1024**2
# Per worker, MB of memory for sets kept decoded after their first pass (ray_sources).
DEFAULT_CACHE_MB = 4096
