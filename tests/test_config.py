import pytest

from angle_ray.config import ConfigError, config_from_dict, load_config
from angle_ray.data.location import expand_path


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


def test_data_dir_placeholder_and_missing_path_hint(monkeypatch, tmp_path):
    (tmp_path / "stsb").mkdir()
    (tmp_path / "stsb" / "train.jsonl").write_text("{}\n")
    monkeypatch.setenv("ANGLE_RAY_DATA_DIR", str(tmp_path))
    assert expand_path("{data_dir}/stsb/train.jsonl") == str(tmp_path / "stsb" / "train.jsonl")
    with pytest.raises(FileNotFoundError, match="ANGLE_RAY_DATA_DIR"):
        expand_path("{data_dir}/nli/x.jsonl")
    assert expand_path("s3://bucket/x.parquet") == "s3://bucket/x.parquet"
