"""``raybrain submit`` / ``raybrain jobs``: refusals before anything is sent, and one real
sweep submitted as a Ray Job to a Ray whose dashboard (the Jobs API) is on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raybrain.cli import main
from raybrain.sweep.tracking import Tracker
from raybrain.ui import free_port
from tests.conftest import WAIT_S

VENV_BIN = str(Path(sys.executable).parent)


def _err(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if not ln.startswith("warning:")]
    return code, lines, captured.out


@pytest.fixture
def workdir(tmp_path, tiny_spec_dict, monkeypatch):
    import yaml

    wd = tmp_path / "project"
    wd.mkdir()
    d = {**tiny_spec_dict, "seeds": 4, "storage": {"path": str(tmp_path / "results")},
         "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}}
    (wd / "spec.yaml").write_text(yaml.safe_dump(d))
    monkeypatch.chdir(wd)
    return wd


@pytest.mark.unit
def test_submit_refusals_come_first_and_in_one_line(workdir, tmp_path, capsys, write_spec,
                                                    tiny_spec_dict):
    closed = f"http://127.0.0.1:{free_port()}"
    # a spec error beats an unreachable address
    bad = workdir / "bad.yaml"
    bad.write_text("name: x\ntask: b2m-memory\nparams: {alpha: 2.0}\n")
    code, lines, _ = _err(capsys, ["submit", "bad.yaml", "--address", closed])
    assert code == 2 and len(lines) == 1 and "alpha" in lines[0]
    # the spec must travel with the working directory
    outside = write_spec({**tiny_spec_dict, "seeds": 4}, name="outside.yaml")
    code, lines, _ = _err(capsys, ["submit", str(outside), "--address", closed,
                                   "--working-dir", str(workdir)])
    assert code == 2 and "not inside the working directory" in lines[0]
    # relative stores would vanish with the job's temporary copy
    code, lines, _ = _err(capsys, ["submit", "spec.yaml", "--address", closed,
                                   "--tracking-uri", "sqlite:///mlflow.db"])
    assert code == 2 and "relative" in lines[0] and "--tracking-uri http://" in lines[0]
    code, lines, _ = _err(capsys, ["submit", "spec.yaml", "--address", closed,
                                   "--storage-path", "results"])
    assert code == 2 and "storage.path 'results' is relative" in lines[0]
    # credentials never go on a command line (nor into the error)
    code, lines, _ = _err(capsys, ["submit", "spec.yaml", "--address", closed,
                                   "--tracking-uri", "http://bob:s3cret@127.0.0.1:5000"])
    assert code == 2 and "MLFLOW_TRACKING_PASSWORD" in lines[0] and "s3cret" not in lines[0]
    # all good but nobody listens
    code, lines, _ = _err(capsys, ["submit", "spec.yaml", "--address", closed])
    assert code == 2 and len(lines) == 1 and "no Ray Jobs API" in lines[0]
    code, lines, _ = _err(capsys, ["jobs", "status", "--address", closed])
    assert code == 2 and "needs a job id" in lines[0]


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        return True  # up, asking for the auth token
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def jobs_api(tmp_path_factory):
    """A Ray started with its dashboard (Ray Jobs API) on 127.0.0.1, next to the session's."""
    tmp = tmp_path_factory.mktemp("jobs")
    temp_dir = f"/tmp/rbjobs-{os.getpid()}"  # short: Ray's unix sockets live under it
    port = free_port()
    # `ray start`, as on a cluster's head, with the dashboard (Jobs API) on loopback; its
    # agent gets a port of its own (the default 52365 may be held by another Ray here)
    cmd = [os.path.join(VENV_BIN, "ray"), "start", "--head", "--block", "--num-cpus", "2",
           "--port", str(free_port()), "--temp-dir", temp_dir, "--include-dashboard", "true",
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(port),
           "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats"]
    env = {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ["PATH"]}
    out = tmp / "head.out"
    proc = subprocess.Popen(cmd, env=env, stdout=open(out, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + WAIT_S
        while not _answers(f"http://127.0.0.1:{port}/api/version"):
            assert proc.poll() is None and time.time() < deadline, out.read_text()[-2000:]
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", port
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", temp_dir], check=False)


@pytest.mark.integration
@pytest.mark.slow
def test_a_sweep_runs_as_a_ray_job(jobs_api, workdir, tmp_path, capsys):
    import psutil

    address, port = jobs_api
    listening = {c.laddr.ip for c in psutil.net_connections(kind="inet")
                 if c.status == "LISTEN" and c.laddr.port == port}
    assert listening == {"127.0.0.1"}  # the Jobs API is not reachable from other machines
    (workdir / ".venv").mkdir()  # excluded from the upload
    (workdir / ".venv" / "big.bin").write_bytes(b"0" * 1024)
    code = main(["submit", "spec.yaml", "--address", address, "--wait",
                 "--job-id", "raybrain-test-job", "--seeds", "2"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out[-3000:] + captured.err[-2000:]
    assert "submitted sweep 'tiny' as Ray Job raybrain-test-job" in out
    assert "config alpha=0.1" in out and "job raybrain-test-job: SUCCEEDED" in out
    assert main(["jobs", "status", "raybrain-test-job", "--address", address]) == 0
    assert "SUCCEEDED" in capsys.readouterr().out
    assert main(["jobs", "list", "--address", address]) == 0
    assert "sweep=tiny" in capsys.readouterr().out
    code, lines, _ = _err(capsys, ["jobs", "logs", "no-such-job", "--address", address])
    assert code == 2 and "no job 'no-such-job'" in lines[0]
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "raybrain")
    parent = tracker.find_parent("tiny")
    tracker.parent_id = parent.info.run_id
    runs = tracker.child_runs()
    # 2 configs x (brain, shuffled, noise) x 2 seeds + (2 l2 + none) x 2 seeds
    assert len(runs) == 18 and {r.info.status for r in runs} == {"FINISHED"}
    assert json.loads(parent.data.params["seeds"]) == 2


# --- what is sent, and what is not: a fake Jobs API records the submission ----------------
class _FakeJob:
    def __init__(self, submission_id, status, metadata):
        self.submission_id, self.job_id, self.status = submission_id, None, status
        self.metadata, self.entrypoint = metadata, "raybrain sweep ..."


class _FakeClient:
    def __init__(self, jobs=(), statuses=("SUCCEEDED",)):
        self.jobs, self.statuses, self.submitted = list(jobs), list(statuses), []

    def list_jobs(self):
        return self.jobs

    def submit_job(self, **kwargs):
        self.submitted.append(kwargs)
        return kwargs["submission_id"] or "raysubmit_fake"

    def get_job_status(self, job_id):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if isinstance(status, BaseException):
            raise status
        return status

    def get_job_logs(self, job_id):
        return "sweep 'tiny' search stage\n"


@pytest.fixture
def fake_api(monkeypatch):
    import raybrain.jobs

    def install(client):
        monkeypatch.setattr(raybrain.jobs, "_client", lambda address: client)
        return client
    return install


@pytest.mark.unit
def test_submit_sends_entrypoint_package_and_metadata_and_no_secrets(workdir, capsys, fake_api,
                                                                     monkeypatch):
    import shlex

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-secret")
    (workdir / "mlflow.env").write_text("MLFLOW_TRACKING_PASSWORD=hunter2-secret\n")
    client = fake_api(_FakeClient())
    code = main(["submit", "spec.yaml", "--address", "http://head:8265", "--name", "tiny-2",
                 "--seeds", "4", "--max-configs", "1", "--resume", "--job-id", "j1"])
    out = capsys.readouterr().out
    assert code == 0
    (sub,) = client.submitted
    assert shlex.split(sub["entrypoint"]) == [
        "raybrain", "sweep", "spec.yaml", "--address", "auto", "--name", "tiny-2", "--seeds",
        "4", "--max-configs", "1", "--resume"]
    assert sub["runtime_env"]["working_dir"] == str(workdir)
    assert set(sub["runtime_env"]) == {"working_dir", "excludes"}  # no env_vars: no secrets
    assert sub["metadata"] == {"raybrain.sweep": "tiny-2", "raybrain.spec": "spec.yaml"}
    assert sub["submission_id"] == "j1"
    assert "hunter2" not in repr(sub)
    assert "raybrain jobs status j1 --address http://head:8265" in out
    assert "raybrain jobs logs j1 --address http://head:8265" in out


@pytest.mark.unit
def test_shipped_package_leaves_out_secrets_stores_and_environments(tmp_path):
    """Ray's own packager (what submit_job uploads) with raybrain's excludes."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    from raybrain.jobs import EXCLUDES

    wd = tmp_path / "wd"
    for rel in ["spec.yaml", "data/brain.npz", "mlflow.env", ".env", "mlflow.db",
                "mlflow.db-journal", ".venv/lib/x.py", ".git/config", "raybrain_results/a",
                "raybrain_report/tiny/index.html", "raybrain.egg-info/PKG-INFO", "pkg/m.pyc"]:
        (wd / rel).parent.mkdir(parents=True, exist_ok=True)
        (wd / rel).write_text("x")
    create_package(str(wd), tmp_path / "pkg.zip", include_gitignore=True, excludes=EXCLUDES)
    names = {n for n in zipfile.ZipFile(tmp_path / "pkg.zip").namelist() if not n.endswith("/")}
    assert names == {"spec.yaml", "data/brain.npz"}


@pytest.mark.unit
def test_submit_refuses_a_sweep_that_is_already_running(workdir, capsys, fake_api):
    client = fake_api(_FakeClient(jobs=[_FakeJob("old", "SUCCEEDED", {"raybrain.sweep": "tiny"}),
                                        _FakeJob("live", "RUNNING", {"raybrain.sweep": "tiny"})]))
    code, lines, _ = _err(capsys, ["submit", "spec.yaml", "--address", "http://head:8265"])
    assert code == 2 and len(lines) == 1
    assert "sweep 'tiny' is already running as Ray Job live" in lines[0]
    assert "raybrain jobs stop live" in lines[0] and client.submitted == []
    # another sweep's live job is no obstacle
    code, _, _ = _err(capsys, ["submit", "spec.yaml", "--address", "http://head:8265",
                               "--name", "other"])
    assert code == 0 and len(client.submitted) == 1


@pytest.mark.unit
def test_ctrl_c_while_waiting_leaves_the_job_running(workdir, capsys, fake_api):
    fake_api(_FakeClient(statuses=["RUNNING", KeyboardInterrupt()]))
    code = main(["submit", "spec.yaml", "--address", "http://head:8265", "--wait",
                 "--job-id", "j2"])
    err = capsys.readouterr().err
    assert code == 130
    assert "job j2 keeps running" in err and "raybrain jobs stop j2" in err
    assert "run the same command again" not in err  # that would submit a second driver
    fake_api(_FakeClient(statuses=["RUNNING", "FAILED"]))
    assert main(["submit", "spec.yaml", "--address", "http://head:8265", "--wait"]) == 1
    assert "job raysubmit_fake: FAILED" in capsys.readouterr().out


@pytest.mark.unit
def test_submit_refuses_data_outside_the_working_dir_and_bad_counts(workdir, capsys, fake_api,
                                                                     tiny_spec_dict, tmp_path):
    import yaml

    client = fake_api(_FakeClient())
    d = yaml.safe_load((workdir / "spec.yaml").read_text())
    d["data"] = {**d["data"], "source": "npz", "path": "../brain.npz"}
    (tmp_path / "brain.npz").write_bytes(b"")  # exists here, would not exist on the cluster
    (workdir / "npz.yaml").write_text(yaml.safe_dump(d))
    code, lines, _ = _err(capsys, ["submit", "npz.yaml", "--address", "http://head:8265"])
    assert code == 2 and len(lines) == 1
    assert "data.path '../brain.npz' lies outside the working directory" in lines[0]
    # the same for driving sessions and spike sessions, wherever the path sits
    drive = {**d, "task": "b2m-driving", "params": {"alpha": {"grid": [0.1]}},
             "data": {"source": "files", "sessions": [
                 {"eeg": "rec/sub-01.bdf", "frames": "../sub-01_frames.npy"}]}}
    (workdir / "rec").mkdir()
    (workdir / "rec" / "sub-01.bdf").write_bytes(b"")
    (tmp_path / "sub-01_frames.npy").write_bytes(b"")
    (workdir / "drive.yaml").write_text(yaml.safe_dump(drive))
    code, lines, _ = _err(capsys, ["submit", "drive.yaml", "--address", "http://head:8265"])
    assert code == 2 and len(lines) == 1
    assert "data.sessions[0].frames '../sub-01_frames.npy' lies outside" in lines[0]
    spikes = {**d, "data": {**d["data"], "source": "spikes", "path": None,
                            "spikes": ["../ses1.npz"]}}
    (workdir / "spikes.yaml").write_text(yaml.safe_dump(spikes))
    code, lines, _ = _err(capsys, ["submit", "spikes.yaml", "--address", "http://head:8265"])
    assert code == 2 and "data.spikes[0] '../ses1.npz' lies outside" in lines[0]
    # counts the sweep command would refuse are refused here, before any upload
    for flag in ("--max-configs", "--seeds"):
        with pytest.raises(SystemExit) as exit_:
            main(["submit", "spec.yaml", "--address", "http://head:8265", flag, "0"])
        assert exit_.value.code == 2
    assert client.submitted == []
