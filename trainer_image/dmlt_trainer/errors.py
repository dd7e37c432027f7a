"""User-facing errors: printed as one line by the CLI, never as a traceback."""


class ConfigError(ValueError):
    """Bad input from the user: a flag, a config file, a dataset path."""
