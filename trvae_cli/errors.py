"""The one exception type that means "the user asked for something impossible".

The CLI turns a :class:`TrvaeError` into one line on stderr and exit code 2,
with no traceback; any other exception is a bug and keeps its traceback.
"""


class TrvaeError(Exception):
    """A user error: bad path, missing key, unknown condition, bad data."""
