"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class ConfigError(ValueError):
    """A bad input from the user: config key or value, file, atom selection, energy.

    The message names the offending key, file or value and says what was expected.
    """
