"""The Ray session of a sweep: start or join Ray, own the stop signals, shut down.

A first Ctrl-C (SIGINT) or SIGTERM asks the sweep to stop: Tune ends its loop through its
own graceful path (experiment state and checkpoints saved, trials stopped, so a resume
restarts them where they were), then :class:`~raybrain.errors.SweepInterrupted` carries
the signal up to the driver, which marks the MLflow runs KILLED and prints the command
that resumes the sweep. A second signal stops at once (the interrupt is raised wherever
the driver is); a third exits the process without any clean-up.

Tune's own SIGINT handler is switched off (``TUNE_DISABLE_SIGINT_HANDLER``): it would
swallow the signal and return from ``fit`` as if the stage had ended. The session forwards
the request to Tune through SIGUSR1, the stop signal Tune always listens to, from a Tune
callback at its next loop step, so Tune's handler is installed by then.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable

from ray.tune import Callback

from raybrain.errors import SweepInterrupted

SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}

#: loggers whose INFO lines (MLflow's "Creating initial MLflow database tables", alembic's
#: migrations, Ray's start-up notes) only show with --verbose
QUIET_LOGGERS = ("mlflow", "alembic", "ray", "ray.tune", "ray.train", "ray.data")
#: loggers whose warnings are noise for raybrain's users, shown with --verbose only: Ray's
#: "token authentication is enabled" note, Tune's own stop/resume advice (Python API
#: calls: raybrain prints the command that resumes a sweep), Tune's "slow callback" hints
#: (per-epoch MLflow writes of a lockstep trial take ~0.5 s)
SILENT_LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray.tune.tune",
                  "ray.tune.utils.util", "ray.tune.execution.tune_controller")


def quiet_logs(verbose: bool) -> None:
    """Hide the libraries' start-up chatter unless ``verbose`` (call before and after
    importing them: MLflow reads ``MLFLOW_LOGGING_LEVEL`` when it configures its loggers)."""
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    level = logging.INFO if verbose else logging.WARNING
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for name in SILENT_LOGGERS:
        logging.getLogger(name).setLevel(level if verbose else logging.ERROR)


class RaySession:
    """Context manager around a sweep's use of Ray (see the module docstring).

    Parameters
    ----------
    address : str or None
        None starts a private local Ray; ``auto`` or ``HOST:6379`` joins a cluster.
    out : callable
        Where lines for the user go.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 dashboard: bool = False, dashboard_host: str = "127.0.0.1",
                 out: Callable[[str], None] = print, verbose: bool = False):
        self.address, self.num_cpus = address, num_cpus
        self.dashboard, self.dashboard_host = dashboard, dashboard_host
        self.out, self.verbose = out, verbose
        self.started_ray = False
        #: the first stop signal received (None: none)
        self.stop_signal: int | None = None
        self._signals_seen = 0
        self._forwarded = False
        self._previous: dict[int, object] = {}

    # -- Ray --------------------------------------------------------------------------
    def __enter__(self) -> "RaySession":
        import ray

        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        # Tune's own CSV and TensorBoard loggers would write every result again in the
        # driver (JSON records of every run, each epoch); the sweep keeps one JSON copy
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        self._install()
        quiet_logs(self.verbose)
        try:
            if not ray.is_initialized():
                from raybrain.sweep.cluster import ray_init_kwargs

                kwargs = ray_init_kwargs(self.address, self.num_cpus, self.dashboard,
                                         self.dashboard_host)
                context = ray.init(**kwargs)
                self.started_ray = True
                if self.dashboard and self.address is None:
                    self.out(f"Ray dashboard (and Jobs API): http://{context.dashboard_url}"
                             if context.dashboard_url else "the Ray dashboard did not start "
                             "(see Ray's log under /tmp/ray/session_latest/logs); the sweep "
                             "goes on without it")
        except BaseException:
            self._uninstall()
            raise
        quiet_logs(self.verbose)  # ray.init sets its own levels
        # Ray's core worker installs a fatal-signal handler for SIGTERM (it aborts the
        # process with a stack dump): ours goes back on top
        self._install(again=True)
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.started_ray:
                import ray

                ray.shutdown()
        finally:
            self._uninstall()

    @property
    def local(self) -> bool:
        """A private local Ray this session started (not a cluster it joined)."""
        return self.started_ray and self.address is None

    # -- signals ----------------------------------------------------------------------
    def _install(self, again: bool = False) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # e.g. the driver task of a Ray Client sweep: its caller owns signals
        for sig in (signal.SIGINT, signal.SIGTERM):
            if not again:
                self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        if again:
            return
        # before Tune installs its own, SIGUSR1 must not take the default action (exit)
        self._previous[signal.SIGUSR1] = signal.getsignal(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)

    def _uninstall(self) -> None:
        for sig, handler in self._previous.items():
            try:
                signal.signal(sig, handler)
            except (TypeError, ValueError):
                pass
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self._signals_seen += 1
        if self._signals_seen == 1:
            self.stop_signal = signum
            self.out(f"{SIGNAL_NAMES.get(signum, signum)} received: stopping the sweep "
                     f"(checkpoints and every logged epoch are kept); press Ctrl-C again to "
                     f"stop at once")
            if not self.in_tune:
                raise SweepInterrupted(signum)
            return  # Tune is told at its next loop step (see StopForwarder)
        if self._signals_seen == 2:
            self.out("stopping at once")
            raise SweepInterrupted(self.stop_signal or signum, immediate=True)
        os._exit(128 + int(self.stop_signal or signum))

    in_tune = False

    def forward_to_tune(self) -> None:
        """Ask Tune to end its loop gracefully (called from Tune's own loop)."""
        if self.stop_signal is not None and not self._forwarded:
            self._forwarded = True
            os.kill(os.getpid(), signal.SIGUSR1)

    def check(self) -> None:
        """Raise the pending interrupt, if any (after Tune's loop ended)."""
        if self.stop_signal is not None:
            raise SweepInterrupted(self.stop_signal)


class StopForwarder(Callback):
    """Tune callback: forwards a pending stop request to Tune at its next loop step."""

    def __init__(self, session: RaySession | None):
        self.session = session

    def __getstate__(self):  # Tune pickles its run config; the session stays here
        return {"session": None}

    def on_step_begin(self, iteration, trials, **info):
        if self.session is not None:
            self.session.forward_to_tune()
