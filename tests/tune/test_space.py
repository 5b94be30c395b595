"""Space files: every one in tune_spaces/ loads against its base job; bad spaces fail early,
naming the space file and the key; values reach the trial's job as searched."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from angle_ray.cli import main
from angle_ray.tune.layout import STATE_FILE
from angle_ray.tune.space import SpaceError, load_space, parse_space
from angle_ray.tune.sweep import _check_same_sweep, make_scheduler, make_searcher, plan_sweep

REPO = Path(__file__).resolve().parents[2]
SPACES = sorted((REPO / "tune_spaces").glob("*.y*ml"))


def test_the_three_space_files_are_found():
    assert {p.name for p in SPACES} >= {"stsb_loss_weights.yaml", "nli_temperatures.yaml",
                                         "scifact_mining.yaml"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_space_file_loads_against_its_base_job(path):
    spec = load_space(path)
    base = REPO / spec.config
    if path.name == "scifact_mining.yaml" and not base.exists():
        pytest.skip(f"{spec.config} (the ANCE job) is not in the repository yet")
    sweep = plan_sweep(path)
    assert sweep.spec.params
    dumped = sweep.base.model_dump(mode="json")
    for key in sweep.base_values():  # every searched key exists in the job's schema
        *parents, leaf = key.split(".")
        section = dumped
        for part in parents:
            section = section[part]
        assert leaf in section, key
    for p in sweep.spec.params:  # a trial's job at the space's edges is a valid job
        for probe in p.probes():
            cfg = sweep.trial_job({p.key: probe}, name="probe")
            assert cfg.train.name == "probe"


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_space_file_header_shows_the_sweep_command(path):
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(f"angle-ray sweep --space tune_spaces/{path.name}" in line for line in header)


def test_stsb_space_searches_weights_and_taus_of_the_quickstart_and_runs_it_first():
    spec = load_space(REPO / "tune_spaces" / "stsb_loss_weights.yaml")
    keys = {p.key for p in spec.params}
    assert {"loss.angle_w", "loss.ibn_w", "loss.cosine_w"} <= keys
    assert {"loss.cosine_tau", "loss.ibn_tau", "loss.angle_tau"} <= keys
    assert spec.config == "jobs/configs/quickstart.yaml" and spec.include_base
    assert spec.scheduler.type == "asha"


def test_scifact_space_searches_the_mining_section():
    spec = load_space(REPO / "tune_spaces" / "scifact_mining.yaml")
    by_key = {p.key: p for p in spec.params}
    assert {"mining.k", "mining.fn_rel_margin", "mining.refresh_every", "loss.cln_w",
            "mining.window"} <= set(by_key)
    window = by_key["mining.window"]
    assert window.dist == "choice" and window.encoded  # lists are searched as their JSON text
    assert window.decode(window.encode([3, 100])) == [3, 100]


def _space(tmp_path, text: str, job: Path | None = None) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text((f"config: {job}\n" if job else "") + text)
    return path


def test_distributions_become_tune_domains_with_their_bounds(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    spec = load_space(_space(tmp_path, """
params:
  loss.angle_w: {loguniform: [0.001, 1.0]}
  loss.ibn_w: {uniform: [0.0, 2.0]}
  mining.k: {randint: [1, 8]}
  model.pooling: {choice: [mean, cls]}
  train.lr: {grid: [1.0e-5, 3.0e-5]}
"""))
    space = spec.param_space()
    lw = space["loss.angle_w"]
    assert isinstance(lw, Float) and (lw.lower, lw.upper) == (0.001, 1.0)
    assert type(lw.get_sampler()).__name__ == "_LogUniform"
    assert isinstance(space["loss.ibn_w"], Float) and space["loss.ibn_w"].upper == 2.0
    k = space["mining.k"]
    assert isinstance(k, Integer) and (k.lower, k.upper) == (1, 9)  # 8 included
    assert isinstance(space["model.pooling"], Categorical)
    assert space["model.pooling"].categories == ["mean", "cls"]
    assert space["train.lr"] == {"grid_search": [1e-5, 3e-5]}


def test_searched_values_reach_the_trial_job_with_its_own_run_folder(tmp_path, tiny_job_file):
    sweep = plan_sweep(_space(tmp_path, """
params:
  loss.angle_w: {uniform: [0.01, 1.0]}
  model.pooling: {choice: [mean, cls]}
  data.0.weight: {choice: [1.0, 2.0]}
""", tiny_job_file), output=tmp_path / "sw")
    cfg = sweep.trial_job({"loss.angle_w": 0.5, "model.pooling": "cls", "data.0.weight": 2.0}, "t1")
    assert (cfg.loss.angle_w, cfg.model.pooling, cfg.data[0].weight) == (0.5, "cls", 2.0)
    assert cfg.train.name == "t1" and cfg.train.storage_path == str(tmp_path / "sw" / "trials")
    assert cfg.loss.cosine_w == 1.0  # untouched keys keep the base job's values
    assert sweep.base_values() == {"loss.angle_w": 0.02, "model.pooling": "mean", "data.0.weight": 1.0}


def test_overrides_of_space_and_command_line_apply_in_that_order(tmp_path, tiny_job_file):
    sweep = plan_sweep(_space(tmp_path, """
overrides: {train.max_steps: 5, train.lr: 1.0e-4}
params: {loss.angle_w: {uniform: [0.01, 1.0]}}
""", tiny_job_file), overrides=["train.max_steps=3"], output=tmp_path / "sw")
    assert sweep.base.train.max_steps == 3 and sweep.base.train.lr == 1e-4


def test_asha_defaults_come_from_the_job_evaluation_cadence(tmp_path, tiny_job_file):
    sweep = plan_sweep(_space(tmp_path, "params: {loss.angle_w: {uniform: [0.01, 1.0]}}\n",
                              tiny_job_file), output=tmp_path / "sw")
    asha = make_scheduler(sweep)
    assert asha._time_attr == "step" and asha._max_t == 8  # train.max_steps
    assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [8, 4, 2]  # eval_every 2


def test_pbt_settings_reach_tunes_scheduler(tmp_path, tiny_job_file):
    sweep = plan_sweep(_space(tmp_path, """
scheduler: {type: pbt, quantile_fraction: 0.5, resample_probability: 0.0, synch: true}
params: {train.lr: {choice: [1.0e-5, 1.0e-4]}}
""", tiny_job_file), output=tmp_path / "sw")
    pbt = make_scheduler(sweep)
    assert pbt._synch is True and pbt._quantile_fraction == 0.5
    assert pbt._perturbation_interval == 4  # default: twice the job's eval_every (2)
    assert pbt._hyperparam_mutations == {"train.lr": [1.0e-5, 1.0e-4]}
    with pytest.raises(SpaceError, match=r"scheduler\.synch: expected true or false, got 'yes'"):
        parse_space({"scheduler": {"type": "pbt", "synch": "yes"},
                     "params": {"train.lr": {"choice": [1.0e-5]}}}, "s.yaml")


def test_optuna_search_seeds_tpe_and_queues_the_base_values_first(tmp_path, tiny_job_file):
    sweep = plan_sweep(_space(tmp_path, """
search: optuna
include_base: true
params:
  loss.angle_w: {loguniform: [0.01, 1.0]}
  model.pooling: {choice: [mean, cls]}
""", tiny_job_file), output=tmp_path / "sw")
    searcher = make_searcher(sweep)
    assert type(searcher).__name__ == "OptunaSearch"
    assert searcher._points_to_evaluate == [{"loss.angle_w": 0.02, "model.pooling": "mean"}]


BAD = [
    ("params:\n  loss.angle_ww: {uniform: [0.0, 1.0]}\n",
     r"params\.loss\.angle_ww: .*unknown key 'loss\.angle_ww'"),
    ("params:\n  optimiser.beta: {uniform: [0.0, 1.0]}\n", r"params\.optimiser\.beta: .*unknown key"),
    ("params:\n  loss.ibn_w: {uniform: [1.0, 1.0]}\n", r"params\.loss\.ibn_w: uniform needs low < high"),
    ("params:\n  loss.ibn_w: {uniform: [2.0, 1.0]}\n", r"params\.loss\.ibn_w: uniform needs low < high"),
    ("params:\n  train.lr: {loguniform: [0.0, 0.1]}\n", r"params\.train\.lr: loguniform needs low > 0"),
    ("params:\n  loss.ibn_w: {normal: [0.0, 1.0]}\n", r"params\.loss\.ibn_w: unknown distribution 'normal'"),
    ("params:\n  model.pooling: {choice: []}\n", r"params\.model\.pooling: choice needs at least one"),
    ("params:\n  loss.ibn_w: {uniform: [0.0, high]}\n", r"params\.loss\.ibn_w: expected a number"),
    ("params:\n  loss.ibn_w: {uniform: [-1.0, 1.0]}\n",
     r"params\.loss\.ibn_w: value -1\.0 is not valid for the job: loss\.ibn_w: .*greater than or equal"),
    ("params:\n  model.pooling: {choice: [mean, avg]}\n", r"params\.model\.pooling: value 'avg'"),
    ("params:\n  loss.ibn_w: {uniform: [0.0, 1.0], choice: [1]}\n", r"params\.loss\.ibn_w: expected one"),
    ("params: {}\n", r"params: needs at least one searched key"),
    ("num_sample: 3\nparams: {loss.ibn_w: {uniform: [0.0, 1.0]}}\n", r"num_sample: unknown key"),
    ("scheduler: {type: hyperband}\nparams: {loss.ibn_w: {uniform: [0.0, 1.0]}}\n",
     r"scheduler\.type: unknown scheduler 'hyperband'"),
    ("scheduler: {type: asha, grace: 2}\nparams: {loss.ibn_w: {uniform: [0.0, 1.0]}}\n",
     r"scheduler\.grace: unknown key"),
    ("search: optuna\nparams: {train.lr: {grid: [1.0e-5, 2.0e-5]}}\n",
     r"params\.train\.lr: grid is not supported with search: optuna"),
    ("include_base: true\nparams: {train.lr: {grid: [1.0e-5, 2.0e-5]}}\n",
     r"params\.train\.lr: include_base cannot be combined with grid"),
    ("overrides: {train.lrr: 0.1}\nparams: {loss.ibn_w: {uniform: [0.0, 1.0]}}\n",
     r"overrides\.train\.lrr: unknown key 'train\.lrr'"),
    ("overrides: {loss.ibn_w: 1.0}\nparams: {loss.ibn_w: {uniform: [0.0, 1.0]}}\n",
     r"overrides\.loss\.ibn_w: is also a searched key"),
    ("params: {mining.k: {choice: [1, 2]}}\n", r"params\.mining\.k: .*mining\.beir"),  # no mining section
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(":")[0].replace("\\", "") + f"-{i}"
                                                  for i, (_, m) in enumerate(BAD)])
def test_bad_space_is_an_error_naming_the_file_and_the_key(tmp_path, tiny_job_file, text, message):
    path = _space(tmp_path, text, tiny_job_file)
    with pytest.raises(SpaceError) as err:
        plan_sweep(path, output=tmp_path / "sw")
    assert str(err.value).startswith(f"{path}: ")
    assert re.search(message, str(err.value)), str(err.value)


def test_searched_key_also_overridden_on_the_command_line_is_an_error(tmp_path, tiny_job_file):
    path = _space(tmp_path, "params: {loss.ibn_w: {uniform: [0.0, 1.0]}}\n", tiny_job_file)
    with pytest.raises(SpaceError, match=r"params\.loss\.ibn_w: searched by the space"):
        plan_sweep(path, overrides=["loss.ibn_w=0.5"], output=tmp_path / "sw")


def test_dev_metric_without_a_dev_set_is_an_error_before_anything_runs(tmp_path, tiny_job_file):
    job = yaml.safe_load(tiny_job_file.read_text())
    del job["eval"]
    no_dev = tmp_path / "nodev.yaml"
    no_dev.write_text(yaml.safe_dump(job))
    path = _space(tmp_path, "params: {loss.ibn_w: {uniform: [0.0, 1.0]}}\n", no_dev)
    with pytest.raises(SpaceError, match=r"space\.yaml: metric: dev_metric is reported only when"):
        plan_sweep(path, output=tmp_path / "sw")


def test_space_without_a_base_job_asks_for_one(tmp_path):
    path = _space(tmp_path, "params: {loss.ibn_w: {uniform: [0.0, 1.0]}}\n")
    with pytest.raises(SpaceError, match=r"space\.yaml: config: no base job"):
        plan_sweep(path)


def test_space_names_its_config_from_the_project_root_whatever_the_current_folder(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = plan_sweep(REPO / "tune_spaces" / "stsb_loss_weights.yaml")
    assert sweep.base.train.name == "quickstart"


def test_resume_flag_without_a_sweep_in_the_folder_is_an_error(tmp_path, tiny_job_file, capsys):
    path = _space(tmp_path, "params: {loss.ibn_w: {uniform: [0.0, 1.0]}}\n", tiny_job_file)
    rc = main(["sweep", "--space", str(path), "--output", str(tmp_path / "none"), "--resume"])
    assert rc == 2
    assert "holds no sweep to resume" in capsys.readouterr().err


def test_cli_reports_a_bad_space_with_exit_code_2_before_starting_ray(tmp_path, tiny_job_file,
                                                                      capsys):
    import ray

    path = _space(tmp_path, "params: {loss.angle_ww: {uniform: [0.0, 1.0]}}\n", tiny_job_file)
    was_up = ray.is_initialized()
    rc = main(["sweep", "--space", str(path), "--output", str(tmp_path / "sw")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{path}: params.loss.angle_ww" in err
    assert ray.is_initialized() == was_up and not (tmp_path / "sw").exists()


def test_bad_top_level_values_are_errors(tmp_path):
    for text, message in [("mode: maximise\n", r"mode: 'maximise' is not one of max, min"),
                          ("search: bayes\n", r"search: 'bayes' is not one of random, optuna"),
                          ("num_samples: 0\n", r"num_samples: must be >= 1"),
                          ("scheduler: {reduction_factor: 1}\n", r"scheduler\.reduction_factor"),
                          ("report: neg/random_fill\n", r"report: expected a list of metric names"),
                          ("- a\n", r"top level must be a mapping")]:
        raw = yaml.safe_load(text)
        if isinstance(raw, dict):
            raw["params"] = {"loss.ibn_w": {"uniform": [0.0, 1.0]}}
        with pytest.raises(SpaceError, match=message):
            parse_space(raw, "s.yaml")


def test_exponents_without_a_dot_are_numbers_not_strings(tmp_path):
    # PyYAML reads 1e-5 as the string '1e-5'; in a space it means the number
    spec = load_space(_space(tmp_path, "params:\n  train.lr: {grid: [1e-5, 3.0e-5]}\n"
                                       "  train.weight_decay: {loguniform: [1e-4, 1e-1]}\n"))
    assert spec.params[0].values == (1e-5, 3e-5) and spec.params[0].numeric
    assert spec.params[1].values == (1e-4, 1e-1)


def test_loguniform_samples_stay_in_bounds_and_spread_over_decades(tmp_path):
    spec = load_space(_space(tmp_path, "params: {train.lr: {loguniform: [1.0e-6, 1.0e-2]}}\n"))
    domain = spec.param_space()["train.lr"]
    xs = domain.sample(size=400, random_state=0)
    assert all(1e-6 <= x <= 1e-2 for x in xs)
    decades = {math.floor(math.log10(x)) for x in xs}
    assert decades == {-6, -5, -4, -3}


def test_a_sweep_folder_started_from_another_space_is_not_resumed_with_this_one(tmp_path,
                                                                                  tiny_job_file):
    first = plan_sweep(_space(tmp_path, "params: {loss.ibn_w: {uniform: [0.0, 1.0]}}\n",
                              tiny_job_file), output=tmp_path / "sw")
    first.folder.mkdir()
    (first.folder / STATE_FILE).write_text(json.dumps(first.state()))
    _check_same_sweep(first)  # the same space and job: fine
    other = tmp_path / "other.yaml"
    other.write_text(f"config: {tiny_job_file}\nparams: {{loss.ibn_w: {{uniform: [0.0, 2.0]}}}}\n")
    again = plan_sweep(other, output=tmp_path / "sw")
    with pytest.raises(SpaceError, match=r"different space \(differs in: .*params"):
        _check_same_sweep(again)
    other_job = plan_sweep(first.spec.source, overrides=["train.max_steps=4"], output=tmp_path / "sw")
    with pytest.raises(SpaceError, match=r"different job \(differs in: train\)"):
        _check_same_sweep(other_job)
