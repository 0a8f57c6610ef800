"""Errors a user can fix: the CLI prints them without a traceback and exits non-zero."""


class UnlearnError(Exception):
    """Bad input or configuration, with a message that names the problem."""


class DataError(UnlearnError):
    """Shards, splits or images that are missing, corrupt or inconsistent."""


class ConfigError(UnlearnError):
    """An unknown method, model, key or value in a configuration."""


class DivergedError(UnlearnError):
    """A method's loss or weights became NaN or infinite: its model must never be saved as a result."""
