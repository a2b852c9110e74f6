"""``raybrain sweep SPEC --address ray://HOST:10001``: the sweep's driver runs on the cluster.

Through Ray Client, the laptop holds only a proxy. The sweep's driver (Tune's loop, the
MLflow writer, the verdict) must outlive a laptop going to sleep and write MLflow from
inside the cluster, so it runs as one Ray task pinned to the head node; its progress lines
stream back through a queue actor and are printed here. The spec is validated on the
laptop first; paths in it (tracking store, storage, data files) are read on the cluster,
so relative ones are refused.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from raybrain.errors import SpecError, SweepFailed, TrackingUnavailable
from raybrain.sweep.cluster import is_server_uri


def check_remote_paths(spec, where: str) -> None:
    """Refuse paths that would resolve somewhere else on the cluster than here."""
    uri = spec.tracking.uri
    if not is_server_uri(uri) and not uri.startswith(("sqlite:////", "databricks")):
        raise SpecError(
            f"{where}, the sweep's driver runs on the cluster, where tracking URI {uri!r} "
            f"would point at a different or temporary place; pass an MLflow server "
            f"(--tracking-uri http://MLFLOW_HOST:5000) or an absolute sqlite:////path on a "
            f"shared filesystem")
    path = spec.storage.path
    if "://" not in path and not path.startswith(("/", "~")):
        raise SpecError(
            f"{where}, storage.path {path!r} is relative to a directory on the cluster; give "
            f"a path every node sees (NFS) or an object store URI (s3://BUCKET/raybrain)")


def use_ray_token(address: str) -> None:
    """Present the Ray auth token, when there is one, to a cluster that asks for it.

    Ray 2.60 heads enable token authentication when a token exists, while Ray Client
    only sends it with ``RAY_AUTH_MODE=token``. The token itself stays where Ray reads it
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``); raybrain never
    reads, prints or logs it. Only for a loopback address (this machine, or an SSH tunnel
    such as ``ray dashboard``): a token is not sent to another host unless the user sets
    ``RAY_AUTH_MODE=token`` themselves.
    """
    import os
    from pathlib import Path
    from urllib.parse import urlsplit

    if "RAY_AUTH_MODE" in os.environ:
        return
    host = urlsplit(address if "://" in address else f"//{address}").hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return
    if (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def _head_node_id() -> str:
    import ray

    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return node["NodeID"]
    raise SpecError("the Ray cluster reports no live head node; expected one to run the "
                    "sweep's driver on")


def _driver_task(spec_json: str, queue, kwargs: dict[str, Any]):
    """Body of the remote driver: run the sweep, send every line to the client."""
    from raybrain.sweep.driver import run_sweep
    from raybrain.sweep.spec import Spec

    spec = Spec.model_validate_json(spec_json)
    result = run_sweep(spec, out=lambda line: queue.put(line), **kwargs)
    return {"parent_run_id": result.parent_run_id, "tracking_uri": result.tracking_uri,
            "experiment_id": result.experiment_id, "wall_s": result.wall_s,
            "chosen": result.chosen}


def run_remote(spec, address: str, *, source: str = "spec",
               out: Callable[[str], None] | None = None, resume: bool = False,
               name: str | None = None, seeds: int | None = None,
               max_configs: int | None = None, tracking_uri: str | None = None,
               storage_path: str | None = None, **ignored):
    """Check the spec here, connect through Ray Client, run the driver on the head node
    (where the same preflight runs again against the cluster's storage), stream its lines."""
    import ray
    from ray.util.queue import Empty, Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from raybrain.sweep.driver import SweepResult
    from raybrain.sweep.preflight import Overrides, preflight

    out = out or (lambda line: print(line, flush=True))
    given = dict(name=name, seeds=seeds, max_configs=max_configs, tracking_uri=tracking_uri,
                 storage_path=storage_path)
    pre = preflight(spec, source, overrides=Overrides(**given), resume=resume,
                    address=address, read_storage=False)
    check_remote_paths(pre.spec, f"with --address {address}")
    t0 = time.time()
    use_ray_token(address)
    for attempt in (1, 2):
        try:
            ray.init(address=address, log_to_driver=False)
            break
        except ConnectionError as err:
            # the client server starts one server process per connection, which now and
            # then fails to come up: one more try before giving up
            if attempt == 2:
                reason = next((ln for ln in str(err).splitlines() if ln.strip()), "")
                raise SpecError(f"--address {address}: no Ray Client server answered "
                                f"({reason}); expected a cluster started with "
                                f"'ray start --head' (client port 10001)") from None
            time.sleep(2.0)
    try:
        queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy":
                                     NodeAffinitySchedulingStrategy(_head_node_id(), soft=False)})
        task = ray.remote(num_cpus=0, max_retries=0)(_driver_task).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(_head_node_id(), soft=False))
        ref = task.remote(spec.model_dump_json(), queue,
                          {"source": source, "resume": resume, **given})
        out(f"the sweep's driver runs on the cluster's head node ({address}); "
            f"its lines follow")
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=0.5)
                while True:
                    try:
                        out(queue.get(timeout=0.1))
                    except Empty:
                        break
                if ready:
                    break
            try:
                summary = ray.get(ref)
            except ray.exceptions.RayTaskError as err:
                # the driver's own one-line errors (bad spec, MLflow gone) stay one line
                if isinstance(err.cause, (SpecError, TrackingUnavailable, SweepFailed)):
                    raise err.cause from None
                raise
        except KeyboardInterrupt:
            ray.cancel(ref)
            raise
        return SweepResult(pre.spec, summary["parent_run_id"], summary["tracking_uri"],
                           summary["experiment_id"], None, time.time() - t0, summary["chosen"])
    finally:
        ray.shutdown()
