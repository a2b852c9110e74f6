"""The sweep spec: one YAML file, validated before anything runs.

Layout (every key optional except ``name`` and ``task``)::

    name: b2m-memory-quick          # stable sweep name: MLflow parent run, Tune experiment
    task: b2m-memory                # a registered task
    data: {...}                     # the task's data section (its own schema)
    params:                         # fixed values, or one search distribution per knob
      hidden: 64
      alpha: {grid: [0.01, 0.05]}   # grid | uniform: [lo, hi] | loguniform: [lo, hi]
      lr: {loguniform: [1e-4, 1e-2]}#   | int: [lo, hi] | choice: [a, b]
    search: {algorithm: grid, metric: test_accuracy_auc, mode: max, objective: brain,
             num_configs: 8, scheduler: none, primary: alpha, max_concurrent: 2, seed: 0}
    arms: {include: [brain, shuffled, noise, l2, none], l2_grid: [1e-6, 1e-4]}
    seeds: 5                        # or an explicit list of seeds
    data_seed: 0
    significance: 0.05
    resources: {num_workers: 1, use_gpu: false, cpus_per_run: 1}
    tracking: {uri: sqlite:///mlflow.db, experiment: raybrain}
    storage: {path: ./raybrain_results, checkpoint_every: auto}

Every problem is a :class:`~raybrain.errors.SpecError` with one line naming the key, what
was expected and what was received. Unknown keys are errors that name the key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raybrain.errors import SpecError

DISTRIBUTIONS = ("grid", "uniform", "loguniform", "int", "choice")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchSpec(_Strict):
    algorithm: Literal["grid", "optuna", "random"] = "grid"
    metric: str = "test_accuracy_auc"
    mode: Literal["max", "min"] = "max"
    #: what the search optimises per config: the brain arm's metric (mean over seeds)
    #: or its paired margin over the shuffled arm (mean over seeds of brain - shuffled)
    objective: Literal["brain", "margin_shuffled"] = "brain"
    num_configs: int | None = Field(None, ge=1)
    scheduler: Literal["none", "asha"] = "none"
    grace_period: int = Field(1, ge=1)
    primary: str | None = None
    max_concurrent: int | None = Field(None, ge=1)
    seed: int = 0


class ArmsSpec(_Strict):
    include: list[str] = ["brain", "shuffled", "noise", "l2", "none"]
    l2_grid: list[float] = [1e-7, 1e-6, 1e-5, 1e-4, 1e-3]


class ConfirmSpec(_Strict):
    """The confirmation stage: the best configs of the search re-run on fresh seeds.

    ``configs``: how many of the search's best configs to confirm (default: 1 for optuna
    and random searches; 0 for grids, whose every point is reported with Holm
    correction). ``seeds``: fresh seeds per arm (default: as many as the search used).
    """

    configs: int | None = Field(None, ge=0)
    seeds: int | None = Field(None, ge=1)


class ResourcesSpec(_Strict):
    #: Ray Train workers per run; more than 1 (or a GPU) runs each run as a TorchTrainer
    num_workers: int = Field(1, ge=1)
    #: true, false, or "auto" (true when the cluster has or can scale to GPUs)
    use_gpu: bool | Literal["auto"] = False
    #: CPUs of a run trained in-process, or of each Train worker of a TorchTrainer run
    cpus_per_run: float = Field(1.0, gt=0)
    #: GPUs of each Train worker when use_gpu is on
    gpus_per_worker: float = Field(1.0, gt=0)
    #: extra (custom) resources every Tune trial asks for, e.g. {raybrain_driver: 0.01}
    #: to keep trial drivers on the non-preemptible nodes that declare that resource
    driver_resources: dict[str, float] = {}
    #: how many configs train at once (default: as many as the cluster can hold, counting
    #: the nodes its autoscaler may still add)
    max_concurrent_trials: int | None = Field(None, ge=1)
    #: train the runs of a config that share their params (the seeds of an arm, the brain,
    #: shuffled and noise arms) as one batch of models, when the task can and runs train
    #: in-process: "auto" (default) or true: where the task can; false: each run alone
    vectorise: bool | Literal["auto"] = "auto"


class TrackingSpec(_Strict):
    #: sqlite:///mlflow.db on a laptop; an http(s):// MLflow server on a cluster
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "raybrain"
    #: while MLflow cannot be written, retry the waiting writes every this many seconds
    retry_s: float = Field(15.0, gt=0)
    #: the driver writes each run's new epochs to MLflow in one request every this many
    #: seconds (a run's last epoch at once): each request costs the driver ~8 ms of CPU
    #: beside ~0.2 ms per value, taken from the trials on a small machine
    flush_s: float = Field(15.0, ge=0)
    #: at the end of a stage, wait this long for an unreachable MLflow before giving up
    #: (nothing is lost: ``--resume`` writes the rest later)
    wait_s: float = Field(300.0, ge=0)
    #: log the prepared brain data (raw neural data) as artifacts of the sweep's parent run;
    #: off by default: brain data is personal data
    log_brain_data: bool = False


class StorageSpec(_Strict):
    #: Tune experiments and Train checkpoints; on a multi-node cluster a path every node
    #: sees (NFS) or an object store URI (s3://, gs://)
    path: str = "./raybrain_results"
    #: a trial checkpoints its runs every this many epochs and after the last one; "auto"
    #: (default): after an epoch that ends ``checkpoint_s`` seconds or more after the
    #: trial's last checkpoint (a resume repeats at most that much of a trial's work)
    checkpoint_every: int | Literal["auto"] = "auto"
    checkpoint_s: float = Field(30.0, gt=0)
    #: retries of a Tune trial (a config) whose process or node died (ray.tune.FailureConfig)
    max_failures: int = Field(2, ge=0)
    #: restarts of a TorchTrainer run's worker group from its last checkpoint
    #: (ray.train.FailureConfig)
    run_max_failures: int = Field(2, ge=0)


class Spec(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    task: str
    data: dict[str, Any] = {}
    params: dict[str, Any] = {}
    search: SearchSpec = SearchSpec()
    arms: ArmsSpec = ArmsSpec()
    seeds: int | list[int] = 5
    confirm: ConfirmSpec = ConfirmSpec()
    data_seed: int = 0
    significance: float = Field(0.05, gt=0, lt=1)
    resources: ResourcesSpec = ResourcesSpec()
    tracking: TrackingSpec = TrackingSpec()
    storage: StorageSpec = StorageSpec()

    # -- derived ----------------------------------------------------------------------
    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    @property
    def confirm_configs(self) -> int:
        """How many configs the confirmation stage re-runs (0: no confirmation stage)."""
        if self.confirm.configs is not None:
            return self.confirm.configs
        return 0 if self.search.algorithm == "grid" else 1

    @property
    def confirm_seeds(self) -> list[int]:
        """Fresh seeds for the confirmation stage, none of them used by the search."""
        n = self.confirm.seeds or len(self.seed_list)
        start = max(self.seed_list) + 1
        return list(range(start, start + n))

    @property
    def verdict_stage(self) -> str:
        return "confirm" if self.confirm_configs else "search"

    def searched(self) -> dict[str, dict[str, Any]]:
        """The params given as a search distribution: ``{name: {kind: values}}``."""
        return {k: v for k, v in self.params.items() if isinstance(v, dict)}

    def fixed(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if not isinstance(v, dict)}

    def spec_hash(self) -> str:
        """Hash of everything that defines the sweep's results (not where they are stored)."""
        d = self.model_dump(exclude={"tracking", "storage", "resources"})
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def primary(self) -> str | None:
        if self.search.primary:
            return self.search.primary
        s = list(self.searched())
        return s[0] if s else None


# ---------------------------------------------------------------------------------------
_EXPECT = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "list_type": "a list", "tuple_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "none_required": "empty (null)",
}
_BOUND = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
          "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}


def _field_path(loc: tuple) -> str:
    """``seeds``, ``search.num_configs``, ``data.spikes[0]``: the key a user wrote.

    Pydantic adds the member type of a union to the location (``seeds.int``,
    ``seeds.list[int]``); those parts are dropped.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in ("int", "float", "str", "bool", "list", "dict", "none"):
            continue
        else:
            out += ("." if out else "") + part
    return out


def _expectation(e: dict) -> str:
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind in _EXPECT:
        return _EXPECT[kind]
    if kind in _BOUND:
        key, op = _BOUND[kind]
        return f"{op} {ctx.get(key)}"
    if kind == "literal_error":
        return f"one of {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return "made of letters, digits, '_', '.' and '-', starting with a letter or digit"
    if kind == "string_too_short":
        return "a non-empty string"
    return e["msg"].removeprefix("Value error, ").removeprefix("Input should be ")


def friendly_errors(err: ValidationError, prefix: str = "") -> tuple[str, str]:
    """``(key, message)`` of the first problem, in plain words: ``seeds must be an integer
    or a list, got 'five'`` (never pydantic's ``seeds.int: Input should be ...``).

    The alternatives of a union (``int | list[int]``) are merged into one message.
    """
    errors = err.errors()
    first = _field_path(errors[0]["loc"])
    same = [e for e in errors if _field_path(e["loc"]) == first]
    key = f"{prefix}{first}" if first else prefix.rstrip(".")
    e0 = same[0]
    if e0["type"] == "value_error":
        msg = e0["msg"].removeprefix("Value error, ")
        return key, (f"{key}: {msg}" if first else msg)
    expected = list(dict.fromkeys(_expectation(e) for e in same))
    return key, f"{key} must be {' or '.join(expected)}, got {e0.get('input')!r}"


def _pydantic_message(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    loc = _field_path(e["loc"])
    if e["type"] == "extra_forbidden":
        parent = tuple(x for x in e["loc"][:-1] if isinstance(x, str))
        return f"{source}: unknown key {loc!r}{_suggest(e['loc'][-1], parent)}"
    if e["type"] == "missing":
        return f"{source}: missing required key {loc!r}"
    return f"{source}: {friendly_errors(err)[1]}"


_KNOWN = {
    (): list(Spec.model_fields),
    ("search",): list(SearchSpec.model_fields),
    ("arms",): list(ArmsSpec.model_fields),
    ("resources",): list(ResourcesSpec.model_fields),
    ("tracking",): list(TrackingSpec.model_fields),
    ("storage",): list(StorageSpec.model_fields),
    ("confirm",): list(ConfirmSpec.model_fields),
}


def _suggest(name, parent: tuple) -> str:
    known = _KNOWN.get(tuple(parent))
    if not known:
        return ""
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} expected one of {known}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping (YAML would keep
    the last one silently, so ``seeds: 10`` above ``seeds: 2`` would vanish)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise SpecError(f"{getattr(self, 'source', 'spec')}: key {key!r} is given "
                                f"twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """Parse spec YAML, refusing duplicate keys; errors are one :class:`SpecError` line."""
    loader = _UniqueKeyLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file (schema only; see :func:`validate_spec` for the rest)."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"spec file {str(path)!r} is a directory; expected a YAML sweep spec")
    if not path.is_file():
        raise SpecError(f"spec file {str(path)!r} not found; expected a YAML sweep spec")
    try:
        raw = load_yaml(path.read_text(), str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_spec(raw, source=str(path))


def parse_spec(raw: Any, source: str = "spec") -> Spec:
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping of spec keys, got {type(raw).__name__}")
    try:
        return Spec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_pydantic_message(err, source)) from None


# ---------------------------------------------------------------------------------------
def _check_value(name: str, value: Any, param, source: str) -> Any:
    kind = param.kind
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
        if not math.isfinite(value):
            raise SpecError(f"{source}: params.{name} must be finite, got {value!r}")
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        pass
    elif kind is str and isinstance(value, str):
        pass
    elif kind is bool and isinstance(value, bool):
        pass
    else:
        raise SpecError(f"{source}: params.{name} must be of type {kind.__name__}, "
                        f"got {value!r} ({type(value).__name__})")
    if param.low is not None and value < param.low:
        raise SpecError(f"{source}: params.{name} must be >= {param.low}, got {value!r}")
    if param.high is not None and value > param.high:
        raise SpecError(f"{source}: params.{name} must be <= {param.high}, got {value!r}")
    if param.choices is not None and value not in param.choices:
        raise SpecError(f"{source}: params.{name} must be one of {list(param.choices)}, "
                        f"got {value!r}")
    return value


def _param_values(name: str, dist: dict, param, source: str) -> list[Any]:
    """Check one searched param; return the values whose bounds matter (grid/choice: all)."""
    if len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise SpecError(f"{source}: params.{name} must be a value or one of "
                        f"{{{', '.join(k + ': ...' for k in DISTRIBUTIONS)}}}, got {dist!r}")
    kind, values = next(iter(dist.items()))
    if not isinstance(values, list) or not values:
        raise SpecError(f"{source}: params.{name}.{kind} must be a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform", "int"):
        if len(values) != 2:
            raise SpecError(f"{source}: params.{name}.{kind} must be [low, high], got {values!r}")
        lo, hi = (_check_value(name, v, param, source) for v in values)
        if not lo <= hi:
            raise SpecError(f"{source}: params.{name}.{kind}: low <= high must hold, "
                            f"got (low={lo}, high={hi})")
        if kind == "loguniform" and lo <= 0:
            raise SpecError(f"{source}: params.{name}.loguniform needs low > 0, got {lo}")
        if kind == "int" and param.kind is not int:
            raise SpecError(f"{source}: params.{name} is a {param.kind.__name__} knob; "
                            f"'int' ranges are for int knobs")
        return [lo, hi]
    return [_check_value(name, v, param, source) for v in values]


def validate_spec(spec: Spec, source: str = "spec", *, check_data: bool = True) -> dict[str, Any]:
    """Check the spec against its task: param names, types, bounds, arms, data files.

    Returns the parsed task data section. Raises :class:`SpecError` on the first problem;
    warns when the seeds cannot reach the spec's significance level.
    """
    import raybrain.tasks as tasks
    from raybrain.sweep.arms import arm_names

    task = tasks.get(spec.task)
    for name, value in spec.params.items():
        if name not in task.params:
            close = difflib.get_close_matches(name, list(task.params), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"{source}: unknown param {name!r} for task {spec.task!r}{hint} "
                            f"expected one of {sorted(task.params)}")
    values: dict[str, list[Any]] = {}
    for name, value in spec.params.items():
        param = task.params[name]
        if isinstance(value, dict):
            values[name] = _param_values(name, value, param, source)
        else:
            values[name] = [_check_value(name, value, param, source)]

    searched = spec.searched()
    algo = spec.search.algorithm
    for name, dist in searched.items():
        kind = next(iter(dist))
        if algo == "grid" and kind not in ("grid", "choice"):
            raise SpecError(f"{source}: search.algorithm 'grid' needs params.{name} as "
                            f"{{grid: [...]}}, got {{{kind}: ...}}; use optuna or random for ranges")
        if algo != "grid" and kind == "grid":
            raise SpecError(f"{source}: params.{name} is a grid but search.algorithm is "
                            f"{algo!r}; use choice: [...] or search.algorithm: grid")
    if algo != "grid" and spec.search.num_configs is None:
        raise SpecError(f"{source}: search.algorithm {algo!r} needs search.num_configs (>= 1)")
    if algo != "grid" and not searched:
        raise SpecError(f"{source}: search.algorithm {algo!r} needs at least one searched param")
    if spec.search.primary and spec.search.primary not in task.params:
        raise SpecError(f"{source}: search.primary {spec.search.primary!r} is not a param of "
                        f"task {spec.task!r}; expected one of {sorted(task.params)}")

    # arms
    for arm in spec.arms.include:
        if arm not in arm_names(task):
            raise SpecError(f"{source}: unknown arm {arm!r} in arms.include for task "
                            f"{spec.task!r}; expected some of {arm_names(task)}")
    if len(set(spec.arms.include)) != len(spec.arms.include):
        raise SpecError(f"{source}: arms.include lists an arm twice: {spec.arms.include}")
    if "brain" not in spec.arms.include:
        raise SpecError(f"{source}: arms.include must contain 'brain' (every other arm is "
                        f"compared with it), got {spec.arms.include}")
    if spec.search.objective == "margin_shuffled" and "shuffled" not in spec.arms.include:
        raise SpecError(f"{source}: search.objective 'margin_shuffled' needs the 'shuffled' arm "
                        f"in arms.include, got {spec.arms.include}")
    if task.max_workers is not None and spec.resources.num_workers > task.max_workers:
        raise SpecError(f"{source}: resources.num_workers must be <= {task.max_workers} for task "
                        f"{spec.task!r} (its runs cannot be split across workers), got "
                        f"{spec.resources.num_workers}")
    w = task.brain_weight
    if w is not None:
        weights = values.get(w, [task.params[w].default])
        bad = [a for a in weights if not a > 0]
        if bad:
            high = task.params[w].high
            rng = f"lie in (0, {high:g}]" if high is not None else "be > 0"
            raise SpecError(f"{source}: params.{w} must {rng} for the brain arm ({w} = 0 is "
                            f"the 'none' arm), got {bad[0]!r}")
    if "l2" in spec.arms.include and task.l2_param is None:
        raise SpecError(f"{source}: arms.include has 'l2' but task {spec.task!r} declares no "
                        f"L2 param to grid over; drop 'l2' from arms.include")
    if "l2" in spec.arms.include:
        if not spec.arms.l2_grid or any(not (w > 0 and math.isfinite(w)) for w in spec.arms.l2_grid):
            raise SpecError(f"{source}: arms.l2_grid must be a non-empty list of weight decays "
                            f"> 0, got {spec.arms.l2_grid}")

    every = spec.storage.checkpoint_every
    if every != "auto" and every < 1:
        raise SpecError(f"{source}: storage.checkpoint_every must be >= 1 or 'auto', got {every}")
    # seeds
    seeds = spec.seed_list
    if isinstance(spec.seeds, int) and spec.seeds < 1:
        raise SpecError(f"{source}: seeds must be >= 1, got {spec.seeds}")
    if not seeds:
        raise SpecError(f"{source}: seeds must list at least one seed, got []")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"{source}: seeds must be distinct, got {seeds}")
    from raybrain.analysis.stats import min_exact_mw_pvalue

    n = len(seeds)
    if n < 2 or min_exact_mw_pvalue(n) >= spec.significance:
        warnings.warn(
            f"{source}: with {n} seed(s) per arm the smallest exact one-sided Mann-Whitney "
            f"p-value is {min_exact_mw_pvalue(n):.3g}, which is not below significance "
            f"{spec.significance}; use at least "
            f"{next(k for k in range(2, 50) if min_exact_mw_pvalue(k) < spec.significance)} seeds",
            SpecWarning, stacklevel=2)

    if algo != "grid" and spec.confirm_configs == 0:
        warnings.warn(
            f"{source}: confirm.configs is 0, so the verdict is computed on the seeds that "
            f"selected the config, which inflates false positives; confirm on fresh seeds "
            f"(confirm.configs >= 1)", SpecWarning, stacklevel=2)
    if spec.confirm_configs:
        nc = len(spec.confirm_seeds)
        if nc < 2 or min_exact_mw_pvalue(nc) >= spec.significance:
            warnings.warn(
                f"{source}: the confirmation stage's {nc} seed(s) per arm cannot give an exact "
                f"one-sided Mann-Whitney p-value below significance {spec.significance}",
                SpecWarning, stacklevel=2)
        n_grid = math.prod(len(next(iter(d.values()))) for d in searched.values())
        if algo == "grid" and spec.confirm_configs > n_grid:
            raise SpecError(f"{source}: confirm.configs ({spec.confirm_configs}) exceeds the "
                            f"number of grid configs")

    try:
        data = task.parse_data(spec.data)
    except ValidationError as err:
        e = err.errors()[0]
        loc = _field_path(e["loc"])
        if e["type"] == "extra_forbidden":
            known = sorted(task.data_model.model_fields)
            raise SpecError(f"{source}: unknown key 'data.{loc}' for task {spec.task!r}; "
                            f"expected one of {known}") from None
        if e["type"] == "missing":
            raise SpecError(f"{source}: missing required key 'data.{loc}'") from None
        raise SpecError(f"{source}: {friendly_errors(err, 'data.')[1]}") from None
    if check_data:
        task.check_data(data, values)
    return {"task": task, "data": data}


class SpecWarning(UserWarning):
    """A spec that runs but cannot deliver what it asks for (e.g. too few seeds)."""
