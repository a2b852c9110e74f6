"""Multi-node scaling: throughput of one fixed sweep on 1 vs 2 local Ray nodes.

Starts real Ray nodes in this process with ``ray.cluster_utils.Cluster`` (a GCS, one
raylet per node, each node its own resources) and runs the same grid sweep through
``run_sweep(spec, address=cluster.address)`` twice, in one invocation:

A. a head node with 1 CPU;
B. a head node with 1 CPU plus one added node with 1 CPU.

One CPU per node, so the machine's 2 cores are not oversubscribed and the ideal throughput
ratio B / A is 2.0. The sweep: b2m-memory, alpha grid of 4 values x arms [brain, shuffled]
x 2 seeds = 4 Tune trials (one per config, ~15 s of training each) and 16 MLflow runs,
``cpus_per_run: 1``; each configuration gets its own MLflow SQLite store, Tune storage
and sweep name in a temp dir. Wall time is ``run_sweep`` end to end (connect, MLflow
set-up, trials, verdict, report); starting the cluster is timed apart.

To show that B used both nodes, the node of every run is read back: from the
``raybrain.node_id`` tag of the MLflow child runs when the driver writes it, else by
joining each Tune trial's reported ``pid`` (last line of its ``result.json``) with the
GCS actor table (actor pid -> node id; both nodes share one IP, so ``node_ip`` cannot
tell them apart). Figures go to stdout and ``bench/results/multinode.json``.

    .venv/bin/python bench/multinode.py [--epochs 16] [--out bench/results/multinode.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported

from raybrain.sweep import run_sweep  # noqa: E402
from raybrain.sweep.spec import SpecWarning, parse_spec  # noqa: E402

ALPHAS = [0.1, 0.2, 0.3, 0.4]
ARMS = ["brain", "shuffled"]
SEEDS = 2


def spec_dict(name: str, workdir: Path, epochs: int) -> dict:
    """The fixed sweep; only its name, MLflow store and storage path differ per run."""
    return {
        "name": name,
        "task": "b2m-memory",
        "data": {"source": "synthetic", "generator": "informative", "snr": 2.0,
                 "n_train_episodes": 100, "n_val_episodes": 50, "n_test_episodes": 100,
                 "pre_bins": 2, "post_bins": 3, "context_bins": 2,
                 "min_steps": 3, "max_steps": 8},
        "params": {"hidden": 64, "epochs": epochs, "batch_size": 8, "lr": 0.003,
                   "transfer": "latent", "alpha": {"grid": ALPHAS}},
        "search": {"algorithm": "grid", "metric": "test_accuracy_auc", "mode": "max",
                   "objective": "brain", "primary": "alpha"},
        "arms": {"include": ARMS},
        "seeds": SEEDS,
        "resources": {"cpus_per_run": 1},
        "tracking": {"uri": f"sqlite:///{workdir}/mlflow.db", "experiment": "raybrain"},
        "storage": {"path": str(workdir / "raybrain_results")},
    }


def trial_nodes(exp_dir: Path, actor_pid_node: dict[int, str]) -> tuple[Counter, list[dict]]:
    """Runs per node id from the Tune trial dirs: last result's pid -> actor's node."""
    per_node: Counter = Counter()
    trials = []
    for result in sorted(exp_dir.glob("config_*/result.json")):
        lines = [ln for ln in result.read_text().splitlines() if ln.strip()]
        if not lines:
            continue
        last = json.loads(lines[-1])
        node = actor_pid_node.get(int(last["pid"]), "?")
        per_node[node] += int(last.get("runs_total", 0))
        trials.append({"trial": result.parent.name, "pid": last["pid"],
                       "node_ip": last.get("node_ip"), "node_id": node,
                       "runs": last.get("runs_total"), "runs_done": last.get("runs_done")})
    return per_node, trials


def mlflow_nodes(res) -> tuple[Counter | None, int]:
    """Runs per ``raybrain.node_id`` tag of the sweep's child runs (None if untagged)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(res.tracking_uri)
    runs = client.search_runs([res.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{res.parent_run_id}'",
                              max_results=10000)
    tags = [r.data.tags.get("raybrain.node_id") for r in runs]
    if not runs or any(t is None for t in tags):
        return None, len(runs)
    return Counter(tags), len(runs)


def measure(n_nodes: int, epochs: int, base: Path) -> dict:
    """Start a fresh local cluster of ``n_nodes`` 1-CPU nodes, run the sweep, tear down."""
    import ray
    from ray.cluster_utils import Cluster

    name = f"multinode-{n_nodes}node"
    workdir = base / name
    workdir.mkdir()
    load_before = os.getloadavg()[0]  # other work on the same cores skews the figures
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(n_nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    startup = time.perf_counter() - t0
    node_ids = [n.node_id for n in cluster.list_all_nodes()]
    try:
        cwd = os.getcwd()
        os.chdir(workdir)  # the report and anything else relative lands in the temp dir
        try:
            spec = parse_spec(spec_dict(name, workdir, epochs), name)
            t0 = time.perf_counter()
            res = run_sweep(spec, address=cluster.address, out=lambda line: None)
            wall = time.perf_counter() - t0
        finally:
            os.chdir(cwd)
        # the GCS keeps dead actors: every Tune trial actor's pid and node
        actors = cluster.global_state.actor_table(None)
        pid_node = {int(a["Pid"]): a["Address"]["NodeID"] for a in actors.values()
                    if a.get("Pid")}
        by_trial, trials = trial_nodes(workdir / "raybrain_results" / name, pid_node)
        by_tag, n_runs = mlflow_nodes(res)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    return {"nodes": n_nodes, "cpus_per_node": 1, "node_ids": node_ids,
            "load_avg_1min_before": round(load_before, 2),
            "cluster_startup_s": round(startup, 2), "wall_s": round(wall, 2),
            "runs": n_runs, "runs_per_s": round(n_runs / wall, 4),
            "runs_per_node_tune": dict(by_trial),
            "runs_per_node_mlflow_tag": dict(by_tag) if by_tag is not None else None,
            "trials": trials}


def _role(node_id: str, node_ids: list[str]) -> str:
    """'head' or 'added' for a node id (or a prefix of one) of the measured cluster."""
    for i, full in enumerate(node_ids):
        if node_id and (full.startswith(node_id) or node_id.startswith(full)):
            return "head" if i == 0 else "added"
    return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=16,
                    help="epochs per run (16: ~15 s of training per config here)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "multinode.json"))
    args = ap.parse_args()
    logging.getLogger("ray").setLevel(logging.WARNING)
    # 2 seeds cannot reach p < 0.05: expected here, the verdict is not what is measured
    warnings.filterwarnings("ignore", category=SpecWarning)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    with tempfile.TemporaryDirectory(prefix="raybrain-multinode-") as d:
        os.environ.setdefault("RAYBRAIN_PSEUDONYM_KEY_FILE", str(Path(d) / "pseudonym.key"))
        one = measure(1, args.epochs, Path(d))
        two = measure(2, args.epochs, Path(d))
    ratio = (two["runs"] / two["wall_s"]) / (one["runs"] / one["wall_s"])

    n_configs, n_runs = len(ALPHAS), one["runs"]
    print(f"sweep: b2m-memory, {n_configs} configs (alpha {ALPHAS}) x arms {ARMS} x "
          f"{SEEDS} seeds = {n_runs} runs, {args.epochs} epochs, 1 CPU per trial")
    for r in (one, two):
        print(f"{r['nodes']} node(s) x 1 CPU: cluster start {r['cluster_startup_s']:.1f} s, "
              f"sweep wall {r['wall_s']:.1f} s, {r['runs_per_s']:.3f} runs/s "
              f"(load avg before: {r['load_avg_1min_before']:.1f})")
        for source in ("runs_per_node_mlflow_tag", "runs_per_node_tune"):
            if r[source] is not None:
                label = ("MLflow tag raybrain.node_id" if "mlflow" in source
                         else "Tune trial pid -> GCS actor node")
                counts = ", ".join(f"{_role(k, r['node_ids'])} {k[:12]}: {v}"
                                   for k, v in sorted(r[source].items()))
                print(f"    runs per node ({label}): {counts}")
    print(f"throughput ratio 2 nodes / 1 node: {ratio:.2f}  (ideal 2.00)")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import ray

    out.write_text(json.dumps({
        "bench": "multinode", "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "ray": ray.__version__},
        "sweep": {"task": "b2m-memory", "alpha": ALPHAS, "arms": ARMS, "seeds": SEEDS,
                  "epochs": args.epochs, "runs": n_runs, "trials": n_configs},
        "one_node": one, "two_nodes": two,
        "throughput_ratio": round(ratio, 3), "ideal_ratio": 2.0,
    }, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
