"""Where trials may run and how many at once: demand per trial, concurrency from what the
cluster has or can scale to, ``use_gpu: auto``, and the private local Ray's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from raybrain.errors import SpecError
from raybrain.sweep import parse_spec
from raybrain.sweep.cluster import (concurrency, launcher_max_resources,
                                    ray_init_kwargs, resolve_use_gpu, trial_demand)

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]


def _res(**kw):
    return parse_spec({"name": "x", "task": "b2m-memory", "resources": kw}).resources


def test_trial_demand_sums_train_workers_and_driver_resources():
    res = _res(num_workers=4, cpus_per_run=2, gpus_per_worker=0.5,
               driver_resources={"raybrain_driver": 0.01})
    assert trial_demand(res, use_train=True, use_gpu=True) == {
        "CPU": 8.0, "GPU": 2.0, "raybrain_driver": 0.01}
    assert trial_demand(res, use_train=True, use_gpu=False) == {"CPU": 8.0, "raybrain_driver": 0.01}
    assert trial_demand(_res(cpus_per_run=3), use_train=False, use_gpu=False) == {"CPU": 3.0}


def test_concurrency_counts_what_the_cluster_can_scale_to():
    need = {"CPU": 8.0, "GPU": 2.0}
    # scaled to zero GPU workers now, but the autoscaler may bring up 6 GPUs: 3 configs
    assert concurrency(need, {"CPU": 64.0, "GPU": 6.0}, n_configs=10) == 3
    assert concurrency(need, {"CPU": 64.0, "GPU": 6.0}, n_configs=2) == 2
    # nothing known about GPUs: they do not limit the count (trials wait as demand)
    assert concurrency(need, {"CPU": 16.0}, n_configs=10) == 2
    assert concurrency({"CPU": 1.0}, {"CPU": 0.5}, n_configs=4) == 1


def test_use_gpu_auto_and_a_local_ray_without_gpu():
    assert resolve_use_gpu("auto", {"CPU": 2.0}, local=True) is False
    assert resolve_use_gpu("auto", {"CPU": 2.0, "GPU": 8.0}, local=False) is True
    assert resolve_use_gpu(True, {"CPU": 2.0}, local=False) is True  # queues for the autoscaler
    with pytest.raises(SpecError, match="no GPU"):
        resolve_use_gpu(True, {"CPU": 2.0}, local=True)


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_config_gives_the_gpus_a_cluster_can_add(name):
    cap = launcher_max_resources(ROOT / "clusters" / name)
    assert cap is not None and cap["GPU"] >= 1 and cap.get("raybrain_driver", 0) > 0
    assert resolve_use_gpu("auto", cap, local=False) is True


def test_missing_launcher_config_is_unknown(tmp_path):
    assert launcher_max_resources(tmp_path / "absent.yaml") is None
    (tmp_path / "bad.yaml").write_text("just: [a, list")
    assert launcher_max_resources(tmp_path / "bad.yaml") is None


def test_private_local_ray_and_loopback_dashboard():
    kw = ray_init_kwargs(None, num_cpus=2, dashboard=True)
    # "local": a new instance even when another Ray runs on this machine
    assert kw["address"] == "local" and kw["num_cpus"] == 2
    assert kw["_node_ip_address"] == "127.0.0.1"  # its node address is loopback
    assert kw["include_dashboard"] is True and kw["dashboard_host"] == "127.0.0.1"
    assert ray_init_kwargs(None)["include_dashboard"] is False
    assert ray_init_kwargs("auto")["address"] == "auto"
    assert "num_cpus" not in ray_init_kwargs("auto")


def test_the_ray_token_is_only_offered_to_this_machine(monkeypatch, tmp_path):
    import os

    from raybrain.sweep.remote import use_ray_token

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    use_ray_token("ray://head.example.org:10001")
    use_ray_token("http://10.0.0.5:8265")
    assert "RAY_AUTH_MODE" not in os.environ  # a remote host gets no token unasked
    use_ray_token("http://127.0.0.1:8265")
    assert os.environ["RAY_AUTH_MODE"] == "token"


_LISTENERS = """
import json, psutil, ray, sys, time
from raybrain.sweep.cluster import ray_init_kwargs
ctx = ray.init(**ray_init_kwargs(None, num_cpus=1, dashboard=True))
port = int(ctx.dashboard_url.rsplit(":", 1)[1])
ips = set()
deadline = time.time() + float(sys.argv[1])
while not ips and time.time() < deadline:  # the dashboard serves the Jobs API once it is up
    ips = {c.laddr.ip for c in psutil.net_connections(kind="inet")
           if c.status == "LISTEN" and c.laddr.port == port}
    if not ips:
        time.sleep(0.25)
from ray.job_submission import JobSubmissionClient
jobs = JobSubmissionClient("http://" + ctx.dashboard_url).list_jobs()
print(json.dumps({"url": ctx.dashboard_url, "ips": sorted(ips),
                  "jobs": sorted(str(j.type).rsplit(".", 1)[-1] for j in jobs)}))
ray.shutdown()
"""


@pytest.mark.integration
def test_the_dashboard_and_jobs_api_raybrain_starts_listen_on_loopback_only():
    """A real private Ray with ``--dashboard``: its dashboard (which serves the Jobs API)
    accepts connections on 127.0.0.1 and on no other interface."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import WAIT_S

    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    out = subprocess.run([sys.executable, "-c", _LISTENERS, str(WAIT_S)], capture_output=True,
                         text=True, timeout=2 * WAIT_S, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["url"].startswith("127.0.0.1:")
    assert got["ips"] == ["127.0.0.1"], got
    assert got["jobs"] == ["DRIVER"]  # the Jobs API answered there, listing this driver
