"""The one exception type that means "the user asked for something impossible".

The CLI turns a :class:`TrvaeError` into one line on stderr and its ``exit_code``
(2), with no traceback; any other exception is a bug and keeps its traceback.
"""


class TrvaeError(Exception):
    """A user error: bad path, missing key, unknown condition, bad data."""

    exit_code = 2


class Interrupted(TrvaeError):
    """Training stopped on SIGTERM / SIGINT after writing a checkpoint (exit status 75)."""

    exit_code = 75
