"""Packaging: FAISS comes from exactly one extra. `cpu` installs faiss-cpu, `gpu` installs a
faiss-gpu build and never faiss-cpu (both provide the `faiss` module; one would overwrite the
other). Checked on pip's own resolution against the package index (`pip install --dry-run
--report`), which downloads metadata only: no CUDA wheel is installed.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10: the backport, if installed
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
# resolve for the GPU nodes' platform (Linux x86-64, CPython 3.11) whatever machine runs this;
# pip matches manylinux tags exactly, so every tag the wheels involved use is listed
LINUX_X86_64 = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                "manylinux2014_x86_64", "manylinux_2_12_x86_64", "manylinux2010_x86_64",
                "manylinux1_x86_64"]


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _faiss_builds(requirements: list[str]) -> set[str]:
    return {n for n in (Requirement(r).name.lower() for r in requirements) if n.startswith("faiss")}


def _dry_run(args: list[str], report: Path, timeout: int) -> list[str]:
    """Names of the distributions `pip install --dry-run ARGS` would install (fresh environment)."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
           "--report", str(report), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr[-3000:]}"
    return sorted(item["metadata"]["name"].lower().replace("_", "-")
                  for item in json.loads(report.read_text())["install"])


def test_faiss_is_no_base_dependency_and_each_extra_names_one_build():
    project = _project()
    extras = project["optional-dependencies"]
    assert _faiss_builds(project["dependencies"]) == set()
    assert _faiss_builds(extras["cpu"]) == {"faiss-cpu"}
    (gpu_build,) = _faiss_builds(extras["gpu"])
    assert gpu_build.startswith("faiss-gpu")
    for name, reqs in extras.items():  # no other extra brings a second build along
        if name not in ("cpu", "gpu"):
            assert _faiss_builds(reqs) == set(), name


@pytest.mark.parametrize("extra, wanted, unwanted", [("gpu", "faiss-gpu", "faiss-cpu"),
                                                     ("cpu", "faiss-cpu", "faiss-gpu")])
def test_extra_resolves_to_its_faiss_build_only(extra, wanted, unwanted, tmp_path):
    """The extra's requirement lines, resolved with their dependencies for a Linux GPU node."""
    lines = _project()["optional-dependencies"][extra]
    platforms = [arg for tag in LINUX_X86_64 for arg in ("--platform", tag)]
    names = _dry_run(["--only-binary=:all:", *platforms, "--python-version", "3.11",
                      "--implementation", "cp", *lines], tmp_path / "report.json", timeout=120)
    assert any(n.startswith(wanted) for n in names), names
    assert not any(n.startswith(unwanted) for n in names), names
    if extra == "gpu":  # its CUDA runtime comes from PyPI wheels, not a system CUDA
        assert any(n.startswith("nvidia-cuda-runtime") for n in names), names


@pytest.mark.slow  # resolves the whole dependency tree (30-80 s each, metadata only)
@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                    reason="deepspeed is an sdist: the whole tree resolves on the target platform only")
@pytest.mark.parametrize("extras, wanted, unwanted", [("gpu", "faiss-gpu", "faiss-cpu"),
                                                      ("cpu,dev", "faiss-cpu", "faiss-gpu")])
def test_documented_installs_resolve_to_one_faiss_build(extras, wanted, unwanted, tmp_path):
    """`pip install torch==2.13.0 .[gpu]` (cluster image) and `.[cpu,dev]` (.ci/setup), whole tree."""
    project = tmp_path / "angle-ray"  # a copy: pip would build metadata inside the checkout
    (project / "angle_ray").mkdir(parents=True)
    (project / "angle_ray" / "__init__.py").write_text("")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    names = _dry_run(["torch==2.13.0", f"{project}[{extras}]"], tmp_path / "report.json",
                     timeout=600)
    assert "torch" in names and "angle-ray" in names
    assert sum(n.startswith(wanted) for n in names) == 1, names
    assert not any(n.startswith(unwanted) for n in names), names
