"""User-facing errors.

Every problem caused by the user's input (a missing file, a bad configuration value, a dataset
without a time axis, ...) raises :class:`LatentdaError`. The command line turns it into a one-line
message on stderr and exit code 2; nothing else is written.
"""

__all__ = ["LatentdaError"]


class LatentdaError(Exception):
    """An error in the user's input, reported as one line and exit code 2."""
