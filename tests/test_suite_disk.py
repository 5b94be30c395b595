"""The suite writes ~9 GB of checkpoints and Ray Train storage into tmp_path folders over a run;
pytest keeps every test's folder of the last three runs by default, which filled CI's disk.
The project's pytest settings delete a passing test's folder when it ends."""

from __future__ import annotations


def test_passing_tests_tmp_path_is_deleted_when_it_ends(request, tmp_path):
    # the setting as pytest read it from pyproject.toml (a typo in the key would read "all")
    assert request.config.getini("tmp_path_retention_policy") == "failed"
    assert tmp_path.is_dir()  # removed at teardown because the test passed
