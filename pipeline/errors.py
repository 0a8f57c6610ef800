"""Errors a user can fix: the CLI prints them without a traceback and exits non-zero. And the one error that is
not the user's to fix, StorageUnavailableError: storage that kept failing for a while, which a retry may get past."""


class UnlearnError(Exception):
    """Bad input or configuration, with a message that names the problem."""


class DataError(UnlearnError):
    """Shards, splits or images that are missing, corrupt or inconsistent."""


class ConfigError(UnlearnError):
    """An unknown method, model, key or value in a configuration."""


class DivergedError(UnlearnError):
    """A method's loss or weights became NaN or infinite: its model must never be saved as a result."""


class StorageUnavailableError(Exception):
    """Storage kept failing in a way that may pass (network, throttling, 5xx) after the SDK's own retries.

    Deliberately not an UnlearnError: those recur on every retry and end a Ray Train run at once, while this one
    lets `--max-failures` restart the worker group from its last epoch checkpoint (pipeline/train/runner.py).
    """
