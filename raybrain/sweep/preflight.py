"""One preflight for ``raybrain validate``, ``raybrain sweep --dry-run`` and ``raybrain sweep``.

Everything a user can get wrong is checked here, before Ray starts and before any MLflow
run exists, the same way for the three commands:

1. the spec as written (an invalid spec is invalid whatever the command-line overrides);
2. which sweep this is: ``--name``, or for a ``--resume`` without one the sweep started
   from this spec file under this storage; the overrides it was started with
   (``--seeds``, ``--max-configs``) are reapplied, and one given again with another value
   is refused naming both;
3. the effective spec (overrides applied): params, arms, seeds, data files and their
   headers, the search metric, a resume against a changed spec;
4. where it writes: a tracking URI without credentials, an MLflow server that answers,
   a SQLite store whose folder exists; concurrency far above what the machine can run is
   warned about.
"""

from __future__ import annotations

import math
import os
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raybrain.errors import SpecError
from raybrain.sweep import storage as st
from raybrain.sweep.plan import SweepPlan, make_plan
from raybrain.sweep.spec import Spec, SpecWarning, parse_spec, validate_spec

#: overrides that shape a sweep's results or plan: recorded with it, reapplied on resume
RECORDED = ("seeds", "max_configs")
_FLAGS = {"seeds": "--seeds", "max_configs": "--max-configs"}


@dataclass(frozen=True)
class Overrides:
    """What the command line changes of a spec (None: not given)."""

    name: str | None = None
    seeds: int | None = None
    max_configs: int | None = None
    tracking_uri: str | None = None
    storage_path: str | None = None

    def recorded(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in RECORDED if getattr(self, k) is not None}


@dataclass
class Preflight:
    """A checked sweep: the effective spec and everything derived from it."""

    spec: Spec
    source: str
    task: Any
    data: Any
    plan: SweepPlan
    #: the overrides in force (given now or recorded with the sweep): ``{"seeds": 2}``
    overrides: dict[str, Any]
    storage: str
    #: the sweep exists already (a stage under storage): this run resumes it
    exists: bool
    #: the command that resumes this sweep, as a list of words
    resume_argv: list[str]
    #: the name the spec file gives (the sweep may run under another ``--name``)
    file_name: str = ""
    #: lines worth telling the user before the sweep starts (e.g. which sweep resumes)
    notes: list[str] = field(default_factory=list)

    @property
    def resume_command(self) -> str:
        return shlex.join(self.resume_argv)

    @property
    def max_configs(self) -> int | None:
        return self.overrides.get("max_configs")


def preflight(spec: Spec, source: str = "spec", *, overrides: Overrides = Overrides(),
              resume: bool = False, address: str | None = None, num_cpus: int | None = None,
              check_tracking: bool = True, read_storage: bool = True) -> Preflight:
    """Check ``spec`` with ``overrides`` applied; see the module docstring for the order.

    ``read_storage=False`` skips what the storage holds (recorded overrides, stored spec
    hash): for a driver that runs elsewhere (Ray Client), whose own preflight reads it.
    """
    # 1. the spec as written
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpecWarning)
        try:
            validate_spec(spec, source, check_data=False)
        except SpecError as err:
            if overrides.recorded() or overrides.name:
                raise SpecError(f"{err} (in the spec as written: command-line overrides do "
                                f"not make an invalid spec valid)") from None
            raise
    # 2. which sweep, and the overrides it was started with
    file_name = spec.name
    root = st.storage_root(overrides.storage_path or spec.storage.path)
    if read_storage:
        _check_storage_readable(root)
    notes: list[str] = []
    name = overrides.name or spec.name
    spec_file = str(Path(source).resolve()) if Path(source).is_file() else None
    if resume and read_storage and overrides.name is None and not _exists(root, name):
        found = st.sweeps_of(root, spec_file, spec.name)
        if len(found) == 1:
            name = found[0]
            notes.append(f"resuming sweep {name!r}, started from this spec with --name {name}")
        elif len(found) > 1:
            raise SpecError(f"--resume: several sweeps under {root} were started from "
                            f"{source}: {', '.join(found)}; say which with --name")
    recorded = st.recorded_overrides(root, name) if read_storage else None
    effective = _merge_overrides(recorded, overrides, name)
    # 3. the effective spec
    update: dict[str, Any] = {}
    if name != spec.name:
        update["name"] = name
    if "seeds" in effective:
        update["seeds"] = effective["seeds"]
    if update:
        spec = parse_spec({**spec.model_dump(), **update}, source)
    if overrides.tracking_uri is not None:
        spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(
            update={"uri": overrides.tracking_uri})})
    if overrides.storage_path is not None:
        spec = spec.model_copy(update={"storage": spec.storage.model_copy(
            update={"path": overrides.storage_path})})
    checked = validate_spec(spec, source)
    task = checked["task"]
    check_metric(spec, task, source)
    plan = make_plan(spec, task, effective.get("max_configs"))
    exists = _exists(root, name) if read_storage else False
    if read_storage:
        check_stored_spec(root, name, spec.spec_hash())
    if resume and read_storage and not exists and check_tracking:
        check_tracking_store(spec.tracking.uri)
        if not parent_exists(spec.tracking.uri, spec.tracking.experiment, name):
            raise SpecError(f"--resume: there is no sweep {name!r} to resume (no Tune "
                            f"experiment under {root} and no parent run in "
                            f"{spec.tracking.uri}, experiment {spec.tracking.experiment!r}); "
                            f"check --name and the spec's storage.path, or run without "
                            f"--resume to start it")
    # 4. where it writes
    if check_tracking:
        check_tracking_store(spec.tracking.uri)
    if address is None:
        _warn_concurrency(spec, num_cpus)
    argv = ["raybrain", "sweep", source, "--resume"]
    if name != file_name:
        argv += ["--name", name]
    for flag, value in (("--address", address), ("--tracking-uri", overrides.tracking_uri),
                        ("--storage-path", overrides.storage_path)):
        if value is not None:
            argv += [flag, value]
    return Preflight(spec, source, task, checked["data"], plan, effective, root, exists, argv,
                     file_name, notes)


def _check_storage_readable(root: str) -> None:
    """One line when the storage cannot be read from here (an object store without
    credentials or network, a path that is not a folder)."""
    try:
        fs, path = st.filesystem(root)
        fs.get_file_info(path)
    except Exception as exc:  # pyarrow raises OSError and its own errors
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise SpecError(f"storage.path {root!r} cannot be read from here ({first[:200]}); "
                        f"the sweep keeps its state there: check the path and credentials, "
                        f"or run the sweep where it is reachable (raybrain submit, or "
                        f"--address on the cluster)") from None


def _exists(root: str, name: str) -> bool:
    return any(st.stored_stage(root, stage) is not None for stage in st.stage_names(name))


def _merge_overrides(recorded: dict[str, Any] | None, given: Overrides,
                     name: str) -> dict[str, Any]:
    """The overrides in force: the recorded ones, which a value given now must equal."""
    now = given.recorded()
    if recorded is None:  # a new sweep
        return now
    for key in RECORDED:
        flag = _FLAGS[key]
        if key in now and key in recorded and now[key] != recorded[key]:
            raise SpecError(f"{flag} {now[key]} conflicts with {flag} {recorded[key]}, which "
                            f"sweep {name!r} was started with; leave {flag} out to resume it, "
                            f"or start a new sweep with --name")
        if key in now and key not in recorded:
            raise SpecError(f"sweep {name!r} was started without {flag}; resuming it with "
                            f"{flag} {now[key]} would change it; leave {flag} out, or start "
                            f"a new sweep with --name")
    return dict(recorded)


def check_metric(spec: Spec, task, source: str) -> None:
    allowed = task.metrics + (f"{task.primary_metric}_auc",)
    if spec.search.metric not in allowed:
        raise SpecError(f"{source}: search.metric {spec.search.metric!r} is not a metric of "
                        f"task {spec.task!r}; expected one of {sorted(allowed)}")


def check_stored_spec(root: str, name: str, spec_hash: str) -> None:
    """Refuse to resume a sweep whose stored spec hash differs from this spec's."""
    for stage in st.stage_names(name):
        stored = st.stored_stage(root, stage)
        if stored is None:
            continue
        if stored.get("spec_hash") != spec_hash:
            raise SpecError(f"sweep {name!r} in {st.join(root, stage)} was started with spec "
                            f"hash {stored.get('spec_hash')}, but this spec hashes to "
                            f"{spec_hash}; resuming with a changed spec is refused: use "
                            f"another --name or the original spec")


def check_tracking_store(uri: str) -> None:
    """Credentials, a server that answers, or a SQLite file whose folder exists."""
    from raybrain.sweep.cluster import check_tracking_uri

    check_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):]).expanduser()
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise SpecError(f"tracking URI {uri}: folder {str(folder)!r} does not exist; "
                            f"create it or pass another --tracking-uri")
        if not os.access(folder, os.W_OK):
            raise SpecError(f"tracking URI {uri}: folder {str(folder)!r} is not writable")


def _warn_concurrency(spec: Spec, num_cpus: int | None) -> None:
    """Warn when the spec asks for more concurrent configs than this machine can run."""
    res = spec.resources
    explicit = res.max_concurrent_trials or spec.search.max_concurrent
    if not explicit:
        return
    cpus = num_cpus or os.cpu_count() or 1
    per = (res.num_workers * res.cpus_per_run if res.num_workers > 1 or res.use_gpu is True
           else res.cpus_per_run)
    fits = max(1, math.floor(cpus / per + 1e-9))
    if explicit > fits:
        warnings.warn(f"max_concurrent {explicit} is above what this machine can run at once: "
                      f"{fits} config(s) of {per:g} CPU(s) each on {cpus} CPUs; the others "
                      f"wait their turn", SpecWarning, stacklevel=3)


def parent_exists(uri: str, experiment: str, name: str) -> bool:
    """Whether MLflow holds the parent run of sweep ``name`` (read only: nothing created)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).expanduser().exists():
        return False
    from mlflow.tracking import MlflowClient

    from raybrain.sweep.tracking import PARENT_TAG

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return False
    runs = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`{PARENT_TAG}` = '{name}' and tags.`raybrain.role` = 'sweep'"), max_results=1)
    return bool(runs)
