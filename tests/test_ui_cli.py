"""``raybrain ui``: its one-line errors (exit 2) and a real start, URL and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from raybrain.cli import main
from raybrain.ui import MlflowServer
from tests.conftest import WAIT_S


def _run_ui(capsys, *args):
    code = main(["ui", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.unit
def test_missing_sqlite_file_is_one_line_exit_2_and_creates_nothing(tmp_path, capsys):
    db = tmp_path / "nope.db"
    code, out, err = _run_ui(capsys, "--tracking-uri", f"sqlite:///{db}")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert f"sqlite:///{db}" in err and "does not exist" in err
    assert not db.exists()


@pytest.mark.unit
def test_default_uri_is_mlflow_db_in_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run_ui(capsys)
    assert code == 2 and err.count("\n") == 1
    assert "'sqlite:///mlflow.db'" in err and str(tmp_path / "mlflow.db") in err
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.unit
def test_http_uri_is_refused_with_what_to_do(capsys):
    code, _, err = _run_ui(capsys, "--tracking-uri", "http://mlflow:5000")
    assert code == 2 and err.count("\n") == 1
    assert "already an MLflow server" in err and "http://mlflow:5000" in err


@pytest.mark.unit
def test_urls_open_the_runs_view():
    server = MlflowServer("postgresql://db/mlflow", port=5123)
    assert server.url == "http://127.0.0.1:5123"
    assert server.experiment_url("7") == \
        "http://127.0.0.1:5123/#/experiments/7?workflowType=machine_learning"
    assert server.run_url("7", "abc") == \
        "http://127.0.0.1:5123/#/experiments/7/runs/abc?workflowType=machine_learning"
    cmd = server.command()
    assert cmd[cmd.index("--allowed-hosts") + 1] == "127.0.0.1:5123,localhost:5123"
    assert cmd[cmd.index("--workers") + 1] == "1"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real MLflow SQLite store holding the parent runs of two sweeps (no Ray)."""
    from raybrain.sweep.tracking import Tracker

    path = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)  # artifacts (spec.json) go to ./mlruns
        uri = f"sqlite:///{path}/mlflow.db"
        tracker = Tracker(uri, "raybrain")
        ids = {name: tracker.open_parent(name, "hash", {"task": "b2m-memory"})
               for name in ("alpha-grid", "beta-optuna")}
    return uri, tracker.experiment_id, ids


@pytest.mark.integration
def test_unknown_sweep_names_it_and_lists_the_known_ones(store, capsys):
    uri, _, _ = store
    code, out, err = _run_ui(capsys, "--tracking-uri", uri, "--sweep", "gamma")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "'gamma'" in err and "known sweeps: alpha-grid, beta-optuna" in err


@pytest.mark.integration
def test_unknown_experiment_says_so(store, capsys):
    uri, _, _ = store
    code, _, err = _run_ui(capsys, "--tracking-uri", uri, "--experiment", "other",
                           "--sweep", "alpha-grid")
    assert code == 2 and err.count("\n") == 1
    assert "'other'" in err and "known sweeps: none" in err


@pytest.mark.integration
def test_ui_serves_prints_the_sweep_url_and_stops_on_ctrl_c(store, tmp_path):
    """The real command: it prints the parent run's URL, the server answers it through the
    REST API the page uses, and SIGINT (Ctrl-C) stops the server and exits 0."""
    uri, experiment_id, ids = store
    proc = subprocess.Popen([sys.executable, "-m", "raybrain.cli", "ui", "--tracking-uri", uri,
                             "--sweep", "beta-optuna"], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not (lines and lines[-1].startswith("sweep ")):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        assert len(lines) == 3, (lines, proc.poll(), proc.stderr.read() if proc.poll() else "")
        base = lines[0].split(": ")[-1].split()[0]
        assert base.startswith("http://127.0.0.1:")
        assert lines[1] == (f"experiment 'raybrain': {base}/#/experiments/{experiment_id}"
                            f"?workflowType=machine_learning")
        assert lines[2] == (f"sweep 'beta-optuna': {base}/#/experiments/{experiment_id}/runs/"
                            f"{ids['beta-optuna']}?workflowType=machine_learning")
        with urllib.request.urlopen(f"{base}/ajax-api/2.0/mlflow/runs/get?run_id="
                                    f"{ids['beta-optuna']}", timeout=WAIT_S) as r:
            assert json.load(r)["run"]["info"]["run_name"] == "beta-optuna"
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=WAIT_S) == 0
        assert "stopping the MLflow server" in proc.stderr.read()
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"{base}/health", timeout=5)
    finally:
        if proc.poll() is None:  # SIGTERM: the command stops its server, as on Ctrl-C
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.integration
def test_a_server_that_dies_is_one_error_with_its_last_output(tmp_path):
    from raybrain.ui import ServerError

    bad = tmp_path / "mlflow.db"
    bad.write_text("not a database\n")
    server = MlflowServer(f"sqlite:///{bad}")
    with pytest.raises(ServerError, match=r"exited with code \d+ .*file is not a database") as err:
        server.start()
    assert "\n" not in str(err.value)
    assert server.proc is None  # stopped and reaped
