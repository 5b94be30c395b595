"""The job schema, `key.sub=value` overrides and the dotted-key walk they share with sweeps."""

import pytest

from angle_ray.config import (
    ConfigError,
    config_from_dict,
    get_key,
    load_config,
    read_job_file,
    set_key,
)


def test_unknown_key_is_an_error_naming_the_key(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'"):
        load_config(f)


def test_overrides_parse_yaml_scalars_and_reach_list_items(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("data:\n  - path: a.jsonl\n    format: A\n")
    cfg = load_config(f, ["train.lr=3e-5", "model.pooling=cls", "data.0.path=b.jsonl",
                          "loss.matryoshka_dims=[64,32]", "train.num_workers=[1,4]"])
    assert cfg.train.lr == 3e-5
    assert cfg.model.pooling == "cls"
    assert cfg.data[0].path == "b.jsonl"
    assert cfg.loss.matryoshka_dims == [64, 32]
    assert cfg.train.num_workers == (1, 4)


@pytest.mark.parametrize("train", [
    {"num_workers": [2, 8], "zero_stage": 2},
    {"num_workers": [1, 4], "zero_stage": 3, "use_gpu": True},
])
def test_elastic_workers_with_zero_partitioned_state_are_refused(train):
    with pytest.raises(ConfigError, match=r"elastic, but ZeRO-\d checkpoints resume only"):
        config_from_dict({"train": train})


@pytest.mark.parametrize("train", [
    {"num_workers": [2, 8], "zero_stage": 0},
    {"num_workers": [2, 8], "zero_stage": 3, "strategy": "ddp"},  # ZeRO is DeepSpeed's
    {"num_workers": [4, 4], "zero_stage": 3},  # a fixed size written as a range
    {"num_workers": 4, "zero_stage": 3},
])
def test_elastic_or_zero_partitioned_alone_are_accepted(train):
    assert config_from_dict({"train": train}).train.zero_stage == train["zero_stage"]


def test_bad_values_name_the_field_and_the_value():
    with pytest.raises(ConfigError, match=r"train.batch_size.*got 0"):
        config_from_dict({"train": {"batch_size": 0}})
    with pytest.raises(ConfigError, match=r"label_range"):
        config_from_dict({"data": [{"path": "x", "label_range": [5, 0]}]})
    with pytest.raises(ConfigError, match=r"text_prompt"):
        config_from_dict({"data": [{"path": "x", "text_prompt": "no slot"}]})


def test_override_without_equals_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "job.yaml"
    f.write_text("data:\n  - path: a.jsonl\n")
    with pytest.raises(ConfigError, match="not an index"):
        load_config(f, ["data.3.path=x"])


def test_llm_needs_last_or_mean_pooling():
    with pytest.raises(ConfigError, match="last"):
        config_from_dict({"model": {"is_llm": True, "pooling": "cls"}})


def test_set_key_walks_sections_and_list_items_creating_missing_sections():
    raw = {"model": {"pooling": "mean"}, "data": [{"path": "a.jsonl"}], "eval": None}
    set_key(raw, "data.0.path", "b.jsonl")
    set_key(raw, "eval.dev.path", "dev.jsonl")  # a null section becomes a mapping
    set_key(raw, "loss.angle_w", 0.5)  # a missing one too
    set_key(raw, "loss.matryoshka_dims", [64, 32])
    set_key(raw, "loss.matryoshka_dims.1", 16)
    assert raw == {"model": {"pooling": "mean"}, "data": [{"path": "b.jsonl"}],
                   "eval": {"dev": {"path": "dev.jsonl"}},
                   "loss": {"angle_w": 0.5, "matryoshka_dims": [64, 16]}}
    assert get_key(raw, "data.0.path") == "b.jsonl"
    assert get_key(raw, "loss.matryoshka_dims.0") == 64
    assert get_key(raw, "loss.nope", "dflt") == "dflt"
    assert get_key(raw, "data.1.path") is None  # past the end of a list
    assert get_key(raw, "model.pooling.x") is None  # below a value


@pytest.mark.parametrize("key, message", [
    ("model.pooling.kind", r"key 'model.pooling.kind': model.pooling is a value, not a section"),
    ("model.pooling.kind.x", r"model.pooling is a value, not a section"),
    ("data.1.path", r"key 'data.1.path': '1' is not an index of a list of 1"),
    ("data.first.path", r"'first' is not an index of a list of 1"),
])
def test_set_key_into_a_value_or_past_a_list_is_an_error_naming_the_key(key, message):
    raw = {"model": {"pooling": "mean"}, "data": [{"path": "a.jsonl"}]}
    with pytest.raises(ConfigError, match=message):
        set_key(raw, key, 1)
    assert raw == {"model": {"pooling": "mean"}, "data": [{"path": "a.jsonl"}]}


def test_read_job_file_names_the_file_when_it_is_not_a_job(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=rf"{f}: top level must be a mapping, got list"):
        read_job_file(f)
    f.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{f}: not valid YAML"):
        read_job_file(f)
    f.write_text("")
    assert read_job_file(f) == {}
