"""The error a command raises to stop with one line on stderr."""


class CommandError(Exception):
    """A failure to report as one line on stderr with a non-zero exit."""
