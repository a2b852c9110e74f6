"""``raybrain submit`` and ``raybrain jobs``: a sweep as a Ray Job on a cluster.

``raybrain submit SPEC --address http://HEAD:8265`` validates the spec here (one line and
exit code 2 on bad input, before anything is sent), ships the working directory, and
starts ``raybrain sweep SPEC --address auto`` as a Ray Job: its driver runs on the head,
writes MLflow from there and survives the laptop going away. The job runs in a temporary
copy of the working directory, so a relative tracking store or storage path, which would
vanish with that copy, is refused. Credentials are never put on a command line or into
the job's runtime environment (the dashboard shows both): the cluster's environment
provides ``MLFLOW_TRACKING_*``. ``raybrain jobs status|logs|stop|list`` follow the job.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from raybrain.errors import SpecError

#: never shipped with the working directory: environments, results, stores (and SQLite's
#: journal files), caches, and files that hold secrets (``mlflow.env`` of clusters/README.md,
#: ``.env``, keys): the package is stored in the cluster's GCS and unpacked on its nodes
EXCLUDES = [".venv", "venv", ".git", "raybrain_results", "raybrain_report", "mlruns",
            "mlartifacts", "*.db", "*.db-journal", "*.db-wal", "*.db-shm", "__pycache__",
            "*.pyc", ".pytest_cache", "*.egg-info", "tests/artifacts", "bench/results",
            ".env", ".env.*", "*.env", ".netrc", "*.pem", "*.key", ".raybrain",
            # prepared-data caches and synthetic drives are rebuilt where the sweep runs
            ".raybrain-cache", "raybrain_data"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
ACTIVE = ("PENDING", "RUNNING")


def default_address() -> str:
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(var, "")
        if value.startswith(("http://", "https://")):
            return value
    return "http://127.0.0.1:8265"


def add_jobs_subparsers(sub) -> None:
    from raybrain.cli_args import positive_int as _positive_int  # the sweep command's own check

    s = sub.add_parser("submit", help="run a sweep spec as a Ray Job on a cluster")
    s.add_argument("spec", help="sweep spec YAML, inside the working directory")
    s.add_argument("--address", default=None,
                   help="Ray Jobs API of the cluster (default: $RAY_API_SERVER_ADDRESS, or "
                        "$RAY_ADDRESS if http, else http://127.0.0.1:8265)")
    s.add_argument("--working-dir", default=".", help="directory shipped with the job (default: .)")
    s.add_argument("--tracking-uri", help="MLflow server the cluster reaches (http://...)")
    s.add_argument("--storage-path", help="shared storage for Tune state and checkpoints")
    s.add_argument("--name", help="sweep name (default: the spec's)")
    s.add_argument("--seeds", type=_positive_int, help="number of seeds per arm")
    s.add_argument("--max-configs", type=_positive_int, help="run at most this many configs")
    s.add_argument("--resume", action="store_true", help="the sweep must exist; continue it")
    s.add_argument("--job-id", help="submission id (default: chosen by Ray)")
    s.add_argument("--wait", action="store_true",
                   help="follow the job's logs until it ends; exit 0 only if it succeeded")
    j = sub.add_parser("jobs", help="status, logs, stop or list of submitted sweeps")
    j.add_argument("action", choices=["status", "logs", "stop", "list"])
    j.add_argument("job_id", nargs="?", help="the job id printed by raybrain submit")
    j.add_argument("--address", default=None, help="Ray Jobs API (default as for submit)")
    j.add_argument("--follow", action="store_true", help="logs: follow until the job ends")


def _client(address: str):
    """A Jobs client, or one line saying why the address does not answer."""
    import urllib.error
    import urllib.request

    if not address.startswith(("http://", "https://")):
        raise SpecError(f"--address {address!r} is not a Ray Jobs API address; expected "
                        f"http://HEAD:8265 (the dashboard port)")
    from raybrain.sweep.remote import use_ray_token

    use_ray_token(address)
    try:
        urllib.request.urlopen(address.rstrip("/") + "/api/version", timeout=5)  # noqa: S310
    except urllib.error.HTTPError:
        pass  # something answers (auth is handled by the client below)
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise SpecError(f"no Ray Jobs API at {address} ({reason}); start the cluster with the "
                        f"dashboard (ray[default]) or tunnel to it with 'ray dashboard "
                        f"CLUSTER.yaml'") from None
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError) as err:
        line = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise SpecError(f"the Ray Jobs API at {address} refused the connection: {line}") from None


def _relative_uri(uri: str) -> bool:
    if uri.startswith(("http://", "https://", "databricks")):
        return False
    if uri.startswith("sqlite:"):
        return not uri.startswith("sqlite:////")
    if uri.startswith("file:"):
        return not uri.startswith("file:///")
    return "://" not in uri and not uri.startswith("/")


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def _check_data_paths(spec, source: str, workdir: Path) -> None:
    """Data files travel with the working directory, or sit where the cluster sees them."""
    import raybrain.tasks as tasks

    for key, value in tasks.get(spec.task).data_path_items(spec.data):
        if "://" in value:
            continue
        path = Path(value).expanduser()
        if path.is_absolute():
            _warn(f"{source}: {key} {value} is read on the cluster: it must exist at that "
                  f"path on the node that runs each trial (a shared filesystem)")
            continue
        if not (workdir / path).resolve().is_relative_to(workdir):
            raise SpecError(f"{source}: {key} {value!r} lies outside the working directory "
                            f"{str(workdir)!r}, which is all the job receives; move the file "
                            f"into it or give a path every cluster node sees")


def build_submission(args: argparse.Namespace, out=None) -> dict[str, Any]:
    """Validate everything locally; return the job's entrypoint and runtime environment.

    The spec is validated from the working directory, as the job will see it there:
    relative data paths resolve the same way here and on the cluster.
    """
    from raybrain.sweep import load_spec
    from raybrain.sweep.cluster import check_tracking_uri
    from raybrain.sweep.preflight import Overrides, preflight

    out = out or _warn
    workdir = Path(args.working_dir).resolve()
    spec_path = Path(args.spec).resolve()
    if not workdir.is_dir():
        raise SpecError(f"--working-dir {str(workdir)!r} is not a directory")
    spec = load_spec(spec_path)
    _check_data_paths(spec, args.spec, workdir)
    here = os.getcwd()
    os.chdir(workdir)
    try:
        # the same preflight as the sweep's, minus the stores: they are the cluster's
        preflight(spec, args.spec, overrides=Overrides(
            name=args.name, seeds=args.seeds, max_configs=args.max_configs,
            tracking_uri=args.tracking_uri, storage_path=args.storage_path),
            check_tracking=False, read_storage=False)
    finally:
        os.chdir(here)
    try:
        rel = spec_path.relative_to(workdir)
    except ValueError:
        raise SpecError(f"spec {str(spec_path)!r} is not inside the working directory "
                        f"{str(workdir)!r}, which is what the job receives; move it there or "
                        f"pass --working-dir") from None
    uri = args.tracking_uri or spec.tracking.uri
    if _relative_uri(uri):
        raise SpecError(f"tracking URI {uri!r} is relative: the job runs in a temporary copy "
                        f"of the working directory and its MLflow store would vanish with it; "
                        f"pass --tracking-uri http://MLFLOW_HOST:5000 (or an absolute "
                        f"sqlite:////path on a shared filesystem)")
    storage = args.storage_path or spec.storage.path
    if "://" not in storage and not storage.startswith(("/", "~")):
        raise SpecError(f"storage.path {storage!r} is relative: the job's checkpoints would "
                        f"vanish with its temporary working directory; set storage.path in the "
                        f"spec (or --storage-path) to a shared path or s3://BUCKET/raybrain")
    if not uri.startswith(("http://", "https://", "databricks")):
        out(f"tracking URI {uri} is a path on the cluster's head node; it must be "
            f"on a filesystem the head node shares")
    check_tracking_uri(uri)  # credentials in it are refused; a server must answer
    cmd = ["raybrain", "sweep", rel.as_posix(), "--address", "auto"]
    for flag, value in (("--tracking-uri", args.tracking_uri), ("--storage-path", args.storage_path),
                        ("--name", args.name), ("--seeds", args.seeds),
                        ("--max-configs", args.max_configs)):
        if value is not None:
            cmd += [flag, str(value)]
    if args.resume:
        cmd.append("--resume")
    return {"entrypoint": shlex.join(cmd), "name": args.name or spec.name,
            "runtime_env": {"working_dir": str(workdir), "excludes": EXCLUDES},
            "metadata": {"raybrain.sweep": args.name or spec.name, "raybrain.spec": rel.as_posix()}}


def _submit(args: argparse.Namespace) -> int:
    sub = build_submission(args)
    address = args.address or default_address()
    client = _client(address)
    _refuse_running(client, sub["name"], address)
    job_id = _submit_job(client, sub, args.job_id)
    print(f"submitted sweep {sub['name']!r} as Ray Job {job_id} at {address}", flush=True)
    print(f"  raybrain jobs status {job_id} --address {address}\n"
          f"  raybrain jobs logs {job_id} --address {address} --follow\n"
          f"  raybrain jobs stop {job_id} --address {address}", flush=True)
    if not args.wait:
        return 0
    status = _follow_or_detach(client, job_id, address)
    if status is None:
        return 130
    print(f"job {job_id}: {status}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


def _refuse_running(client, name: str, address: str) -> None:
    """Two drivers of one sweep would race on its Tune state and its MLflow runs."""
    try:
        jobs = client.list_jobs()
    except (RuntimeError, OSError) as err:
        line = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise SpecError(f"the Ray Jobs API at {address} could not list its jobs: {line}") from None
    for job in jobs:
        if (job.metadata or {}).get("raybrain.sweep") == name and str(job.status) in ACTIVE:
            job_id = job.submission_id or job.job_id
            raise SpecError(f"sweep {name!r} is already {str(job.status).lower()} as Ray Job "
                            f"{job_id} at {address}; follow it (raybrain jobs logs {job_id} "
                            f"--follow) or stop it (raybrain jobs stop {job_id}) before "
                            f"submitting it again")


def _follow_or_detach(client, job_id: str, address: str) -> str | None:
    """Follow the job; on Ctrl-C leave it running (None) and say how to find it again."""
    try:
        return _follow(client, job_id)
    except KeyboardInterrupt:
        print(f"stopped following; job {job_id} keeps running on the cluster: "
              f"raybrain jobs logs {job_id} --address {address} --follow, or "
              f"raybrain jobs stop {job_id} --address {address}", file=sys.stderr, flush=True)
        return None
    except (RuntimeError, OSError) as err:
        line = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise SpecError(f"lost the Ray Jobs API at {address} while following job {job_id} "
                        f"({line}); the job may still run: raybrain jobs status {job_id} "
                        f"--address {address}") from None


def _submit_job(client, sub: dict[str, Any], job_id: str | None, wait_s: float = 60.0) -> str:
    """Submit; a cluster that has just started answers "no available agent" for a while."""
    deadline = time.time() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=sub["entrypoint"], runtime_env=sub["runtime_env"],
                                     submission_id=job_id, metadata=sub["metadata"])
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.time() > deadline:
                line = next((ln for ln in str(err).splitlines() if ln.strip()), "")
                raise SpecError(f"the Ray Jobs API refused the job: {line}") from None
            time.sleep(1.0)


def _follow(client, job_id: str) -> str:
    """Print the job's log as it grows until the job ends; return its final status."""
    shown = 0
    while True:
        status = str(client.get_job_status(job_id))
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            sys.stdout.write(logs[shown:])
            sys.stdout.flush()
            shown = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(1.0)


def _jobs(args: argparse.Namespace) -> int:
    address = args.address or default_address()
    if args.action != "list" and not args.job_id:
        raise SpecError(f"raybrain jobs {args.action} needs a job id (see raybrain jobs list)")
    client = _client(address)
    if args.action == "list":
        for job in client.list_jobs():
            meta = job.metadata or {}
            print(f"{job.submission_id or job.job_id}  {job.status}  "
                  f"sweep={meta.get('raybrain.sweep', '-')}  {job.entrypoint}")
        return 0
    try:
        info = client.get_job_info(args.job_id)
    except RuntimeError:
        raise SpecError(f"no job {args.job_id!r} at {address}; see raybrain jobs list "
                        f"--address {address}") from None
    if args.action == "status":
        print(f"{args.job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
        return 0
    if args.action == "logs":
        if args.follow:
            status = _follow_or_detach(client, args.job_id, address)
            if status is None:
                return 130
            print(f"job {args.job_id}: {status}")
        else:
            sys.stdout.write(client.get_job_logs(args.job_id))
        return 0
    stopped = client.stop_job(args.job_id)
    print(f"{args.job_id}: " + ("stop requested" if stopped else f"already {info.status}"))
    return 0


def run_jobs_command(args: argparse.Namespace) -> int:
    return _submit(args) if args.command == "submit" else _jobs(args)
