"""The one exception type that means "the user asked for something impossible", and the one
warning type that means "done, but read this".

The CLI turns a :class:`TrvaeError` into one line on stderr and its ``exit_code``
(2), with no traceback; any other exception is a bug and keeps its traceback. A
:class:`TrvaeNote` is a Python warning, so a notebook shows it as one; the CLI prints it
as one ``note:`` line on stderr.
"""

import warnings


class TrvaeError(Exception):
    """A user error: bad path, missing key, unknown condition, bad data."""

    exit_code = 2


class Interrupted(TrvaeError):
    """Training stopped on SIGTERM / SIGINT after writing a checkpoint (exit status 75)."""

    exit_code = 75


class TrvaeNote(UserWarning):
    """Something the user should know about a result that was made as asked (a library function's
    counterpart of the CLI's ``note:`` lines)."""


# shown every time, not once per line of the caller; a user's own filter (added later, so before
# this one in the list) still wins, e.g. ``warnings.simplefilter("ignore", TrvaeNote)``
warnings.filterwarnings("always", category=TrvaeNote, append=True)


def note(message: str) -> None:
    """Tell the caller of a library function ``message`` as a :class:`TrvaeNote`."""
    warnings.warn(message, TrvaeNote, stacklevel=3)
