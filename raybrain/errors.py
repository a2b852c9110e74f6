"""Errors raised for user input.

Every problem a user can fix (a malformed spec, a missing file, brain data of the
wrong shape) raises :class:`SpecError` with one line that names what is wrong and
what was expected. The CLI prints that line and exits with code 2.
"""


class SpecError(ValueError):
    """A user-supplied spec, file or array does not satisfy an invariant.

    The message is one line: what is wrong, what was expected, and the value received.
    """
