"""angle_ray/cli.py: every user error is one `error: ...` line on stderr and exit code 2, with no
traceback, `--debug` re-raises, and errors that Ray wrapped are unwrapped to the user error inside.
Some commands run as a user runs them (a separate `python -m angle_ray.cli` process); the rest call
`main()` in this process, which prints and returns the same, without paying ~10 s of imports each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ray.exceptions import RayTaskError
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
from ray.train.v2.api.exceptions import WorkerGroupError

from angle_ray import __version__
from angle_ray.cli import USER_ERROR_EXIT, CommandParser, find_user_error, main
from angle_ray.config import ConfigError
from angle_ray.data.errors import DataError
from angle_ray.models.loader import ModelLoadError

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "jobs" / "configs" / "quickstart.yaml"


def run_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "angle_ray.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def run_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """`main(args)` in this process, its exit code and output as a finished process gives them."""
    capsys.readouterr()  # drop what came before
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["angle-ray", *args], code, out, err)


def assert_user_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == USER_ERROR_EXIT == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, proc.stderr
    assert message in error_lines[0], error_lines[0]


def test_version_prints_the_package_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"angle-ray {__version__}"


def test_every_option_has_a_help_text():
    from angle_ray.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them only here
    assert {"embed", "serve"} <= set(commands)
    for name, sub in {"angle-ray": parser, **commands}.items():
        if isinstance(sub, CommandParser):
            sub.load_options()  # embed / serve add theirs on first use
        assert name == "angle-ray" or len(sub._actions) > 1, f"{name} has no options"
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"


def test_train_with_a_bad_config_key_names_the_key(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("train:\n  epoch: 3\n")  # the key is `epochs`
    assert_user_error(run_cli("train", "--config", str(config)),
                      f"invalid config ({config}): unknown key 'train.epoch'")


def test_a_missing_config_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    assert_user_error(run_cli("train", "--config", str(missing)), f"config file not found: {missing}")


def test_train_on_a_missing_data_file_names_it(tmp_path, capsys):
    missing = tmp_path / "nowhere.jsonl"
    proc = run_main(capsys, "train", "--config", "jobs/configs/quickstart.yaml", f"data.0.path={missing}",
                   f"train.storage_path={tmp_path}")
    assert_user_error(proc, f"data path not found: {missing}")


def test_eval_of_a_missing_model_folder_names_the_path(capsys):
    proc = run_main(capsys, "eval", "--model", "/no/such/dir", "--tasks", "stsb")
    assert_user_error(proc, "/no/such/dir: no such model folder")
    assert "repo id" not in proc.stderr.lower()


def test_export_of_a_missing_model_folder_names_the_path(tmp_path, capsys):
    proc = run_main(capsys, "export", "--model", "/no/such/dir", "--output", str(tmp_path / "out"))
    assert_user_error(proc, "/no/such/dir: no such model folder")
    assert not (tmp_path / "out").exists()


def test_eval_of_an_unknown_task_lists_the_known_ones():
    proc = run_cli("eval", "--tasks", "stsb,nosuchtask")
    assert_user_error(proc, "unknown task(s) ['nosuchtask']; choose from stsb")


def test_mine_without_a_mining_section_says_what_to_add(tmp_path, capsys):
    proc = run_main(capsys, "mine", "--config", str(QUICKSTART), "--output", str(tmp_path / "neg.jsonl"))
    assert_user_error(proc, f"{QUICKSTART} has no `mining:` section")


def test_debug_shows_the_error_itself():
    with pytest.raises(ModelLoadError, match="/no/such/dir"):
        main(["--debug", "export", "--model", "/no/such/dir", "--output", "unused"])


def test_a_bug_is_not_turned_into_a_user_error(monkeypatch, capsys):
    def broken(args):
        raise KeyError("a programming error")

    monkeypatch.setattr("angle_ray.cli.cmd_eval", broken)
    with pytest.raises(KeyError):
        main(["eval", "--tasks", "stsb"])  # parser built after the patch: it calls `broken`


# --- errors Ray wrapped ------------------------------------------------------------------------

BAD_ROW = DataError("data/train.jsonl", 7, "text2", "empty text")


def test_a_data_error_from_a_ray_task_is_unwrapped():
    wrapped = RayTaskError("read_fn", "Traceback (most recent call last): ...", BAD_ROW)
    assert find_user_error(wrapped) is BAD_ROW
    # Ray re-raises it as a class that is both a RayTaskError and a DataError: its own text is
    # the remote traceback, so the DataError inside is the one to print
    dual = wrapped.as_instanceof_cause()
    assert isinstance(dual, DataError)
    assert find_user_error(dual) is BAD_ROW


def test_a_data_error_from_a_train_worker_is_unwrapped():
    failure = WorkerGroupError("worker 1 failed", {
        0: UserExceptionWithTraceback(RuntimeError("peer went away"), "tb 0"),
        1: UserExceptionWithTraceback(BAD_ROW, "tb 1"),
    })
    assert find_user_error(failure) is BAD_ROW


def test_a_chained_user_error_is_found_and_an_unrelated_error_is_not():
    try:
        try:
            raise ConfigError("train.epochs: must be > 0")
        except ConfigError as err:
            raise RuntimeError("while planning the run") from err
    except RuntimeError as outer:
        assert str(find_user_error(outer)) == "train.epochs: must be > 0"
    assert find_user_error(RuntimeError("no user error here")) is None


def test_main_prints_the_unwrapped_error_line(monkeypatch, capsys):
    def fails_in_ray(args):
        raise RayTaskError("read_fn", "remote traceback", BAD_ROW).as_instanceof_cause()

    monkeypatch.setattr("angle_ray.cli.cmd_eval", fails_in_ray)
    assert main(["eval", "--tasks", "stsb"]) == 2
    err = capsys.readouterr().err
    assert err == "error: data/train.jsonl line 7, field 'text2': empty text\n"


@pytest.mark.slow  # starts Ray (Ray Data reads the corpus) before the bad row stops it
def test_train_on_a_row_with_an_empty_text_names_file_line_and_field(data_dir, tmp_path):
    with open(data_dir / "stsb" / "train.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(40), f)]
    rows[2]["text2"] = ""
    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_cli("train", "--config", str(QUICKSTART), f"data.0.path={corpus}",
                   f"train.storage_path={tmp_path / 'runs'}", "train.max_steps=2", "eval.dev=null",
                   timeout=600)
    assert_user_error(proc, f"{corpus} line 3, field 'text2': empty text")


def test_embed_and_serve_options_load_only_when_their_command_runs(capsys):
    code = ("import sys; from angle_ray.cli import build_parser; "
            "build_parser().format_help(); print('ray' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.strip() == "False"  # `angle-ray --help` does not wait for Ray to import
    for command, options in (("embed", ("--text-field", "--index")),
                             ("serve", ("--replicas", "--api-key-env"))):
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0 and all(o in out for o in options), out


# --- embed / serve / export: user errors before any Ray work -----------------------------------


def test_embed_of_a_missing_model_folder_names_the_path(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "a"}\n')
    proc = run_main(capsys, "embed", "--model", "/no/such/dir", "--input", str(corpus),
                   "--output", str(tmp_path / "out.parquet"))
    assert_user_error(proc, "/no/such/dir: no such model folder")
    assert not (tmp_path / "out.parquet").exists()


def test_embed_of_a_missing_input_names_it(tmp_path, capsys):
    missing = tmp_path / "nowhere.jsonl"
    assert main(["embed", "--model", "all-MiniLM-L6-v2", "--input", str(missing),
                 "--output", str(tmp_path / "out.parquet")]) == 2
    assert capsys.readouterr().err == f"error: --input {missing}: no such file or folder ({missing})\n"


def test_embed_of_a_row_without_text_names_file_line_and_field(tmp_path, capsys):
    corpus = tmp_path / "docs.jsonl"  # (a file named corpus.jsonl reads as a BEIR corpus)
    corpus.write_text('{"id": "a", "body": "first"}\n{"id": "b", "body": ""}\n')
    assert main(["embed", "--model", "all-MiniLM-L6-v2", "--input", str(corpus), "--text-field",
                 "body", "--id-field", "id", "--output", str(tmp_path / "out.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {corpus} line 2, field 'body': "), err


def test_embed_with_zero_rows_per_shard_is_refused(tmp_path, capsys):
    assert main(["embed", "--model", "all-MiniLM-L6-v2", "--input", str(tmp_path), "--output",
                 str(tmp_path / "o"), "--shard-rows", "0"]) == 2
    assert capsys.readouterr().err == "error: --shard-rows and --max-length must be >= 1\n"


def test_serve_on_a_port_outside_tcp_names_it(capsys):
    proc = run_main(capsys, "serve", "--model", "all-MiniLM-L6-v2", "--port", "70000")
    assert_user_error(proc, "--port 70000 is not a TCP port (1..65535)")


@pytest.mark.parametrize("argv, message", [
    (["--model", "/no/such/dir"], "/no/such/dir: no such model folder"),
    (["--model", "all-MiniLM-L6-v2", "--prompt", "query: "], "--prompt 'query: ' has no '{text}' slot"),
    (["--model", "all-MiniLM-L6-v2", "--api-key-env", "ANGLE_RAY_TEST_UNSET_KEY"],
     "--api-key-env ANGLE_RAY_TEST_UNSET_KEY: the environment variable is not set or empty"),
])
def test_serve_user_errors_stop_before_ray_starts(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("ANGLE_RAY_TEST_UNSET_KEY", raising=False)
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_export_no_int8_without_onnx_is_refused(tmp_path, capsys):
    proc = run_main(capsys, "export", "--model", "all-MiniLM-L6-v2", "--output", str(tmp_path / "out"),
                   "--no-int8")
    assert_user_error(proc, "--no-int8 goes with --onnx")
    assert not (tmp_path / "out").exists()


# --- mining: a split with nothing to mine ------------------------------------------------------


def test_mine_on_a_split_without_positives_names_the_split(mini_scifact, tmp_path, capsys):
    qrels = (mini_scifact / "qrels" / "train.tsv").read_text().splitlines()
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (beir / name).write_text((mini_scifact / name).read_text())
    # every judgement scored 0: no query has a positive to mine negatives for
    zeroed = [qrels[0], *("\t".join(line.split("\t")[:2] + ["0"]) for line in qrels[1:])]
    (beir / "qrels" / "train.tsv").write_text("\n".join(zeroed) + "\n")
    config = tmp_path / "mine.yaml"
    config.write_text(f"mining:\n  beir: {beir}\n  holdout_fraction: 0\n")
    proc = run_main(capsys, "mine", "--config", str(config), "--output", str(tmp_path / "neg.jsonl"))
    assert_user_error(proc, f"mining.beir='{beir}': no query of split 'train' (qrels/train.tsv) has a "
                            "positive judgement")
    assert not (tmp_path / "neg.jsonl").exists()


def test_a_bad_dev_fraction_is_a_user_error():
    from angle_ray.data.beir import SplitError, split_qrels_by_query

    with pytest.raises(SplitError, match=r"dev_fraction must be in \(0, 1\), got 1.5") as caught:
        split_qrels_by_query({"q1": {"d1": 1}}, dev_fraction=1.5)
    assert find_user_error(RuntimeError("wrapped")) is None
    assert find_user_error(caught.value) is caught.value  # main() prints it as `error: ...`, exit 2


# --- export: a model card in every folder ----------------------------------------------------------


def test_export_writes_a_model_card_in_each_folder(tiny_llm_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", "--model", tiny_llm_dir, "--is-llm", "--output", str(out)]) == 0
    for folder in (out / "hf", out / "sentence-transformers"):
        card = (folder / "README.md").read_text()
        assert "- pooling: `last`" in card and "No training record (angle_ray_card.json)" in card
        assert f'SentenceTransformer("{out / "sentence-transformers"}")' in card
    assert "onnx" not in capsys.readouterr().out


@pytest.mark.slow  # torch.onnx dynamo export of MiniLM: ~40 s on 2 cores
def test_export_onnx_without_int8_writes_the_fp32_graph_and_its_card(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("export", "--model", "all-MiniLM-L6-v2", "--output", str(out), "--onnx", "--no-int8",
                   timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (out / "onnx" / "onnx" / "model.onnx").is_file()
    assert not (out / "onnx" / "onnx" / "model_int8.onnx").exists()
    card = (out / "onnx" / "README.md").read_text()
    assert f'OnnxEmbedder("{out / "onnx"}", variant="fp32")' in card
