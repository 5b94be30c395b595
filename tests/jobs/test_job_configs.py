"""The job entrypoints and job configs under jobs/: every file loads, every documented command works.

A job config that no longer passes the schema, a data file that moved, a `key=value` override
in a header comment that names a key the schema dropped, or an entrypoint that grew logic of
its own all fail here. The cluster side (cluster/) is tested in tests/cluster/.
"""

from __future__ import annotations

import ast
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import yaml

import angle_ray.cli
from angle_ray.config import JobConfig, load_config
from angle_ray.data.location import expand_path

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"
CONFIGS = sorted((JOBS / "configs").glob("*.yaml"))
ENTRYPOINTS = {"train.py": "train", "eval.py": "eval", "export.py": "export"}

# `train.lr=3e-5`, `data.0.path=...`, `'train.num_workers=[1,4]'`: lower-case dotted keys
# (environment assignments such as RAY_AUTH_MODE=token are upper case and not overrides)
OVERRIDE = re.compile(r"^[a-z_]+(\.[a-z0-9_]+)+=")


def _documented_train_commands(text: str) -> list[list[str]]:
    """Every `jobs/train.py ... --config X ...` (or `angle-ray train --config X`) command in a
    text, as shell words from the script on.

    Lines may be YAML/shell comments (`# `), Markdown inline code, and continue with a
    trailing backslash."""
    lines = [re.sub(r"^\s*#\s?", "", line) for line in text.splitlines()]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    commands = []
    for line in joined.splitlines():
        if not ("jobs/train.py" in line or "angle-ray train" in line) or "--config" not in line:
            continue
        try:
            words = shlex.split(line.replace("`", " "))
        except ValueError:
            continue
        starts = [i for i, w in enumerate(words) if w.endswith("jobs/train.py")
                  or (w == "angle-ray" and words[i + 1:i + 2] == ["train"])]
        if starts and "--config" in words[starts[0]:]:
            commands.append(words[starts[0]:])
    return commands


def _config_and_overrides(words: list[str]) -> tuple[str, list[str]]:
    config = words[words.index("--config") + 1]
    return config, [w for w in words if OVERRIDE.match(w)]


def test_every_job_config_is_found():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "nli_pretrain.yaml", "sts_finetune.yaml", "llm_lora.yaml"} <= names


@pytest.mark.parametrize("path", sorted(JOBS.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_under_jobs_parses_to_a_mapping(path):
    assert isinstance(yaml.safe_load(path.read_text()), dict)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_job_config_passes_the_schema(path):
    assert isinstance(load_config(path), JobConfig)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_job_config_data_files_exist_in_the_project_data(path, data_dir, monkeypatch):
    monkeypatch.setenv("ANGLE_RAY_DATA_DIR", str(data_dir))
    cfg = load_config(path)
    paths = ([d.path for d in cfg.data] + ([cfg.eval.dev.path] if cfg.eval.dev else [])
             + ([cfg.eval.retrieval_dev.path] if cfg.eval.retrieval_dev else [])
             + ([cfg.mining.beir] if cfg.mining else []))
    assert paths, f"{path.name} names no data"
    for p in paths:
        assert Path(expand_path(p)).exists()  # raises FileNotFoundError naming the path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_job_config_header_says_what_it_is_and_how_to_run_it(path):
    text = path.read_text()
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 2, f"{path.name} must start with a comment block"
    commands = _documented_train_commands("\n".join(header))
    assert commands, f"{path.name}'s header shows no `jobs/train.py --config ...` command"
    assert any(_config_and_overrides(c)[0] == f"jobs/configs/{path.name}" for c in commands)


def _all_documented_commands():
    found = []
    for doc in sorted(JOBS.rglob("*")) + sorted((REPO / "cluster").rglob("*")):
        if doc.is_file() and doc.suffix in {".py", ".yaml", ".yml", ".md"}:
            for words in _documented_train_commands(doc.read_text()):
                config = _config_and_overrides(words)[0]
                found.append(pytest.param(words, id=f"{doc.relative_to(REPO)}:{config}"))
    return found


@pytest.mark.parametrize("words", _all_documented_commands())
def test_documented_train_command_names_a_config_and_overrides_that_load(words):
    config, overrides = _config_and_overrides(words)
    # the KubeRay image holds the project at /home/ray/angle-ray
    local = REPO / re.sub(r"^/home/ray/angle-ray/", "", config)
    assert local.is_file(), f"{config} does not exist"
    load_config(local, overrides)


def test_documented_commands_are_found_in_jobs_and_cluster_docs():
    # guards the scanner above: if it stopped finding commands, the test before it would pass empty
    assert len(_all_documented_commands()) >= 8


@pytest.mark.parametrize("script,command", ENTRYPOINTS.items())
def test_entrypoint_calls_the_cli_with_its_subcommand_and_passes_the_arguments_on(
        script, command, monkeypatch):
    calls = []
    monkeypatch.setattr(angle_ray.cli, "main", lambda argv=None: calls.append(argv) or 7)
    monkeypatch.setattr(sys, "argv", [f"jobs/{script}", "--config", "x.yaml", "train.lr=1e-4"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(JOBS / script), run_name="__main__")
    assert calls == [[command, "--config", "x.yaml", "train.lr=1e-4"]]
    assert exit_.value.code == 7  # the CLI's return code is the job's exit status


@pytest.mark.parametrize("script", ENTRYPOINTS)
def test_entrypoint_is_thin_and_documents_the_local_and_cluster_commands(script):
    source = (JOBS / script).read_text()
    tree = ast.parse(source)
    doc = ast.get_docstring(tree)
    assert doc and f"python jobs/{script}" in doc and "ray job submit" in doc
    assert "--runtime-env cluster/runtime_env.yaml" in doc
    for node in tree.body[1:]:  # after the docstring: imports and the __main__ guard only
        assert isinstance(node, (ast.Import, ast.ImportFrom, ast.If)), ast.dump(node)[:80]


def test_entrypoint_help_reaches_the_real_cli(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["jobs/train.py", "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(JOBS / "train.py"), run_name="__main__")
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: angle-ray train")


# --- the paper's two-stage recipe and the LLM job: values pinned so a change is deliberate ---

def test_nli_pretrain_is_the_papers_first_stage():
    cfg = load_config(JOBS / "configs" / "nli_pretrain.yaml")
    assert cfg.model.pooling == "cls" and not cfg.model.is_llm
    assert [d.format for d in cfg.data] == ["C"]
    assert cfg.data[0].path == "{data_dir}/nli/snli_dev_triples.jsonl"
    assert (cfg.loss.angle_w, cfg.loss.ibn_w, cfg.loss.cln_w) == (1.0, 30.0, 30.0)


def test_sts_finetune_starts_from_the_model_the_nli_stage_writes():
    nli = load_config(JOBS / "configs" / "nli_pretrain.yaml")
    sts = load_config(JOBS / "configs" / "sts_finetune.yaml")
    assert nli.export.output_dir is None  # so stage 1's model lands in <storage_path>/<name>/model
    assert sts.model.name_or_path == f"{nli.train.storage_path}/{nli.train.name}/model"
    assert sts.model.pooling == nli.model.pooling == "cls"
    assert [(d.format, d.label_range) for d in sts.data] == [("A", (0.0, 5.0))]
    assert sts.data[0].path.endswith("stsb/train.jsonl")
    assert sts.eval.dev is not None and sts.eval.dev.path.endswith("stsb/validation.jsonl")
    assert (sts.loss.angle_w, sts.loss.cosine_w, sts.loss.ibn_w) == (0.02, 1.0, 1.0)


def test_llm_lora_is_an_elastic_gpu_lora_job_on_a_causal_lm():
    cfg = load_config(JOBS / "configs" / "llm_lora.yaml")
    m, t = cfg.model, cfg.train
    assert m.is_llm and m.pooling == "last" and m.lora.enabled and m.dtype == "bf16"
    assert re.match(r"^(Qwen|meta-llama)/", m.name_or_path)
    assert (t.use_gpu, t.zero_stage, t.strategy) == (True, 0, "deepspeed")  # elastic-safe state
    assert t.num_workers == (2, 8)
    assert t.max_failures > 0  # spot workers come and go; resume instead of failing
    assert all(d.query_prompt and d.doc_prompt for d in cfg.data)
