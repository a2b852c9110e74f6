"""A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: one GCS, one
raylet per node, each node its own resources): sweeps spread over both nodes, survive a
node removed mid-run, and run through Ray Client with the driver on the head node."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from raybrain.ui import free_port
from tests.conftest import WAIT_S
from tests.conftest import sweep_runs as _runs

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    client_port = free_port()
    c = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "ray_client_server_port": client_port,
        # the head is the one non-preemptible node: trial drivers may run only here
        "resources": {"raybrain_driver": 1},
        # notice a lost node within ~2 s rather than Ray's default ~30 s
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_failure_threshold": 4}})
    c.client_port = client_port
    c.worker = c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def _spec(tiny_spec_dict, name, tmp_path, epochs=16):
    d = {**tiny_spec_dict, "name": name,
         "data": {**tiny_spec_dict["data"], "n_train_episodes": 48},
         "params": {**tiny_spec_dict["params"], "epochs": epochs},
         "arms": {"include": ["brain", "none"]},
         # every epoch: the node-loss tests check the resume starts from the latest one
         "storage": {"path": str(tmp_path / "results"), "checkpoint_every": 1},
         # each epoch reaches MLflow at once: the tests watch runs train there
         "tracking": {"flush_s": 0}}
    return d


def _sweep_cmd(path, address, uri, *extra):
    return [sys.executable, "-m", "raybrain.cli", "sweep", str(path), "--address", address,
            "--tracking-uri", uri, *extra]


def test_gpu_runs_queue_as_demand_on_a_cluster_scaled_to_zero_gpus(cluster, tmp_path,
                                                                    write_spec, tiny_spec_dict):
    """No GPU node yet: the sweep is not refused; its runs' Train workers wait as pending
    {GPU, CPU} placement-group demand, which is what an autoscaler scales up for."""
    from ray.autoscaler.v2.sdk import get_cluster_status

    d = {**_spec(tiny_spec_dict, "gpu-demand", tmp_path, epochs=2),
         "resources": {"use_gpu": True, "cpus_per_run": 1, "gpus_per_worker": 1}, "seeds": 1}
    d["params"]["alpha"] = {"grid": [0.1]}
    d["arms"] = {"include": ["brain"]}
    path = write_spec(d)
    log = tmp_path / "driver.log"
    proc = subprocess.Popen(_sweep_cmd(path, cluster.address, f"sqlite:///{tmp_path}/m.db"),
                            cwd=tmp_path, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    demand = []
    try:
        deadline = time.time() + WAIT_S
        while time.time() < deadline and proc.poll() is None and not demand:
            time.sleep(1.0)
            pending = get_cluster_status(cluster.address).resource_demands.placement_group_demand
            demand = [b.bundle for g in pending for b in g.bundles_by_count
                      if b.bundle.get("GPU", 0) >= 1]
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        proc.kill()
        proc.wait(timeout=WAIT_S)
    assert demand == [{"GPU": 1.0, "CPU": 1.0}], log.read_text()[-3000:]
    text = log.read_text()
    assert "use_gpu=True" in text and "pending demand" in text


def test_sweep_spreads_over_nodes_and_survives_a_lost_node(cluster, tmp_path, write_spec,
                                                           tiny_spec_dict):
    """Runs execute on both nodes; the node holding a config is removed mid-run (kill, no
    drain), a replacement joins as an autoscaler would add one, and that config's runs
    resume from their checkpoint on it and finish: every epoch logged exactly once."""
    d = _spec(tiny_spec_dict, "two-nodes", tmp_path)
    path = write_spec(d)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    head_id = cluster.head_node.node_id
    lost_id = cluster.worker.node_id
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(_sweep_cmd(path, cluster.address, uri), cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    seen_on_lost: dict[str, int] = {}
    replacement = None
    try:
        deadline = time.time() + WAIT_S
        while proc.poll() is None and time.time() < deadline:
            time.sleep(0.3)
            try:
                _, _, runs = _runs(uri, "two-nodes")
            except Exception:  # the store is being created
                continue
            on_lost = {r.data.tags["raybrain.run_key"]: int(r.data.tags["raybrain.last_epoch"])
                       for r in runs if r.data.tags.get("raybrain.node_id") == lost_id
                       and r.info.status == "RUNNING"}
            if on_lost and min(on_lost.values()) >= 3:
                seen_on_lost = on_lost
                cluster.remove_node(cluster.worker, allow_graceful=False)
                replacement = cluster.add_node(num_cpus=1)
                break
        assert seen_on_lost, "no config trained on the second node: " + (
            tmp_path / "driver.log").read_text()[-3000:]
        assert proc.wait(timeout=WAIT_S) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    tracker, parent, runs = _runs(uri, "two-nodes")
    # planned: 2 configs x brain x 2 seeds + the none baseline x 2 seeds
    from tests.test_faults import fault_outcome

    outcome = fault_outcome("node_removed_mid_run", 6, runs,
                            {"runs_on_lost_node": len(seen_on_lost)})
    assert outcome["child_runs"] == outcome["finished"] == 6, outcome
    assert outcome["duplicated"] == 0 and outcome["lost"] == 0, outcome
    nodes = {r.data.tags["raybrain.run_key"]: r.data.tags["raybrain.node_id"] for r in runs}
    # the runs that lost their node finished elsewhere (the replacement, or the head once
    # its own config was done), from their checkpoint
    for key, epoch_at_loss in seen_on_lost.items():
        run = next(r for r in runs if r.data.tags["raybrain.run_key"] == key)
        assert nodes[key] in (replacement.node_id, head_id)
        assert int(run.data.tags["raybrain.resumed_from_epoch"]) >= epoch_at_loss
    # the other config never left the head node: both original nodes executed runs
    assert {nodes[k] for k in nodes if k not in seen_on_lost} == {head_id}
    for r in runs:
        assert r.info.status == "FINISHED"
        steps = [m.step for m in tracker.client.get_metric_history(r.info.run_id, "test_accuracy")]
        assert sorted(steps) == list(range(1, 17))  # every epoch once: none lost, none twice


def test_ray_client_address_runs_the_driver_on_the_head(cluster, tmp_path, write_spec,
                                                        tiny_spec_dict):
    """``--address ray://HOST:PORT``: validated here, driven from the head node, lines
    streamed back; a relative tracking store is refused first, in one line."""
    d = _spec(tiny_spec_dict, "via-client", tmp_path, epochs=2)
    d["params"]["alpha"] = {"grid": [0.2]}
    path = write_spec(d)
    address = f"ray://127.0.0.1:{cluster.client_port}"
    bad = subprocess.run(_sweep_cmd(path, address, "sqlite:///mlflow.db"), cwd=tmp_path,
                         capture_output=True, text=True, timeout=WAIT_S)
    assert bad.returncode == 2
    errors = [ln for ln in bad.stderr.splitlines() if not ln.startswith("warning:")]
    assert len(errors) == 1 and "MLflow server" in errors[0] and "Traceback" not in bad.stderr
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = subprocess.run(_sweep_cmd(path, address, uri), cwd=tmp_path, capture_output=True,
                         text=True, timeout=WAIT_S,
                         env={**os.environ, "RAYBRAIN_PSEUDONYM_KEY_FILE": str(tmp_path / "k")})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "runs on the cluster's head node" in out.stdout
    assert "config alpha=0.2" in out.stdout  # the verdict table, printed by the remote driver
    _, parent, runs = _runs(uri, "via-client")
    assert parent is not None and len(runs) == 4
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert parent.data.tags["raybrain.driver_node_id"] == cluster.head_node.node_id


def test_torch_trainer_run_resumes_on_a_new_node_from_its_checkpoint(cluster, tmp_path,
                                                                     write_spec, tiny_spec_dict):
    """A run trained by a TorchTrainer (2 workers) loses its node mid-run: Ray Train's
    failure config restarts the worker group on the node that replaces it, from the run's
    last checkpoint; the trial driver, held on the head by its custom resource, lives on."""
    d = {**_spec(tiny_spec_dict, "train-node-loss", tmp_path, epochs=12), "seeds": 1,
         "resources": {"num_workers": 2, "cpus_per_run": 0.5,
                       "driver_resources": {"raybrain_driver": 0.01}}}
    d["params"]["alpha"] = {"grid": [0.1]}
    d["arms"] = {"include": ["brain"]}
    path = write_spec(d)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    nodes = {n.node_id: n for n in cluster.worker_nodes}
    log = tmp_path / "driver.log"
    proc = subprocess.Popen(_sweep_cmd(path, cluster.address, uri), cwd=tmp_path,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    lost = at_loss = None
    try:
        deadline = time.time() + WAIT_S
        while proc.poll() is None and time.time() < deadline and lost is None:
            time.sleep(0.3)
            try:
                _, _, runs = _runs(uri, "train-node-loss")
            except Exception:
                continue
            if runs and int(runs[0].data.tags.get("raybrain.last_epoch", 0)) >= 3:
                lost = runs[0].data.tags["raybrain.node_id"]
                at_loss = int(runs[0].data.tags["raybrain.last_epoch"])
                assert lost in nodes, "the Train workers ran on the head"
                cluster.remove_node(nodes[lost], allow_graceful=False)
                cluster.add_node(num_cpus=1)  # as an autoscaler would
        assert lost is not None, log.read_text()[-3000:]
        assert proc.wait(timeout=WAIT_S) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    tracker, parent, runs = _runs(uri, "train-node-loss")
    assert parent.data.tags["raybrain.execution"].startswith("ray-train TorchTrainer")
    from tests.test_faults import fault_outcome

    outcome = fault_outcome("torch_trainer_node_removed", 1, runs, {"epoch_at_loss": at_loss})
    assert outcome == {**outcome, "child_runs": 1, "finished": 1, "duplicated": 0, "lost": 0}
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.data.tags["raybrain.node_id"] != lost
    assert int(run.data.tags["raybrain.resumed_from_epoch"]) >= at_loss
    steps = [m.step for m in tracker.client.get_metric_history(run.info.run_id, "test_accuracy")]
    assert sorted(steps) == list(range(1, 13))
