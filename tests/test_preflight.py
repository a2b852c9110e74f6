"""One preflight for validate, --dry-run and sweep: what each refuses, in one line, exit 2,
before Ray starts and with nothing written."""

from __future__ import annotations

import json

import pytest
import yaml

from raybrain.cli import main
from raybrain.errors import SpecError
from raybrain.sweep import storage as st
from raybrain.sweep.preflight import Overrides, preflight
from raybrain.sweep.spec import load_spec

pytestmark = pytest.mark.unit

COMMANDS = [["validate"], ["sweep", "--dry-run"], ["sweep"]]


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    return code, lines


def _spec_file(tmp_path, tiny, **over):
    d = {**tiny, "storage": {"path": str(tmp_path / "results")}, **over}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_credentials_in_the_tracking_uri_are_refused_by_every_command(tmp_path, tiny_spec_dict,
                                                                    capsys, command):
    path = _spec_file(tmp_path, tiny_spec_dict)
    code, lines = _run(capsys, [*command[:1], str(path), *command[1:],
                                "--tracking-uri", "http://alice:s3cret@127.0.0.1:5000"])
    assert code == 2 and len(lines) == 1 and "credentials" in lines[0]
    assert "s3cret" not in lines[0]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreachable_mlflow_server_is_refused_by_every_command(tmp_path, tiny_spec_dict,
                                                                capsys, command):
    from raybrain.ui import free_port

    path = _spec_file(tmp_path, tiny_spec_dict)
    code, lines = _run(capsys, [*command[:1], str(path), *command[1:],
                                "--tracking-uri", f"http://127.0.0.1:{free_port()}"])
    assert code == 2 and len(lines) == 1 and "unreachable" in lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_invalid_spec_stays_invalid_whatever_the_overrides(tmp_path, tiny_spec_dict, capsys,
                                                            command):
    path = _spec_file(tmp_path, tiny_spec_dict, seeds=-3)
    code, lines = _run(capsys, [*command[:1], str(path), *command[1:], "--seeds", "2"])
    assert code == 2 and len(lines) == 1
    assert "seeds must be >= 1, got -3" in lines[0] and "overrides" in lines[0]
    assert not (tmp_path / "results").exists()


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text("name: twice\ntask: b2m-memory\nseeds: 10\nparams:\n  hidden: 8\nseeds: 2\n")
    code, lines = _run(capsys, ["validate", str(path)])
    assert code == 2 and lines == [f"error: {path}: key 'seeds' is given twice (lines 3 and 6); "
                                   f"keep one"]


@pytest.mark.parametrize("over, message", [
    ({"seeds": "five"}, "seeds must be an integer or a list, got 'five'"),
    ({"search": {"mode": "up"}}, "search.mode must be one of 'max' or 'min', got 'up'"),
    ({"resources": {"use_gpu": "maybe"}}, "resources.use_gpu must be true or false or one of"),
    ({"storage": {"checkpoint_every": 0}}, "storage.checkpoint_every must be >= 1 or 'auto', got 0"),
    ({"data": {"n_train_episodes": "many"}}, "data.n_train_episodes must be an integer, got 'many'"),
])
def test_messages_speak_of_keys_not_validators(tmp_path, tiny_spec_dict, capsys, over, message):
    path = _spec_file(tmp_path, tiny_spec_dict, **over)
    code, lines = _run(capsys, ["validate", str(path)])
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    for internal in ("Input should be", ".int:", "literal_error", "list[int]"):
        assert internal not in lines[0]


def test_max_concurrent_above_the_machine_is_warned(tmp_path, tiny_spec_dict, capsys):
    path = _spec_file(tmp_path, tiny_spec_dict, search={"max_concurrent": 64})
    code = main(["validate", str(path), "--num-cpus", "2"])
    err = capsys.readouterr().err
    assert code == 0
    assert "max_concurrent 64 is above what this machine can run at once: 2 config(s)" in err


def _started(root, name, overrides, spec_hash, spec_file=None, spec_name="tiny"):
    st.write_stage(root, name, {"spec_hash": spec_hash, "stage": "search",
                                "overrides": overrides})
    st.record_sweep(root, name, {"spec_file": spec_file, "spec_name": spec_name,
                                 "overrides": overrides})


def test_resume_reapplies_the_recorded_overrides_and_refuses_conflicting_ones(
        tmp_path, tiny_spec_dict):
    path = _spec_file(tmp_path, tiny_spec_dict, seeds=5)
    spec = load_spec(path)
    root = str(tmp_path / "results")
    started = preflight(spec, str(path), overrides=Overrides(seeds=2, max_configs=1))
    assert started.spec.seed_list == [0, 1] and started.plan.num_configs == 1
    _started(root, "tiny", {"seeds": 2, "max_configs": 1}, started.spec.spec_hash())
    # a plain --resume gets them back (and the spec hash matches)
    pre = preflight(spec, str(path), resume=True)
    assert pre.exists and pre.overrides == {"seeds": 2, "max_configs": 1}
    assert pre.spec.seed_list == [0, 1] and pre.plan.num_configs == 1
    assert pre.resume_command == f"raybrain sweep {path} --resume"
    # the same value again is fine; another one is one line naming both
    preflight(spec, str(path), resume=True, overrides=Overrides(seeds=2))
    with pytest.raises(SpecError, match=r"--seeds 3 conflicts with --seeds 2, which sweep "
                                        r"'tiny' was started with"):
        preflight(spec, str(path), resume=True, overrides=Overrides(seeds=3))
    with pytest.raises(SpecError, match="--max-configs 2 conflicts with --max-configs 1"):
        preflight(spec, str(path), overrides=Overrides(max_configs=2))


def test_a_sweep_started_without_an_override_refuses_one_on_resume(tmp_path, tiny_spec_dict):
    path = _spec_file(tmp_path, tiny_spec_dict)
    spec = load_spec(path)
    _started(str(tmp_path / "results"), "tiny", {}, spec.spec_hash())
    with pytest.raises(SpecError, match="was started without --seeds"):
        preflight(spec, str(path), resume=True, overrides=Overrides(seeds=4))


def test_resume_without_name_finds_the_sweep_started_under_another_name(tmp_path,
                                                                       tiny_spec_dict):
    path = _spec_file(tmp_path, tiny_spec_dict)
    spec = load_spec(path)
    root = str(tmp_path / "results")
    named = preflight(spec, str(path), overrides=Overrides(name="trial-a", seeds=3))
    _started(root, "trial-a", {"seeds": 3}, named.spec.spec_hash(), str(path.resolve()))
    pre = preflight(spec, str(path), resume=True)
    assert pre.spec.name == "trial-a" and pre.spec.seed_list == [0, 1, 2]
    assert pre.resume_command == f"raybrain sweep {path} --resume --name trial-a"
    assert any("started from this spec with --name trial-a" in n for n in pre.notes)
    # two candidates: say which
    _started(root, "trial-b", {}, spec.spec_hash(), str(path.resolve()))
    with pytest.raises(SpecError, match="trial-a, trial-b; say which with --name"):
        preflight(spec, str(path), resume=True)


def test_a_changed_spec_is_refused_on_resume(tmp_path, tiny_spec_dict):
    path = _spec_file(tmp_path, tiny_spec_dict)
    spec = load_spec(path)
    _started(str(tmp_path / "results"), "tiny", {}, "0123456789abcdef")
    with pytest.raises(SpecError, match="resuming with a changed spec is refused"):
        preflight(spec, str(path))
    stored = json.loads((tmp_path / "results" / "tiny" / st.SPEC_FILE).read_text())
    assert stored["spec_hash"] == "0123456789abcdef"  # nothing rewritten


def test_a_storage_that_cannot_be_read_is_one_line(tmp_path, tiny_spec_dict, capsys):
    path = _spec_file(tmp_path, tiny_spec_dict)
    code, lines = _run(capsys, ["validate", str(path), "--storage-path",
                                "s3://raybrain-no-such-bucket-for-tests/raybrain"])
    assert code == 2 and len(lines) == 1
    assert "cannot be read from here" in lines[0] and "Traceback" not in lines[0]
