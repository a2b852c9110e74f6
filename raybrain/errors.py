"""Errors raised for user input.

Every problem a user can fix (a malformed spec, a missing file, brain data of the
wrong shape) raises :class:`SpecError` with one line that names what is wrong and
what was expected. The CLI prints that line and exits with code 2.
"""


class SpecError(ValueError):
    """A user-supplied spec, file or array does not satisfy an invariant.

    The message is one line: what is wrong, what was expected, and the value received.
    """


class TrackingUnavailable(RuntimeError):
    """MLflow could not be written before a sweep ended; nothing is lost.

    Every record is in Tune's results under the sweep's storage and in its checkpoints;
    running the sweep again with ``--resume`` writes what MLflow is missing. The CLI
    prints the one-line message and exits with code 1.
    """


class SweepInterrupted(Exception):
    """A sweep stopped on a signal (Ctrl-C, SIGTERM) before it finished; resumable.

    ``signum`` is the first signal received; ``immediate`` is True when a second signal
    cut the graceful stop short. The CLI exits with ``128 + signum`` (130, 143).
    """

    def __init__(self, signum: int, immediate: bool = False):
        super().__init__(f"interrupted by signal {signum}")
        self.signum, self.immediate = int(signum), immediate


class SweepFailed(RuntimeError):
    """A sweep could not finish: configs failed beyond their retries, or Ray was lost.

    The message is one line saying what failed and the command that resumes the sweep.
    The CLI prints it and exits with code 1.
    """
