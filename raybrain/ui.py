"""Serve a sweep's MLflow store in the MLflow UI (``raybrain ui``).

:class:`MlflowServer` starts a real ``mlflow server`` process from this interpreter's
environment on a loopback port, waits until it answers ``/health`` and stops it (its
whole process group) on exit. The CLI and the browser tests use the same class.

Artifacts: runs that raybrain logs to a ``sqlite:///`` store keep their artifacts in a
local directory fixed when the experiment was created (``<cwd>/mlruns/<experiment_id>``),
and the server reads such local artifact locations directly, so the UI lists the parent
run's ``spec.json`` and ``verdict.csv`` whatever ``--artifacts-destination`` is.
``--artifacts-destination`` (``mlartifacts/`` next to the database) only receives the
artifacts of experiments created through the server itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

from raybrain.errors import SpecError

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "raybrain"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_ML_VIEW = "workflowType=machine_learning"


class ServerError(RuntimeError):
    """The MLflow server process died or did not answer in time (one-line message)."""


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``None`` for other schemes).

    ``sqlite:///mlflow.db`` is relative to the working directory, ``sqlite:////abs/x.db``
    absolute. An in-memory or empty sqlite URI raises :class:`SpecError`.
    """
    if not tracking_uri.startswith("sqlite:"):
        return None
    if (not tracking_uri.startswith("sqlite:///")
            or tracking_uri in ("sqlite:///", "sqlite:///:memory:")):
        raise SpecError(f"tracking URI {tracking_uri!r} names no database file; expected "
                        f"sqlite:///relative/path.db or sqlite:////absolute/path.db")
    return Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0])


def check_store(tracking_uri: str) -> None:
    """Refuse a store the UI cannot show: a sqlite file that does not exist.

    Checked before anything opens the URI, since opening a missing sqlite file creates it.
    """
    path = sqlite_path(tracking_uri)
    if path is not None and not path.is_file():
        raise SpecError(f"the MLflow store {tracking_uri!r} does not exist (no file "
                        f"{path.resolve()}); run a sweep first or pass --tracking-uri")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # as the server itself binds: connections of a stopped server in TIME_WAIT do
        # not make the port busy
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class MlflowServer:
    """A ``mlflow server`` process over a tracking store.

    Parameters
    ----------
    tracking_uri : str
        The backend store (``sqlite:///mlflow.db``, ``postgresql://...``). A sqlite file
        must exist (:class:`SpecError` otherwise).
    port : int, optional
        Port to listen on; a free one when omitted. A port in use raises SpecError.
    host : str
        Interface to bind (default loopback).
    artifacts_destination : str or Path, optional
        Where artifacts of experiments created through the server go; default
        ``mlartifacts/`` next to the sqlite file (next to the working directory otherwise).
    startup_timeout : float
        Seconds to wait for ``/health`` before giving up.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, tracking_uri: str = DEFAULT_URI, port: int | None = None,
                 host: str = "127.0.0.1", artifacts_destination: str | os.PathLike | None = None,
                 startup_timeout: float = 120.0):
        self.tracking_uri = tracking_uri
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        db = sqlite_path(tracking_uri)
        base = db.resolve().parent if db is not None else Path.cwd()
        self.artifacts_destination = Path(artifacts_destination or base / "mlartifacts").resolve()
        self.proc: subprocess.Popen | None = None
        self._log = None

    # -- addresses ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL a browser on this machine opens (loopback for a wildcard bind)."""
        if self.port is None:
            raise ServerError("the server has no port yet: call start() first")
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def experiment_url(self, experiment_id: str) -> str:
        """The experiment's runs table.

        ``workflowType=machine_learning``: MLflow 3.17's UI otherwise opens an
        experiment on its GenAI traces overview, which is empty for raybrain's runs.
        """
        return f"{self.url}/#/experiments/{experiment_id}?{_ML_VIEW}"

    def run_url(self, experiment_id: str, run_id: str) -> str:
        """A run's page (overview: params, metrics, parent or child runs; artifacts tab)."""
        return f"{self.url}/#/experiments/{experiment_id}/runs/{run_id}?{_ML_VIEW}"

    # -- process ------------------------------------------------------------------------
    def command(self) -> list[str]:
        """The ``mlflow server`` command line (port must be set)."""
        cmd = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", self.tracking_uri,
               "--artifacts-destination", str(self.artifacts_destination),
               "--host", self.host, "--port", str(self.port), "--workers", "1"]
        if self.host in _LOOPBACK:
            # MLflow 3's host-header check: only this server's own loopback names
            hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}",
                     f"{self.host}:{self.port}" if ":" not in self.host
                     else f"[{self.host}]:{self.port}"}
            cmd += ["--allowed-hosts", ",".join(sorted(hosts))]
        return cmd

    def start(self) -> "MlflowServer":
        """Start the server and block until ``/health`` answers.

        Raises
        ------
        SpecError
            The sqlite file is missing, or the requested port is in use.
        ServerError
            The process exited, or did not answer within ``startup_timeout`` s; the
            message ends with the last lines of its stderr.
        """
        if self.proc is not None:
            return self
        check_store(self.tracking_uri)
        if self.port is None:
            self.port = free_port(self.host)
        elif _port_in_use(self.host, self.port):
            raise SpecError(f"port {self.port} on {self.host} is in use; pick another "
                            f"--port or omit it to use a free one")
        self._log = tempfile.NamedTemporaryFile(prefix="raybrain-mlflow-", suffix=".log",
                                                delete=False)
        # no job runner: it starts ~7 more processes (huey consumers, periodic tasks that
        # write to the store) that only GenAI features use
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        # own session: a Ctrl-C in the terminal reaches us, and we stop the whole group
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        health = f"{self.url}/health"
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerError(f"mlflow server exited with code {code} before answering "
                                  f"on port {self.port}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(health, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"mlflow server did not answer {health} within "
                                  f"{self.startup_timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self, n: int = 5) -> str:
        """The last ``n`` non-empty lines of the server's output, joined with ' | '."""
        if self._log is None:
            return "(no output)"
        try:
            with open(self._log.name, errors="replace") as f:
                lines = deque((line.strip() for line in f if line.strip()), maxlen=n)
        except OSError:
            return "(no output)"
        return " | ".join(lines) or "(no output)"

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after ``timeout``)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc is not None:
            # the group may outlive its leader for a moment (uvicorn's worker)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log is not None:
            self._log.close()
            try:
                os.unlink(self._log.name)
            except OSError:
                pass
            self._log = None

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def lookup(tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT,
           sweep: str | None = None) -> tuple[str | None, str | None]:
    """The experiment id and (with ``sweep``) the sweep's parent run id in a store.

    Never creates anything: the sqlite file must exist, and a missing experiment gives
    ``(None, None)`` without ``sweep``.

    Raises
    ------
    SpecError
        The sqlite file is missing, or ``sweep`` names no sweep of the experiment (the
        message lists the sweeps it has).
    """
    import logging

    check_store(tracking_uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    try:
        exp = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    except Exception as err:  # a driver that is not installed, a server that refuses us
        first = (str(err).strip().splitlines() or [""])[0]
        raise SpecError(f"cannot read the MLflow store {tracking_uri}: "
                        f"{type(err).__name__}: {first}") from None
    if exp is None or exp.lifecycle_stage == "deleted":
        if sweep is not None:
            raise SpecError(f"no sweep {sweep!r} in {tracking_uri}: it has no experiment "
                            f"{experiment!r} (known sweeps: none)")
        return None, None
    if sweep is None:
        return exp.experiment_id, None
    from raybrain.sweep.tracking import PARENT_TAG, Tracker

    tracker = Tracker(tracking_uri, experiment)  # the experiment exists: creates nothing
    parent = tracker.find_parent(sweep)
    if parent is None:
        known = sorted({r.data.tags.get(PARENT_TAG, "?") for r in tracker.client.search_runs(
            [tracker.experiment_id], filter_string="tags.`raybrain.role` = 'sweep'",
            max_results=1000)})
        raise SpecError(f"no sweep {sweep!r} in {tracking_uri} (experiment {experiment!r}); "
                        f"known sweeps: {', '.join(known) if known else 'none'}")
    return exp.experiment_id, parent.info.run_id
