"""FAISS comes from one extra (cpu or gpu): a clear error without it, a warning with both."""

import logging
import sys

import pytest

from angle_ray.eval import faiss_import
from angle_ray.eval.faiss_import import import_faiss, installed_faiss_builds


def test_the_installed_build_is_found_and_imports():
    assert len(installed_faiss_builds()) == 1  # .[cpu,dev] here and in CI, .[gpu] on GPU nodes
    faiss = import_faiss()
    assert faiss.IndexFlatIP(4).d == 4


def test_no_faiss_build_gives_an_import_error_naming_both_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # what `import faiss` meets with no build
    with pytest.raises(ImportError) as err:
        import_faiss()
    assert "angle-ray[cpu]" in str(err.value) and "angle-ray[gpu]" in str(err.value)


def test_both_builds_installed_are_reported(tmp_path, monkeypatch, caplog):
    # a second distribution's metadata beside faiss-cpu's, as `pip install faiss-gpu` leaves it
    dist_info = tmp_path / "faiss_gpu-1.15.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: faiss-gpu\nVersion: 1.15.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    if installed_faiss_builds() != ["faiss-cpu", "faiss-gpu"]:
        pytest.skip("needs faiss-cpu as the installed build (the CPU environment)")
    faiss_import._warn_if_both_builds.cache_clear()
    with caplog.at_level(logging.WARNING, logger=faiss_import.__name__):
        import_faiss()
    faiss_import._warn_if_both_builds.cache_clear()
    assert "faiss-cpu and faiss-gpu" in caplog.text
