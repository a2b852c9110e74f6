"""Where a sweep runs: the tracking server it needs, the Ray it joins, what it may use.

* :func:`check_tracking_uri` refuses credentials in a tracking URI (they come from the
  environment only) and, for an MLflow server, fails in one line when it cannot be
  reached, before Ray starts or any trial runs.
* :func:`ray_init_kwargs` starts a private local Ray (``address="local"``: never a
  cluster some other process left running) on 127.0.0.1, whose dashboard, when asked
  for, listens on 127.0.0.1 unless the user names another interface; or joins a cluster.
* :func:`capacity` is what the cluster has now or can scale to: its autoscaler's node
  types count, so on a cluster scaled to zero GPU workers GPU trials are planned, queue,
  and their pending demand makes the autoscaler add nodes.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any
from urllib.parse import urlsplit

from raybrain.errors import SpecError

#: MLflow's HTTP client retries 7 times with doubling back-off by default (minutes per
#: call); the sweep keeps its own backlog instead, so one failed write costs seconds
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Refuse credentials in ``uri``; for an MLflow server, check it answers ``/health``."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise SpecError(
            f"tracking URI {parts.scheme}://***@{parts.hostname}{parts.path} carries "
            f"credentials, which would end up in logs and in the sweep's params; give the "
            f"plain URI and set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (or "
            f"MLFLOW_TRACKING_TOKEN) in the environment")
    if not is_server_uri(uri):
        return
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (http/s only)
            if resp.status != 200:
                raise OSError(f"HTTP {resp.status}")
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):  # the server is up; credentials come from the environment
            return
        raise SpecError(f"MLflow tracking server {uri} answered {url} with HTTP {err.code}; "
                        f"expected a running MLflow server (mlflow server ...)") from None
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise SpecError(f"MLflow tracking server {uri} is unreachable ({reason}); start it "
                        f"or pass another --tracking-uri; no trial was started") from None


def ray_init_kwargs(address: str | None, num_cpus: int | None = None,
                    dashboard: bool = False, dashboard_host: str = "127.0.0.1") -> dict:
    """Arguments of ``ray.init`` for a private local Ray (address None) or a cluster."""
    import logging

    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:
        # loopback only: a laptop's private Ray is nobody else's business, and its ports
        # (the dashboard agent's fixed 52365 among them) do not collide with a Ray that
        # another process runs on this machine's network address
        kwargs.update(address="local", num_cpus=num_cpus or os.cpu_count(),
                      include_dashboard=dashboard, _node_ip_address="127.0.0.1")
        if dashboard:
            kwargs["dashboard_host"] = dashboard_host
    else:
        kwargs["address"] = address
    return kwargs


def launcher_max_resources(path: str | os.PathLike | None = None) -> dict[str, float] | None:
    """The most of each resource a cluster-launcher cluster can scale to (None: unknown).

    ``ray up`` leaves the cluster's config on the head as ``~/ray_bootstrap_config.yaml``;
    each node type contributes ``max_workers`` (``min_workers`` for the head type) times
    its declared ``resources``.
    """
    from pathlib import Path

    import yaml

    f = Path(path) if path is not None else Path.home() / "ray_bootstrap_config.yaml"
    try:
        config = yaml.safe_load(f.read_text())
        types = config["available_node_types"]
        head = config.get("head_node_type")
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    out: dict[str, float] = {}
    for name, node_type in (types or {}).items():
        count = 1 if name == head else int(node_type.get("max_workers", 0))
        for k, v in (node_type.get("resources") or {}).items():
            out[k] = out.get(k, 0.0) + count * float(v)
    return out or None


def autoscaler_max_resources() -> dict[str, float] | None:
    """The most of each resource the cluster's autoscaler may bring up (None: unknown).

    From the cluster config an autoscaler (v2) publishes in the GCS (a private Ray API:
    any failure means "unknown"), else from the cluster launcher's config on the head.
    Neither exists on a laptop, and on KubeRay only the former: there, set
    ``use_gpu: true`` rather than ``auto`` for a GPU group that scales from zero.
    """
    try:
        from ray._private.state import state

        out = state.get_max_resources_from_cluster_config()
    except Exception:
        out = None
    if out:
        return {k: float(v) for k, v in out.items()}
    return launcher_max_resources()


def capacity(autoscaling: bool = True) -> dict[str, float]:
    """Per resource, the larger of what the cluster has now and what it can scale to.

    ``autoscaling=False`` (a private local Ray) counts what is there only.
    """
    import ray

    now = {k: float(v) for k, v in ray.cluster_resources().items()}
    most = (autoscaler_max_resources() or {}) if autoscaling else {}
    return {k: max(now.get(k, 0.0), most.get(k, 0.0)) for k in set(now) | set(most)}


def resolve_use_gpu(setting: bool | str, cap: dict[str, float], local: bool) -> bool:
    """``use_gpu`` from the spec: ``auto`` is true when the cluster has or can add GPUs.

    A private local Ray with ``use_gpu: true`` and no GPU would queue forever: refused.
    """
    gpus = cap.get("GPU", 0.0)
    if setting == "auto":
        return gpus > 0
    if setting and local and gpus == 0:
        raise SpecError("resources.use_gpu is true but this machine has no GPU Ray can use; "
                        "set use_gpu: auto (or false), or run on a cluster with GPU workers "
                        "(--address)")
    return bool(setting)


def trial_demand(res, use_train: bool, use_gpu: bool) -> dict[str, float]:
    """What one config (Tune trial) needs while it trains, summed over its Train workers."""
    if use_train:
        need = {"CPU": res.num_workers * res.cpus_per_run}
        if use_gpu:
            need["GPU"] = res.num_workers * res.gpus_per_worker
    else:
        need = {"CPU": res.cpus_per_run}
    for k, v in res.driver_resources.items():
        need[k] = need.get(k, 0.0) + v
    return need


def concurrency(need: dict[str, float], cap: dict[str, float], n_configs: int) -> int:
    """How many configs can train at once on ``cap`` (at least 1, at most ``n_configs``).

    A resource the cluster neither has nor can scale to does not limit the count: those
    trials wait as pending demand (Ray reports them as infeasible) rather than refusing
    the sweep, because an autoscaler this process cannot see may still provide them.
    """
    fits = []
    for k, v in need.items():
        if v > 0 and cap.get(k, 0.0) > 0:
            fits.append(math.floor(cap[k] / v + 1e-9) if cap[k] < sys.maxsize else n_configs)
    return max(1, min([n_configs, *fits]))
