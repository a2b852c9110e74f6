"""Offline checks of ``clusters/`` and of ``search_spaces/b2m_memory_cluster.yaml``.

What Ray would refuse is checked with Ray's own code where it runs without a cloud: the
launcher files against ``ray/autoscaler/ray-schema.json`` and through ``prepare_config`` /
``validate_config`` (what ``ray up`` does before it calls a cloud API), the KubeRay manifests
through the translator the KubeRay autoscaler uses to read a RayCluster (it validates its
result against the same schema). What Ray would accept but would break a raybrain sweep
(trials on the head, trial drivers on spot nodes, GPU types that never scale down, a
dashboard open to the internet, a spec whose bundles fit no node, literal credentials) is
checked by the ``*_problems`` functions below; each check has a test that a broken copy is
reported, so none of them can pass vacuously.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from raybrain.sweep.spec import Spec, load_spec, parse_spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
KUBERAY = CLUSTERS / "kuberay"
CLUSTER_SPEC = ROOT / "search_spaces" / "b2m_memory_cluster.yaml"
PAPER_SPEC = ROOT / "search_spaces" / "b2m_memory.yaml"
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
LAUNCHERS = ("local", "aws", "gcp")
CLOUDS = ("aws", "gcp")
MANIFESTS = ("raycluster", "rayjob")
DRIVER = "raybrain_driver"  # the custom resource of the nodes that are never preempted
K8S_GPU = "nvidia.com/gpu"

# (vCPUs, GPUs) of machine types: the ones the files use and common swaps. A type not
# listed here but of a GPU family still counts as a GPU type, with an unknown GPU count.
AWS_TYPES = {
    "m5.xlarge": (4, 0), "m5.2xlarge": (8, 0), "m5.4xlarge": (16, 0), "c5.2xlarge": (8, 0),
    "g4dn.xlarge": (4, 1), "g4dn.12xlarge": (48, 4), "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1), "g5.12xlarge": (48, 4), "g6.xlarge": (4, 1), "g6.12xlarge": (48, 4),
    "p3.2xlarge": (8, 1), "p3.8xlarge": (32, 4),
}
AWS_GPU_FAMILIES = {"g4dn", "g5", "g6", "g6e", "p3", "p3dn", "p4d", "p4de", "p5", "p5e"}
GCP_TYPES = {
    "n2-standard-8": (8, 0), "n2-standard-16": (16, 0), "n1-standard-8": (8, 0),
    "n1-standard-16": (16, 0), "n1-standard-32": (32, 0), "g2-standard-8": (8, 1),
    "g2-standard-48": (48, 4), "a2-highgpu-1g": (12, 1), "a2-highgpu-4g": (48, 4),
}
GCP_GPU_FAMILIES = {"a2", "a3", "a4", "g2"}  # GPUs come with the machine type

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|ACCESS_KEY|API_KEY|PRIVATE_KEY", re.I)
SECRET_TEXT = [
    (re.compile(r"AKIA[0-9A-Z]{16}"), "an AWS access key id"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"://[^/\s:@]+:[^/\s@]+@"), "a URL with a password in it"),
    (re.compile(r"\b[A-Z_]*(PASSWORD|TOKEN|SECRET)[A-Z_]*=(?![\s$'\"]|$)\S+"),
     "a credential assigned in a command"),
]


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def launcher(name: str) -> dict:
    return _yaml(CLUSTERS / f"{name}.yaml")


def manifest(name: str) -> list[dict]:
    return _docs(KUBERAY / f"{name}.yaml")


def _fits(resources: dict, bundle: dict) -> bool:
    return all(resources.get(k, 0) >= v for k, v in bundle.items() if v > 0)


# ---------------------------------------------------------------------------------------
# Node types, in one shape for launcher files and KubeRay clusters:
# {name: {min, max, resources, has_gpu, gpus (hardware count or None), cpus, preemptible}}
def machine(provider: str, node_config: dict) -> tuple[int | None, bool, int | None]:
    """(vCPUs or None, has GPUs, GPU count or None) of a launcher node type's machine."""
    if provider == "aws":
        itype = node_config.get("InstanceType", "")
        if itype in AWS_TYPES:
            cpus, gpus = AWS_TYPES[itype]
            return cpus, gpus > 0, gpus
        return None, itype.split(".")[0] in AWS_GPU_FAMILIES, None
    if provider == "gcp":
        mtype = node_config.get("machineType", "").rsplit("/", 1)[-1]
        attached = sum(int(a.get("acceleratorCount", 1))
                       for a in node_config.get("guestAccelerators") or [])
        if mtype in GCP_TYPES:
            cpus, gpus = GCP_TYPES[mtype]
            return cpus, gpus + attached > 0, gpus + attached
        if mtype.split("-")[0] in GCP_GPU_FAMILIES:
            return None, True, None
        return None, attached > 0, attached or 0
    return None, False, None


def preemptible(provider: str, node_config: dict) -> bool:
    if provider == "aws":
        market = (node_config.get("InstanceMarketOptions") or {}).get("MarketType", "")
        return str(market).lower() == "spot"
    if provider == "gcp":
        sched = node_config.get("scheduling") or {}
        entries = sched if isinstance(sched, list) else [sched]
        return any(e.get("preemptible") is True
                   or str(e.get("provisioningModel", "")).upper() == "SPOT" for e in entries)
    return False


def start_resources(commands: list[str]) -> dict:
    """Resources a ``ray start`` command line declares (--num-cpus, --num-gpus, --resources)."""
    text = " ".join(commands)
    res: dict = {}
    for flag, key in (("num-cpus", "CPU"), ("num-gpus", "GPU")):
        m = re.search(rf"--{flag}[= ](\d+)", text)
        if m:
            res[key] = int(m.group(1))
    m = re.search(r"--resources[= ]'([^']*)'", text)
    if m:
        res.update(json.loads(m.group(1)))
    return res


def launcher_node_types(config: dict) -> tuple[dict, str, int]:
    """The node types of a launcher file, its head type and its cluster max_workers."""
    provider = config["provider"]["type"]
    cluster_max = config.get("max_workers", 2)
    if provider == "local":  # one node type; resources come from the start commands
        ips = config["provider"].get("worker_ips") or []
        n = min(cluster_max, len(ips))
        base = {"has_gpu": False, "gpus": None, "cpus": None, "preemptible": False}
        return ({"head": {**base, "min": 0, "max": 0,
                          "resources": start_resources(config["head_start_ray_commands"])},
                 "worker": {**base, "min": n, "max": n,
                            "resources": start_resources(config["worker_start_ray_commands"])}},
                "head", cluster_max)
    head = config["head_node_type"]
    types = {}
    for name, t in config["available_node_types"].items():
        cpus, has_gpu, gpus = machine(provider, t.get("node_config") or {})
        types[name] = {
            "min": t.get("min_workers", 0),
            "max": 0 if name == head else t.get("max_workers", cluster_max),
            "resources": t.get("resources") or {}, "has_gpu": has_gpu, "gpus": gpus,
            "cpus": cpus, "preemptible": preemptible(provider, t.get("node_config") or {})}
    return types, head, cluster_max


def node_type_problems(types: dict, head: str, cluster_max: int) -> list[str]:
    """What a raybrain sweep needs from the node types, beyond what Ray validates."""
    problems = []
    hr = types[head]["resources"]
    if hr.get("CPU") != 0:
        problems.append(f"head type {head!r} must declare CPU: 0 so that no Tune trial or "
                        f"Train worker is scheduled on it, got CPU: {hr.get('CPU')!r}")
    if hr.get("GPU", 0):
        problems.append(f"head type {head!r} must not declare GPUs, got GPU: {hr['GPU']}")
    if hr.get(DRIVER, 0):
        problems.append(f"head type {head!r} must not declare {DRIVER} (trial drivers belong "
                        f"on workers), got {hr[DRIVER]}")
    for name, t in types.items():
        if name == head:
            continue
        res, gpu = t["resources"], t["resources"].get("GPU", 0)
        if not 0 <= t["min"] <= t["max"]:
            problems.append(f"type {name!r}: 0 <= min_workers <= max_workers must hold, "
                            f"got min_workers={t['min']}, max_workers={t['max']}")
        if t["max"] > cluster_max:
            problems.append(f"type {name!r}: max_workers {t['max']} exceeds the cluster "
                            f"max_workers {cluster_max}")
        if t["has_gpu"]:
            if gpu < 1:
                problems.append(f"GPU type {name!r} must declare resources.GPU >= 1, got "
                                f"{res.get('GPU')!r}")
            elif t["gpus"] is not None and gpu != t["gpus"]:
                problems.append(f"GPU type {name!r} declares GPU: {gpu} but its machine has "
                                f"{t['gpus']} GPU(s)")
            if "CPU" not in res:
                problems.append(f"GPU type {name!r} must declare its CPU count in resources")
            if t["min"] != 0:
                problems.append(f"GPU type {name!r} must scale from zero (min_workers: 0), "
                                f"got min_workers={t['min']}")
            if res.get(DRIVER, 0):
                problems.append(f"GPU type {name!r} must not declare {DRIVER}: trial drivers "
                                f"would share (possibly spot) GPU nodes")
        elif gpu:
            problems.append(f"type {name!r} declares GPU: {gpu} but its machine has none")
        if t["cpus"] is not None and res.get("CPU", 0) > t["cpus"]:
            problems.append(f"type {name!r} declares CPU: {res['CPU']} but its machine has "
                            f"{t['cpus']} vCPUs")
        if t["preemptible"] and res.get(DRIVER, 0):
            problems.append(f"preemptible type {name!r} declares {DRIVER}: a reclaimed node "
                            f"would take trial drivers with it")
    if not any(n != head and not t["preemptible"] and t["max"] >= 1
               and t["resources"].get(DRIVER, 0) > 0 for n, t in types.items()):
        problems.append(f"no non-preemptible worker type declares {DRIVER}: trials that ask "
                        f"for it (resources.driver_resources) would never be scheduled")
    return problems


def _image_problem(image: str, where: str) -> str | None:
    tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
    version = ray.__version__
    if not (tag == version or tag.startswith(version + "-") or f"ray{version}" in tag):
        return (f"{where}: image {image!r} does not carry the installed Ray version {version} "
                f"in its tag")
    return None


def launcher_problems(config: dict) -> list[str]:
    provider = config["provider"]["type"]
    problems = []
    head_cmds = " ".join(config.get("head_start_ray_commands") or [])
    worker_cmds = " ".join(config.get("worker_start_ray_commands") or [])
    if "--dashboard-host=127.0.0.1" not in head_cmds:
        problems.append("head_start_ray_commands must start the dashboard with "
                        "--dashboard-host=127.0.0.1 (reach it through `ray dashboard`)")
    if "--autoscaling-config=~/ray_bootstrap_config.yaml" not in head_cmds:
        problems.append("head_start_ray_commands must pass "
                        "--autoscaling-config=~/ray_bootstrap_config.yaml")
    if "~/.raybrain/mlflow.env" not in head_cmds:
        problems.append("head_start_ray_commands must load the MLflow credentials of the "
                        "sweep's driver from ~/.raybrain/mlflow.env (never literal values)")
    if "--address=$RAY_HEAD_IP:6379" not in worker_cmds:
        problems.append("worker_start_ray_commands must join --address=$RAY_HEAD_IP:6379")
    if "~/raybrain" not in (config.get("file_mounts") or {}):
        problems.append("file_mounts must copy the project to ~/raybrain")
    setup = config.get("setup_commands") or []
    if not any("pip install" in c and "~/raybrain" in c for c in setup):
        problems.append("setup_commands must pip install the project from ~/raybrain")
    image = (config.get("docker") or {}).get("image")
    if image:
        problem = _image_problem(image, "docker")
        if problem:
            problems.append(problem)
    elif provider != "local":
        problems.append("cloud launcher files run in a rayproject/ray container (docker.image)")
    if provider == "local":
        ips = config["provider"].get("worker_ips") or []
        if config.get("max_workers", len(ips)) > len(ips):
            problems.append(f"max_workers {config['max_workers']} exceeds the {len(ips)} "
                            f"worker_ips")
        if start_resources(config.get("head_start_ray_commands") or []).get("GPU") != 0:
            problems.append("head_start_ray_commands must pass --num-gpus=0 (Ray would "
                            "otherwise offer the head's GPUs to trials)")
    types, head, cluster_max = launcher_node_types(config)
    return problems + node_type_problems(types, head, cluster_max)


def spec_fit_problems(spec: Spec, types: dict, head: str) -> list[str]:
    """Whether the bundles a spec asks for land where they should."""
    res = spec.resources
    problems = []
    trial = {"CPU": 0.01, **res.driver_resources}
    hosts = [n for n, t in types.items() if _fits(t["resources"], trial)]
    if not hosts:
        problems.append(f"no node type can hold a trial driver {trial}")
    if head in hosts:
        problems.append(f"trial drivers {trial} fit the head type {head!r}")
    if any(types[n]["has_gpu"] for n in hosts):
        problems.append(f"trial drivers {trial} fit a GPU type: {hosts}")
    if res.use_gpu is not False:
        worker = {"CPU": res.cpus_per_run, "GPU": res.gpus_per_worker}
        hosts = [n for n, t in types.items() if _fits(t["resources"], worker)]
        if not hosts or head in hosts:
            problems.append(f"Train workers {worker} fit {hosts or 'no node type'}")
    if res.use_gpu is not True:
        in_process = {"CPU": res.cpus_per_run, **res.driver_resources}
        if not any(_fits(t["resources"], in_process) for t in types.values()):
            problems.append(f"no node type can hold an in-process trial {in_process}")
    return problems


def cluster_spec_problems(spec: Spec, texts: dict[str, str]) -> list[str]:
    """The cluster spec against the launcher files' storage placeholders."""
    problems = []
    path, uri = spec.storage.path, spec.tracking.uri
    scheme, sep, rest = path.partition("://")
    if not sep and not path.startswith("/"):
        problems.append(f"storage.path must be shared by every node (s3://, gs://, or an "
                        f"absolute path on a shared mount), got {path!r}")
    if sep:
        wanted = {"aws": f"s3://{rest}", "gcp": f"gs://{rest}"}
        for name, text in texts.items():
            if name in wanted and wanted[name] not in text:
                problems.append(f"clusters/{name}.yaml does not document the spec's storage "
                                f"prefix {wanted[name]}")
    if not uri.startswith(("http://", "https://")):
        problems.append(f"tracking.uri must be an MLflow server (http://...) every node can "
                        f"reach, got {uri!r}")
    if spec.storage.max_failures < 1 or spec.storage.run_max_failures < 1:
        problems.append("storage.max_failures and storage.run_max_failures must be >= 1 "
                        "(spot and preemptible nodes go away)")
    if not spec.resources.driver_resources:
        problems.append("resources.driver_resources must keep trial drivers off spot nodes")
    return problems


def secret_problems(obj, where: str = "") -> list[str]:
    """Literal credentials anywhere in a loaded YAML document."""
    problems = []
    if isinstance(obj, dict):
        if isinstance(obj.get("name"), str) and "value" in obj and SECRET_NAME.search(obj["name"]):
            problems.append(f"{where}: env {obj['name']} has a literal value; use "
                            f"valueFrom.secretKeyRef or envFrom")
        for k, v in obj.items():
            if (isinstance(v, str) and SECRET_NAME.search(str(k)) and v
                    and not v.startswith(("~", "/", "$"))):
                problems.append(f"{where}.{k}: literal credential")
            problems += secret_problems(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            problems += secret_problems(v, f"{where}[{i}]")
    elif isinstance(obj, str):
        for pattern, what in SECRET_TEXT:
            if pattern.search(obj):
                problems.append(f"{where}: {what}")
    return problems


# ---------------------------------------------------------------------------------------
# KubeRay
def _template_spec(group: dict) -> dict:
    return (group.get("template") or {}).get("spec") or {}


def _container(group: dict) -> dict:
    containers = _template_spec(group).get("containers") or [{}]
    return containers[0]


def _pvc_mounts(group: dict) -> set[tuple[str, str]]:
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in _template_spec(group).get("volumes") or [] if "persistentVolumeClaim" in v}
    return {(claims[m["name"]], m["mountPath"])
            for m in _container(group).get("volumeMounts") or [] if m["name"] in claims}


def derived_node_types(cluster_spec: dict) -> tuple[dict, str, int]:
    """Node types as the KubeRay autoscaler reads them, via Ray's own translator."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cr = {"metadata": {"name": "raybrain-check", "namespace": "default"},
          "spec": copy.deepcopy(cluster_spec)}
    derived = _derive_autoscaling_config_from_ray_cr(cr)
    groups = {g["groupName"]: g for g in cluster_spec["workerGroupSpecs"]}
    types = {}
    for name, t in derived["available_node_types"].items():
        group = groups.get(name, cluster_spec["headGroupSpec"])
        limits = (_container(group).get("resources") or {}).get("limits") or {}
        gpus = int(limits.get(K8S_GPU, 0))
        placement = json.dumps([_template_spec(group).get(k) for k in
                                ("nodeSelector", "tolerations", "affinity")]).lower()
        types[name] = {"min": t["min_workers"], "max": t["max_workers"],
                       "resources": t["resources"], "has_gpu": gpus > 0, "gpus": gpus or None,
                       "cpus": None,
                       "preemptible": "spot" in placement or "preemptible" in placement}
    return types, "headgroup", derived["max_workers"]


def raycluster_spec_problems(spec: dict) -> list[str]:
    """A RayClusterSpec (a RayCluster's spec or a RayJob's rayClusterSpec)."""
    problems = []
    if spec.get("rayVersion") != ray.__version__:
        problems.append(f"rayVersion must be the installed Ray {ray.__version__}, got "
                        f"{spec.get('rayVersion')!r}")
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("enableInTreeAutoscaling must be true")
    if (spec.get("autoscalerOptions") or {}).get("version") != "v2":
        problems.append("autoscalerOptions.version must be v2")
    head = spec.get("headGroupSpec") or {}
    if not _container(head).get("image"):
        return problems + ["headGroupSpec.template.spec.containers[0].image is required"]
    groups = spec.get("workerGroupSpecs") or []
    if not groups:
        problems.append("workerGroupSpecs must list the worker groups")
    for i, g in enumerate([head, *groups]):
        where = "headGroupSpec" if i == 0 else f"workerGroupSpecs[{i - 1}]"
        if not isinstance(g.get("rayStartParams"), dict):
            problems.append(f"{where}.rayStartParams is required (may be {{}})")
        if not _container(g).get("image"):
            problems.append(f"{where}.template.spec.containers[0].image is required")
        else:
            problem = _image_problem(_container(g)["image"], where)
            if problem:
                problems.append(problem)
        if _template_spec(g).get("restartPolicy") not in (None, "Never"):
            problems.append(f"{where}: restartPolicy must be Never or unset with autoscaler v2")
    if any(isinstance(g.get(k), bool) or not isinstance(g.get(k), int)
           for g in groups for k in ("minReplicas", "maxReplicas")) \
            or not all(g.get("groupName") for g in groups):
        return problems + ["every worker group needs groupName, minReplicas and maxReplicas"]
    hp = head.get("rayStartParams") or {}
    if str(hp.get("num-cpus")) != "0":
        problems.append(f"head rayStartParams must set num-cpus: \"0\" so that no trial or "
                        f"Train worker lands on the head, got {hp.get('num-cpus')!r}")
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        problems.append(f"head serviceType must be ClusterIP (use kubectl port-forward), got "
                        f"{head['serviceType']!r}")
    env = {e["name"]: e for e in _container(head).get("env") or []}
    if "RAY_enable_autoscaler_v2" in env:
        problems.append("head env RAY_enable_autoscaler_v2 must not be set: KubeRay sets it "
                        "from autoscalerOptions.version and refuses both")
    tracking = env.get("MLFLOW_TRACKING_URI", {}).get("value", "")
    if not tracking.startswith(("http://", "https://")):
        problems.append(f"head env MLFLOW_TRACKING_URI must be an http(s) MLflow server, got "
                        f"{tracking!r}")
    from_secret = any("secretRef" in e for e in _container(head).get("envFrom") or []) or any(
        "secretKeyRef" in (e.get("valueFrom") or {}) for e in env.values())
    if not from_secret:
        problems.append("head must get MLflow credentials from a Secret (envFrom.secretRef or "
                        "valueFrom.secretKeyRef)")
    shared = _pvc_mounts(head)
    if not shared:
        problems.append("head must mount the shared volume (a PersistentVolumeClaim)")
    for g in groups:
        name, lo, hi, n = g["groupName"], g["minReplicas"], g["maxReplicas"], g.get("replicas")
        if not 0 <= lo <= hi:
            problems.append(f"group {name!r}: 0 <= minReplicas <= maxReplicas must hold, "
                            f"got {lo}, {hi}")
        if n is not None and not lo <= n <= hi:
            problems.append(f"group {name!r}: replicas {n} outside [{lo}, {hi}]")
        if shared and not shared <= _pvc_mounts(g):
            problems.append(f"group {name!r} must mount the shared volume {sorted(shared)}")
        custom = (g.get("rayStartParams") or {}).get("resources")
        if custom is not None:
            try:  # KubeRay's Go reader: strip quotes and spaces at both ends, then JSON
                json.loads(str(custom).strip("'\"` "))
            except ValueError:
                problems.append(f"group {name!r}: rayStartParams resources {custom!r} is not "
                                f"JSON once its outer quotes are stripped (KubeRay's rule); "
                                f"write it as '{{\"name\": N}}' in single quotes")
        res = _container(g).get("resources") or {}
        req = (res.get("requests") or {}).get(K8S_GPU)
        lim = (res.get("limits") or {}).get(K8S_GPU)
        if req is None and lim is None:
            continue
        if str(req) != str(lim):
            problems.append(f"GPU group {name!r}: requests and limits of {K8S_GPU} must be "
                            f"equal, got {req!r} and {lim!r}")
        if int(lim or 0) < 1:
            problems.append(f"GPU group {name!r}: limits of {K8S_GPU} must be >= 1")
        ngpu = (g.get("rayStartParams") or {}).get("num-gpus")
        if ngpu is not None and str(ngpu) != str(lim):
            problems.append(f"GPU group {name!r}: rayStartParams num-gpus {ngpu!r} does not "
                            f"match the container's {K8S_GPU} limit {lim!r}")
        if n not in (None, 0):
            problems.append(f"GPU group {name!r} must start with replicas: 0, got {n}")
        if not any(t.get("key") == K8S_GPU for t in _template_spec(g).get("tolerations") or []):
            problems.append(f"GPU group {name!r} needs a toleration for {K8S_GPU}")
    try:
        types, head_type, cluster_max = derived_node_types(spec)
    except Exception as exc:  # what the KubeRay autoscaler would fail on
        return problems + [f"Ray's KubeRay autoscaler cannot read the cluster: {exc!r}"]
    for name, t in types.items():
        if t["has_gpu"] and t["resources"].get("GPU") != t["gpus"]:
            problems.append(f"GPU group {name!r}: Ray sees GPU: {t['resources'].get('GPU')} "
                            f"but the container's {K8S_GPU} limit is {t['gpus']}")
    return problems + node_type_problems(types, head_type, cluster_max)


def manifest_problems(docs: list[dict]) -> list[str]:
    """A KubeRay manifest file: its RayCluster / RayJob and the objects they use."""
    problems = []
    claims = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "PersistentVolumeClaim"}
    configmaps = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    for d in docs:
        kind, name = d.get("kind"), (d.get("metadata") or {}).get("name", "")
        if not d.get("apiVersion") or not kind or not name:
            problems.append(f"every document needs apiVersion, kind and metadata.name: {d!r:.80}")
            continue
        problems += secret_problems(d, f"{kind}/{name}")
        if kind == "PersistentVolumeClaim" and "ReadWriteMany" not in d["spec"]["accessModes"]:
            problems.append(f"PersistentVolumeClaim {name}: every pod mounts it, so it must be "
                            f"ReadWriteMany")
        if kind not in ("RayCluster", "RayJob"):
            continue
        if d["apiVersion"] != "ray.io/v1":
            problems.append(f"{kind} {name}: apiVersion must be ray.io/v1")
        if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
            problems.append(f"{kind} {name}: metadata.name must be a DNS-1035 label")
        spec = d.get("spec") or {}
        if kind == "RayJob":
            problems += _rayjob_problems(spec, configmaps)
            spec = spec.get("rayClusterSpec")
            if spec is None:
                continue
        problems += raycluster_spec_problems(spec)
        for group in [spec.get("headGroupSpec") or {}, *(spec.get("workerGroupSpecs") or [])]:
            for claim, _ in _pvc_mounts(group):
                if claim not in claims:
                    problems.append(f"{kind} {name}: PersistentVolumeClaim {claim} is not "
                                    f"defined in the file")
    return problems


def _rayjob_problems(spec: dict, configmaps: dict) -> list[str]:
    problems = []
    entry = spec.get("entrypoint", "")
    if not entry.startswith("raybrain sweep "):
        problems.append(f"RayJob entrypoint must start with `raybrain sweep`, got {entry!r}")
        return problems
    if "--address auto" not in entry:
        problems.append("RayJob entrypoint must join its cluster with --address auto")
    if spec.get("rayClusterSpec") is None and not spec.get("clusterSelector"):
        problems.append("RayJob needs rayClusterSpec (or clusterSelector)")
    if spec.get("rayClusterSpec") is not None:
        if spec.get("shutdownAfterJobFinishes") is not True:
            problems.append("RayJob with its own cluster must set shutdownAfterJobFinishes: true")
        if not isinstance(spec.get("ttlSecondsAfterFinished"), int):
            problems.append("RayJob must set ttlSecondsAfterFinished")
        head = spec["rayClusterSpec"].get("headGroupSpec") or {}
        spec_path = entry.split()[2]
        if not spec_path.startswith("/home/ray/raybrain/") and _configmap_spec(
                spec_path, head, configmaps) is None:
            problems.append(f"RayJob spec {spec_path} is neither in the image "
                            f"(/home/ray/raybrain/...) nor in a ConfigMap mounted on the head")
    return problems


def _configmap_spec(path: str, head: dict, configmaps: dict) -> str | None:
    """The text of ``path`` when it is a key of a ConfigMap mounted on the head."""
    volumes = {v["name"]: v["configMap"]["name"]
               for v in _template_spec(head).get("volumes") or [] if "configMap" in v}
    for m in _container(head).get("volumeMounts") or []:
        prefix = m["mountPath"].rstrip("/") + "/"
        if m["name"] in volumes and path.startswith(prefix):
            data = (configmaps.get(volumes[m["name"]]) or {}).get("data") or {}
            return data.get(path[len(prefix):])
    return None


def _cluster_spec_of(docs: list[dict]) -> dict:
    d = next(d for d in docs if d["kind"] in ("RayCluster", "RayJob"))
    return d["spec"]["rayClusterSpec"] if d["kind"] == "RayJob" else d["spec"]


# ---------------------------------------------------------------------------------------
# Launcher files: Ray's own offline validation, then the checks above
@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_validates_against_rays_schema(name):
    schema = json.loads(RAY_SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)  # the draft it names
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(launcher(name))]
    assert errors == [], errors


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_passes_ray_up_preparation(name):
    # what `ray up` does with the file before it calls a cloud API
    prepared = prepare_config(launcher(name))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_has_no_problems(name):
    assert launcher_problems(launcher(name)) == []


def test_launcher_schema_check_can_fail():
    config = launcher("aws")
    config["available_node_types"]["cpu"]["resources"][DRIVER] = 0.5  # must be an integer
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, json.loads(RAY_SCHEMA.read_text()))


def _type(config: dict, role: str) -> dict:
    """The node type of a role: head, driver (declares raybrain_driver) or gpu."""
    provider = config["provider"]["type"]
    for name, t in config["available_node_types"].items():
        is_head = name == config["head_node_type"]
        if role == "head" and is_head:
            return t
        if role == "driver" and not is_head and DRIVER in t["resources"]:
            return t
        if role == "gpu" and machine(provider, t["node_config"])[1]:
            return t
    raise LookupError(role)


def _spot(t: dict) -> None:
    t["node_config"]["InstanceMarketOptions"] = {"MarketType": "spot"}
    t["node_config"]["scheduling"] = {"provisioningModel": "SPOT"}


def _drop_flag(key: str, flag: str):
    def mutate(c):
        c[key] = [cmd.replace(flag, "") for cmd in c[key]]
    return mutate


CLOUD_BREAKS = {
    "head runs trials": (lambda c: _type(c, "head").update(resources={}), "CPU: 0"),
    "head has a GPU": (lambda c: _type(c, "head")["resources"].update(GPU=1),
                       "must not declare GPUs"),
    "head hosts drivers": (lambda c: _type(c, "head")["resources"].update({DRIVER: 100}),
                           "head type 'head' must not declare raybrain_driver"),
    "GPU undeclared": (lambda c: _type(c, "gpu")["resources"].pop("GPU"), "resources.GPU >= 1"),
    "GPU miscounted": (lambda c: _type(c, "gpu")["resources"].update(GPU=3), "its machine has"),
    "GPU CPUs undeclared": (lambda c: _type(c, "gpu")["resources"].pop("CPU"),
                            "must declare its CPU count"),
    "GPU always on": (lambda c: _type(c, "gpu").update(min_workers=1), "scale from zero"),
    "GPU hosts drivers": (lambda c: _type(c, "gpu")["resources"].update({DRIVER: 100}),
                          "must not declare raybrain_driver"),
    "driver type on spot": (lambda c: _spot(_type(c, "driver")), "no non-preemptible"),
    "no driver type": (lambda c: _type(c, "driver")["resources"].pop(DRIVER), "no non-preemptible"),
    "min above max": (lambda c: _type(c, "driver").update(min_workers=3, max_workers=2),
                      "min_workers <= max_workers"),
    "type above cluster": (lambda c: _type(c, "gpu").update(max_workers=100),
                           "exceeds the cluster"),
    "CPU node with GPU": (lambda c: _type(c, "driver")["resources"].update(GPU=1), "has none"),
    "more CPUs than vCPUs": (lambda c: _type(c, "driver")["resources"].update(CPU=64), "vCPUs"),
    "open dashboard": (lambda c: c.update(head_start_ray_commands=[
        x.replace("127.0.0.1", "0.0.0.0") for x in c["head_start_ray_commands"]]),
        "--dashboard-host=127.0.0.1"),
    "no autoscaling config": (_drop_flag("head_start_ray_commands",
                                         "--autoscaling-config=~/ray_bootstrap_config.yaml"),
                              "--autoscaling-config"),
    "old image": (lambda c: c["docker"].update(image="rayproject/ray:2.59.0-py311-gpu"),
                  "installed Ray version"),
    "no image": (lambda c: c.update(docker={}), "docker.image"),
    "no install": (lambda c: c.update(setup_commands=[]), "pip install"),
    "no credentials file": (_drop_flag("head_start_ray_commands", "~/.raybrain/mlflow.env"),
                            "mlflow.env"),
    "no project copy": (lambda c: c.update(file_mounts={}), "file_mounts"),
}


@pytest.mark.parametrize("name", CLOUDS)
@pytest.mark.parametrize("case", sorted(CLOUD_BREAKS))
def test_launcher_checks_catch(name, case):
    config = launcher(name)
    mutate, expected = CLOUD_BREAKS[case]
    mutate(config)
    problems = launcher_problems(config)
    assert any(expected in p for p in problems), problems


LOCAL_BREAKS = {
    "head runs trials": (_drop_flag("head_start_ray_commands", "--num-cpus=0"), "CPU: 0"),
    "head offers GPUs": (_drop_flag("head_start_ray_commands", "--num-gpus=0"), "--num-gpus=0"),
    "no driver resource": (lambda c: c.update(worker_start_ray_commands=[
        re.sub(r"--resources='[^']*'", "", x) for x in c["worker_start_ray_commands"]]),
        "no non-preemptible"),
    "more workers than hosts": (lambda c: c.update(max_workers=5), "worker_ips"),
    "open dashboard": (lambda c: c.update(head_start_ray_commands=[
        x.replace("127.0.0.1", "0.0.0.0") for x in c["head_start_ray_commands"]]),
        "--dashboard-host=127.0.0.1"),
    "no install": (lambda c: c.update(setup_commands=[]), "pip install"),
    "no credentials file": (_drop_flag("head_start_ray_commands", "~/.raybrain/mlflow.env"),
                            "mlflow.env"),
}


@pytest.mark.parametrize("case", sorted(LOCAL_BREAKS))
def test_local_launcher_checks_catch(case):
    config = launcher("local")
    mutate, expected = LOCAL_BREAKS[case]
    mutate(config)
    problems = launcher_problems(config)
    assert any(expected in p for p in problems), problems


def test_machine_table_reads_gpu_configs():
    assert machine("aws", {"InstanceType": "g5.12xlarge"}) == (48, True, 4)
    assert machine("aws", {"InstanceType": "p4d.24xlarge"}) == (None, True, None)
    assert machine("aws", {"InstanceType": "r5.large"}) == (None, False, None)
    assert machine("gcp", {"machineType": "n1-standard-8", "guestAccelerators": [
        {"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 2}]}) == (8, True, 2)
    assert machine("gcp", {"machineType": "a3-highgpu-8g"}) == (None, True, None)
    assert preemptible("gcp", {"scheduling": [{"preemptible": True}]})  # Ray's example form
    assert not preemptible("aws", {"InstanceType": "m5.2xlarge"})


# ---------------------------------------------------------------------------------------
# The cluster spec
def test_cluster_spec_parses_and_validates():
    spec = load_spec(CLUSTER_SPEC)
    assert parse_spec(_yaml(CLUSTER_SPEC), source=str(CLUSTER_SPEC)) == spec
    r = spec.resources
    assert (r.use_gpu, r.num_workers, r.cpus_per_run, r.gpus_per_worker) == ("auto", 1, 4, 1)
    assert r.driver_resources == {DRIVER: 0.01}
    assert spec.tracking.uri == "http://MLFLOW_HOST:5000"
    assert spec.storage.path == "s3://BUCKET/raybrain"
    assert (spec.storage.max_failures, spec.storage.run_max_failures) == (3, 3)


def test_cluster_spec_is_the_paper_scale_sweep():
    # Same sweep (name, task, data, params, search, arms, seeds; the spec hash leaves out
    # only resources, tracking and storage): only where it runs differs. So the task-level
    # validation of b2m_memory.yaml in test_spec.py covers this spec too (without
    # importing torch here).
    spec, paper = load_spec(CLUSTER_SPEC), load_spec(PAPER_SPEC)
    assert spec.name == paper.name
    assert spec.spec_hash() == paper.spec_hash()


def _texts() -> dict[str, str]:
    return {n: (CLUSTERS / f"{n}.yaml").read_text() for n in LAUNCHERS}


def test_cluster_spec_matches_launcher_placeholders():
    assert cluster_spec_problems(load_spec(CLUSTER_SPEC), _texts()) == []


@pytest.mark.parametrize("change, expected", [
    ({"storage": {"path": "./raybrain_results"}}, "shared by every node"),
    ({"storage": {"path": "s3://OTHER/prefix"}}, "does not document"),
    ({"tracking": {"uri": "sqlite:///mlflow.db"}}, "MLflow server"),
    ({"storage": {"path": "s3://BUCKET/raybrain", "max_failures": 0}}, "max_failures"),
    ({"resources": {"use_gpu": "auto"}}, "driver_resources"),
])
def test_cluster_spec_checks_catch(change, expected):
    raw = _yaml(CLUSTER_SPEC)
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if key != "resources" else value
    problems = cluster_spec_problems(parse_spec(raw), _texts())
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("name", CLOUDS)
def test_spec_bundles_land_on_the_right_nodes(name):
    types, head, _ = launcher_node_types(launcher(name))
    assert spec_fit_problems(load_spec(CLUSTER_SPEC), types, head) == []


@pytest.mark.parametrize("name", MANIFESTS)
def test_spec_bundles_land_on_the_right_kuberay_groups(name):
    types, head, _ = derived_node_types(_cluster_spec_of(manifest(name)))
    assert spec_fit_problems(load_spec(CLUSTER_SPEC), types, head) == []


def test_local_workers_offer_the_driver_resource():
    types, _, _ = launcher_node_types(launcher("local"))
    wanted = set(load_spec(CLUSTER_SPEC).resources.driver_resources)
    assert wanted <= set(types["worker"]["resources"])


@pytest.mark.parametrize("resources, head, expected", [
    ({"cpus_per_run": 64}, None, "Train workers"),       # larger than every GPU node
    ({"gpus_per_worker": 8}, None, "Train workers"),
    ({"driver_resources": {}}, None, "fit a GPU type"),  # 0.01 CPU fits any node
    ({"driver_resources": {}}, {"CPU": 1}, "fit the head"),
    ({"driver_resources": {"other": 0.01}}, None, "no node type can hold a trial driver"),
])
def test_spec_fit_checks_catch(resources, head, expected):
    raw = _yaml(CLUSTER_SPEC)
    raw["resources"] = {**raw["resources"], **resources}
    types, head_type, _ = launcher_node_types(launcher("aws"))
    if head is not None:  # a head that would take work
        types[head_type]["resources"] = head
    problems = spec_fit_problems(parse_spec(raw), types, head_type)
    assert any(expected in p for p in problems), problems


# ---------------------------------------------------------------------------------------
# KubeRay manifests
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_has_no_problems(name):
    assert manifest_problems(manifest(name)) == []


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_kinds(name):
    kinds = [d["kind"] for d in manifest(name)]
    assert {"RayCluster": "raycluster", "RayJob": "rayjob"}[kinds[-1]] == name
    assert "PersistentVolumeClaim" in kinds


def test_rayjob_cluster_matches_raycluster():
    job, cluster = _cluster_spec_of(manifest("rayjob")), _cluster_spec_of(manifest("raycluster"))
    assert derived_node_types(job) == derived_node_types(cluster)
    for key in ("rayVersion", "enableInTreeAutoscaling", "autoscalerOptions"):
        assert job[key] == cluster[key]
    pvc = [[d for d in manifest(n) if d["kind"] == "PersistentVolumeClaim"] for n in MANIFESTS]
    assert pvc[0] == pvc[1]


def test_rayjob_runs_the_cluster_spec_on_the_shared_volume():
    docs = manifest("rayjob")
    job = next(d for d in docs if d["kind"] == "RayJob")["spec"]
    head = job["rayClusterSpec"]["headGroupSpec"]
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    text = _configmap_spec(job["entrypoint"].split()[2], head, configmaps)
    assert text is not None
    spec, cluster = parse_spec(yaml.safe_load(text)), load_spec(CLUSTER_SPEC)
    assert spec.name == cluster.name and spec.spec_hash() == cluster.spec_hash()
    assert spec.resources == cluster.resources
    assert spec.storage.model_dump(exclude={"path"}) == cluster.storage.model_dump(exclude={"path"})
    mount = {path for _, path in _pvc_mounts(head)}
    assert any(spec.storage.path.startswith(m.rstrip("/") + "/") for m in mount), mount
    env = {e["name"]: e.get("value") for e in _container(head)["env"]}
    assert spec.tracking.uri == env["MLFLOW_TRACKING_URI"]


def _groups(spec: dict) -> dict:
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


def _gpu_group(spec: dict) -> dict:
    return next(g for g in spec["workerGroupSpecs"]
                if K8S_GPU in (_container(g).get("resources") or {}).get("limits", {}))


def _head_env(spec: dict) -> list:
    return _container(spec["headGroupSpec"]).setdefault("env", [])


KUBERAY_BREAKS = {
    "autoscaler off": (lambda s: s.update(enableInTreeAutoscaling=False),
                       "enableInTreeAutoscaling"),
    "autoscaler v1": (lambda s: s["autoscalerOptions"].update(version="v1"), "must be v2"),
    "both v2 switches": (lambda s: _head_env(s).append(
        {"name": "RAY_enable_autoscaler_v2", "value": "1"}), "RAY_enable_autoscaler_v2"),
    "old rayVersion": (lambda s: s.update(rayVersion="2.59.0"), "rayVersion"),
    "old image": (lambda s: _container(_gpu_group(s)).update(image="rayproject/ray:2.59.0-gpu"),
                  "installed Ray version"),
    "no head image": (lambda s: _container(s["headGroupSpec"]).pop("image"), "image is required"),
    "head runs trials": (lambda s: s["headGroupSpec"]["rayStartParams"].pop("num-cpus"),
                         "num-cpus"),
    "public service": (lambda s: s["headGroupSpec"].update(serviceType="LoadBalancer"),
                       "ClusterIP"),
    "no groupName": (lambda s: s["workerGroupSpecs"][0].pop("groupName"), "groupName"),
    "no maxReplicas": (lambda s: s["workerGroupSpecs"][0].pop("maxReplicas"), "maxReplicas"),
    "no rayStartParams": (lambda s: _gpu_group(s).pop("rayStartParams"),
                          "rayStartParams is required"),
    "min above max": (lambda s: _groups(s)["cpu"].update(minReplicas=5),
                      "minReplicas <= maxReplicas"),
    "GPU always on": (lambda s: _gpu_group(s).update(minReplicas=1, replicas=1), "scale from zero"),
    "GPU requests != limits": (lambda s: _container(_gpu_group(s))["resources"]["requests"].update(
        {K8S_GPU: "2"}), "must be equal"),
    "GPU num-gpus mismatch": (lambda s: _gpu_group(s)["rayStartParams"].update({"num-gpus": "2"}),
                              "num-gpus"),
    "GPU hosts drivers": (lambda s: _gpu_group(s)["rayStartParams"].update(
        resources="'{\"raybrain_driver\": 100}'"), "must not declare raybrain_driver"),
    "GPU without toleration": (lambda s: _template_spec(_gpu_group(s)).pop("tolerations"),
                               "toleration"),
    "no driver group": (lambda s: _groups(s)["cpu"].update(rayStartParams={}),
                        "no non-preemptible"),
    "driver group on spot": (lambda s: _template_spec(_groups(s)["cpu"]).update(
        nodeSelector={"karpenter.sh/capacity-type": "spot"}), "no non-preemptible"),
    "bad resources quoting": (lambda s: _groups(s)["cpu"]["rayStartParams"].update(
        resources="{raybrain_driver: 100}"), "cannot read the cluster"),
    "escaped resources quoting": (lambda s: _groups(s)["cpu"]["rayStartParams"].update(
        resources='"{\\"raybrain_driver\\": 100}"'), "KubeRay's rule"),
    "restart policy": (lambda s: _template_spec(_gpu_group(s)).update(restartPolicy="Always"),
                       "restartPolicy"),
    "GPU group without shared volume": (lambda s: _container(_gpu_group(s)).pop("volumeMounts"),
                                        "shared volume"),
    "literal password": (lambda s: _head_env(s).append(
        {"name": "MLFLOW_TRACKING_PASSWORD", "value": "hunter2"}), "literal value"),
    "password in the URI": (lambda s: _head_env(s)[0].update(
        value="http://user:hunter2@mlflow.mlflow.svc:5000"), "password in it"),
    "credentials not from a Secret": (lambda s: _container(s["headGroupSpec"]).pop("envFrom"),
                                      "from a Secret"),
    "no tracking server": (lambda s: _head_env(s).clear(), "MLFLOW_TRACKING_URI"),
}


@pytest.mark.parametrize("name", MANIFESTS)
@pytest.mark.parametrize("case", sorted(KUBERAY_BREAKS))
def test_manifest_checks_catch(name, case):
    docs = manifest(name)
    mutate, expected = KUBERAY_BREAKS[case]
    mutate(_cluster_spec_of(docs))
    problems = manifest_problems(docs)
    assert any(expected in p for p in problems), problems


def _job(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "RayJob")["spec"]


RAYJOB_BREAKS = {
    "not a sweep": (lambda d: _job(d).update(entrypoint="python train.py"), "raybrain sweep"),
    "no address": (lambda d: _job(d).update(
        entrypoint=_job(d)["entrypoint"].replace(" --address auto", "")), "--address auto"),
    "cluster left running": (lambda d: _job(d).pop("shutdownAfterJobFinishes"),
                             "shutdownAfterJobFinishes"),
    "no ttl": (lambda d: _job(d).pop("ttlSecondsAfterFinished"), "ttlSecondsAfterFinished"),
    "spec not mounted": (lambda d: _job(d).update(
        entrypoint="raybrain sweep /tmp/spec.yaml --address auto"), "neither in the image"),
    "no PVC object": (lambda d: d.remove(
        next(x for x in d if x["kind"] == "PersistentVolumeClaim")), "not defined in the file"),
    "RWO volume": (lambda d: next(x for x in d if x["kind"] == "PersistentVolumeClaim")["spec"]
                   .update(accessModes=["ReadWriteOnce"]), "ReadWriteMany"),
    "wrong apiVersion": (lambda d: next(x for x in d if x["kind"] == "RayJob").update(
        apiVersion="ray.io/v1alpha1"), "ray.io/v1"),
    "bad name": (lambda d: next(x for x in d if x["kind"] == "RayJob")["metadata"].update(
        name="Raybrain_Job"), "DNS-1035"),
}


@pytest.mark.parametrize("case", sorted(RAYJOB_BREAKS))
def test_rayjob_checks_catch(case):
    docs = manifest("rayjob")
    mutate, expected = RAYJOB_BREAKS[case]
    mutate(docs)
    problems = manifest_problems(docs)
    assert any(expected in p for p in problems), problems


# ---------------------------------------------------------------------------------------
# No literal credentials anywhere
def test_no_literal_credentials_anywhere():
    files = [CLUSTERS / f"{n}.yaml" for n in LAUNCHERS]
    files += [KUBERAY / f"{n}.yaml" for n in MANIFESTS] + [CLUSTER_SPEC]
    for path in files:
        for doc in _docs(path):
            assert secret_problems(doc, path.name) == []


@pytest.mark.parametrize("doc, expected", [
    ({"setup_commands": ["export MLFLOW_TRACKING_PASSWORD=hunter2"]}, "assigned in a command"),
    ({"setup_commands": ["aws configure set aws_access_key_id AKIAABCDEFGHIJKLMNOP"]},
     "AWS access key"),
    ({"tracking": {"uri": "https://alice:hunter2@mlflow.example.org"}}, "password in it"),
    ({"auth": {"api_token": "abc123"}}, "literal credential"),
])
def test_secret_checks_catch(doc, expected):
    problems = secret_problems(doc, "doc")
    assert any(expected in p for p in problems), problems


def test_secret_check_allows_references():
    ok = [{"name": "MLFLOW_TRACKING_PASSWORD",
           "valueFrom": {"secretKeyRef": {"name": "mlflow-credentials", "key": "password"}}},
          {"auth": {"ssh_private_key": "~/.ssh/id_ed25519"}},
          {"cmd": "export MLFLOW_TRACKING_TOKEN=$(cat /run/secrets/token)"}]
    assert secret_problems(ok, "doc") == []
