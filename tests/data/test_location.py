"""`{data_dir}` paths: the placeholder, and a hint when a data file is missing."""

import pytest

from angle_ray.data.location import expand_path


def test_data_dir_placeholder_and_missing_path_hint(monkeypatch, tmp_path):
    (tmp_path / "stsb").mkdir()
    (tmp_path / "stsb" / "train.jsonl").write_text("{}\n")
    monkeypatch.setenv("ANGLE_RAY_DATA_DIR", str(tmp_path))
    assert expand_path("{data_dir}/stsb/train.jsonl") == str(tmp_path / "stsb" / "train.jsonl")
    with pytest.raises(FileNotFoundError, match="ANGLE_RAY_DATA_DIR"):
        expand_path("{data_dir}/nli/x.jsonl")
    assert expand_path("s3://bucket/x.parquet") == "s3://bucket/x.parquet"
