"""Spec validation and the CLI's bad-input contract: one line, exit 2, nothing started."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from raybrain.cli import main
from raybrain.data import MemoryTaskConfig, save_memory_npz, simulate_episodes, synthetic_brain
from raybrain.errors import SpecError
from raybrain.sweep import SpecWarning, load_spec, parse_spec, validate_spec
from tests.conftest import WAIT_S

pytestmark = pytest.mark.unit


def _cli_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    return code, errors


def _assert_rejected(tmp_path, capsys, write_spec, d, *needles):
    path = write_spec(d)
    code, errors = _cli_error(capsys, ["sweep", str(path)])
    assert code == 2
    assert len(errors) == 1, errors
    for needle in needles:
        assert needle in errors[0], errors[0]
    # nothing half-written: no MLflow store, no Tune results
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "raybrain_results").exists()
    return errors[0]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_shipped_specs_validate():
    from tests.conftest import ROOT

    for name in ("b2m_memory.yaml", "b2m_memory_quick.yaml", "b2m_memory_quick_null.yaml"):
        spec = load_spec(ROOT / "search_spaces" / name)
        validate_spec(spec, name)
    paper = load_spec(ROOT / "search_spaces" / "b2m_memory.yaml")
    assert paper.params["hidden"] == 512 and paper.params["epochs"] == 150
    assert paper.params["alpha"]["grid"] == pytest.approx(np.arange(1, 11) * 0.004)
    assert paper.seed_list == list(range(10)) and len(paper.arms.l2_grid) == 10
    assert paper.arms.l2_grid[0] == 1e-7 and paper.arms.l2_grid[-1] == 1e-3
    quick = load_spec(ROOT / "search_spaces" / "b2m_memory_quick.yaml")
    assert len(quick.seed_list) >= 5


def test_shipped_driving_specs_follow_the_paper():
    from tests.conftest import ROOT

    for name in ("b2m_driving.yaml", "b2m_driving_quick.yaml"):
        validate_spec(load_spec(ROOT / "search_spaces" / name), name)
    paper = load_spec(ROOT / "search_spaces" / "b2m_driving.yaml")
    assert paper.params["alpha"]["grid"] == pytest.approx(np.arange(1, 11) * 0.02)
    assert paper.arms.l2_grid == [1e-5, 1e-4, 1e-3, 1e-2] and len(paper.seed_list) == 10
    p = paper.params
    assert (p["base_channels"], p["fc_units"], p["latent_dim"], p["dropout"]) == (32, 1024, 64, 0.1)
    assert (p["lr"], p["batch_size"], p["pair_batch_size"]) == (1e-4, 32, 256)
    assert (paper.data["image_height"], paper.data["image_width"]) == (80, 160)
    assert paper.search.metric == "test_loss_auc" and paper.search.mode == "min"
    quick = load_spec(ROOT / "search_spaces" / "b2m_driving_quick.yaml")
    assert len(quick.seed_list) >= 5


def test_misspelt_top_level_key(tmp_path, capsys, write_spec, tiny_spec_dict):
    tiny_spec_dict["serch"] = {"algorithm": "grid"}
    _assert_rejected(tmp_path, capsys, write_spec, tiny_spec_dict, "unknown key 'serch'",
                     "did you mean 'search'")


def test_misspelt_nested_key(tmp_path, capsys, write_spec, tiny_spec_dict):
    tiny_spec_dict["search"] = {"metrik": "x"}
    _assert_rejected(tmp_path, capsys, write_spec, tiny_spec_dict, "search.metrik", "'metric'")


def test_unknown_param_and_data_key(tmp_path, capsys, write_spec, tiny_spec_dict):
    d = dict(tiny_spec_dict, params={**tiny_spec_dict["params"], "hiden": 4})
    _assert_rejected(tmp_path, capsys, write_spec, d, "unknown param 'hiden'", "'hidden'")
    d = dict(tiny_spec_dict, data={**tiny_spec_dict["data"], "snrr": 1})
    _assert_rejected(tmp_path, capsys, write_spec, d, "data.snrr")


def test_wrong_type(tmp_path, capsys, write_spec, tiny_spec_dict):
    d = dict(tiny_spec_dict, params={**tiny_spec_dict["params"], "hidden": "big"})
    _assert_rejected(tmp_path, capsys, write_spec, d, "params.hidden", "int", "'big'")
    d = dict(tiny_spec_dict, seeds="five")
    _assert_rejected(tmp_path, capsys, write_spec, d, "seeds")


@pytest.mark.parametrize("alpha", [0.0, 1.5, -0.1])
def test_alpha_outside_unit_interval(tmp_path, capsys, write_spec, tiny_spec_dict, alpha):
    d = dict(tiny_spec_dict, params={**tiny_spec_dict["params"], "alpha": {"grid": [0.1, alpha]}})
    line = _assert_rejected(tmp_path, capsys, write_spec, d, "alpha")
    assert "(0, 1]" in line or ">=" in line or "<=" in line


def test_seeds_below_one(tmp_path, capsys, write_spec, tiny_spec_dict):
    _assert_rejected(tmp_path, capsys, write_spec, dict(tiny_spec_dict, seeds=0), "seeds", "0")
    _assert_rejected(tmp_path, capsys, write_spec, dict(tiny_spec_dict, seeds=[]), "seeds")


def test_cli_seeds_flag_rejects_zero(tmp_path, capsys, write_spec, tiny_spec_dict):
    path = write_spec(tiny_spec_dict)
    with pytest.raises(SystemExit) as exc:
        main(["sweep", str(path), "--seeds", "0"])
    assert exc.value.code == 2


def test_missing_spec_and_data_file(tmp_path, capsys, write_spec, tiny_spec_dict):
    code, errors = _cli_error(capsys, ["sweep", str(tmp_path / "nope.yaml")])
    assert code == 2 and "not found" in errors[0]
    d = dict(tiny_spec_dict, data={"source": "npz", "path": str(tmp_path / "missing.npz")})
    _assert_rejected(tmp_path, capsys, write_spec, d, "missing.npz", "not found")


def _npz(tmp_path, dim=7, bad=None):
    cfg = MemoryTaskConfig(pre_bins=1, post_bins=2, context_bins=1, min_steps=2, max_steps=4)
    rng = np.random.default_rng(0)
    eps = simulate_episodes(6, cfg, rng)
    brain = synthetic_brain(eps, cfg, rng, dim=dim)
    path = tmp_path / "brain.npz"
    save_memory_npz(path, eps, brain)
    if bad is not None:
        arrays = dict(np.load(path))
        bad(arrays)
        np.savez(path, **arrays)
    return path


def _npz_spec(tiny_spec_dict, path):
    return dict(tiny_spec_dict, data={"source": "npz", "path": str(path), "pre_bins": 1,
                                      "post_bins": 2, "context_bins": 1})


def test_brain_dimension_mismatch(tmp_path, capsys, write_spec, tiny_spec_dict):
    path = _npz(tmp_path, dim=5)
    _assert_rejected(tmp_path, capsys, write_spec, _npz_spec(tiny_spec_dict, path),
                     "dimension 5", "7")


def test_nonfinite_brain_data(tmp_path, capsys, write_spec, tiny_spec_dict):
    def poison(a):
        a["embeddings"][1, 0, 2] = np.nan
    path = _npz(tmp_path, bad=poison)
    _assert_rejected(tmp_path, capsys, write_spec, _npz_spec(tiny_spec_dict, path), "NaN")


def test_step_count_mismatch(tmp_path, capsys, write_spec, tiny_spec_dict):
    def drop(a):
        a["episode_lengths"][0] += 1
    path = _npz(tmp_path, bad=drop)
    _assert_rejected(tmp_path, capsys, write_spec, _npz_spec(tiny_spec_dict, path), "step count")


def test_valid_npz_is_accepted(tmp_path, tiny_spec_dict):
    path = _npz(tmp_path)
    checked = validate_spec(parse_spec(_npz_spec(tiny_spec_dict, path)))
    assert checked["data"].source == "npz" and checked["data"].path == str(path)


def test_too_few_seeds_warns(tiny_spec_dict):
    with pytest.warns(SpecWarning, match="not below significance"):
        validate_spec(parse_spec(dict(tiny_spec_dict, seeds=3)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", SpecWarning)
        validate_spec(parse_spec(dict(tiny_spec_dict, seeds=5)))


def test_search_settings_errors(tiny_spec_dict):
    d = dict(tiny_spec_dict, search={"algorithm": "optuna"})
    with pytest.raises(SpecError, match="grid but search.algorithm"):
        validate_spec(parse_spec(d))
    d["params"] = {**d["params"], "alpha": {"uniform": [0.3, 0.1]}}
    with pytest.raises(SpecError, match="low <= high"):
        validate_spec(parse_spec(d))
    d["params"]["alpha"] = {"uniform": [0.1, 0.3]}
    with pytest.raises(SpecError, match="num_configs"):
        validate_spec(parse_spec(d))


def test_dry_run_starts_nothing(tmp_path, capsys, write_spec, tiny_spec_dict):
    path = write_spec(tiny_spec_dict)
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 configs" in out and "runs:" in out
    assert "estimated wall time: ~" in out and "run-epochs" in out
    assert not (tmp_path / "mlflow.db").exists()


def test_the_cost_estimate_extrapolates_a_timed_epoch(tmp_path, write_spec, tiny_spec_dict):
    """The dry run's estimate: the timed time per run-epoch times every planned run-epoch,
    spread over the configs that train at once (slowed when they share the cores), plus
    the start-up and finishing constants."""
    from raybrain.sweep import estimate as est_mod
    from raybrain.sweep.preflight import preflight

    path = write_spec(tiny_spec_dict)
    pre = preflight(load_spec(path), str(path), check_tracking=False)
    one, two = est_mod.estimate(pre, num_cpus=1), est_mod.estimate(pre, num_cpus=2)
    assert one.total_epochs == pre.plan.total_epochs > 0
    for e, concurrent, slowdown in ((one, 1, 1.0), (two, 2, est_mod.CONCURRENT_SLOWDOWN)):
        assert e.concurrent == concurrent and e.per_run_epoch_s > 0
        assert e.compute_s == pytest.approx(e.total_epochs * e.per_run_epoch_s)
        assert e.wall_s == pytest.approx(
            e.compute_s * slowdown / concurrent + est_mod.RAY_START_S
            + e.waves * est_mod.TRIAL_START_S + est_mod.FINISH_S)
    assert two.waves == 1 and one.waves == 2  # the spec's two configs
    assert "x 1.25 for trials sharing the cores" in two.describe()
    assert "sharing the cores" not in one.describe()


def test_cli_error_has_no_traceback(tmp_path, write_spec, tiny_spec_dict):
    path = write_spec(dict(tiny_spec_dict, seeds=0))
    proc = subprocess.run([sys.executable, "-m", "raybrain.cli", "sweep", str(path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=WAIT_S)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        line for line in proc.stderr.splitlines() if line.startswith("error:")]


def test_bare_yaml_null_generator_is_explained(tmp_path, capsys, write_spec, tiny_spec_dict):
    d = dict(tiny_spec_dict, data={**tiny_spec_dict["data"], "generator": None})
    _assert_rejected(tmp_path, capsys, write_spec, d, "data.generator", "in quotes")


def test_ray_client_with_paths_only_this_machine_knows_is_refused_first(
        tmp_path, capsys, write_spec, tiny_spec_dict, monkeypatch):
    """Through ray://, the driver runs on the cluster: a relative sqlite store or storage
    path would land somewhere else there; refused before connecting or writing anything."""
    monkeypatch.chdir(tmp_path)
    path = write_spec(dict(tiny_spec_dict, seeds=5))
    code, errors = _cli_error(capsys, ["sweep", str(path), "--address", "ray://head:10001"])
    assert code == 2 and "MLflow server" in errors[0] and "sqlite:///mlflow.db" in errors[0]
    code, errors = _cli_error(capsys, ["sweep", str(path), "--address", "ray://head:10001",
                                       "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert code == 2 and "storage.path './raybrain_results'" in errors[0]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "m.db").exists()
