"""Named evaluation tasks end to end: the published zero-shot figure, SemEval folders, errors."""

import json

import pytest

from angle_ray.cli import main
from angle_ray.eval.runner import markdown_table, run_tasks
from angle_ray.eval.tasks import TaskError, resolve_tasks

PUBLISHED_STSB_MINILM = 82.03  # all-MiniLM-L6-v2, mean pooling, STS-B test Spearman x100


@pytest.mark.slow
def test_zero_shot_minilm_reproduces_the_published_stsb_figure(data_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", "all-MiniLM-L6-v2", "--pooling", "mean", "--tasks",
                 "stsb,sickr", "--data-dir", str(data_dir), "--output", str(out)])
    assert code == 0
    results = json.loads(out.read_text())["tasks"]
    assert results["stsb"]["spearman"] == pytest.approx(PUBLISHED_STSB_MINILM, abs=0.05)
    assert 70 < results["sickr"]["spearman"] < 90
    table = capsys.readouterr().out
    assert "| stsb | sickr | avg |" in table
    print(f"\nzero-shot all-MiniLM-L6-v2: stsb {results['stsb']['spearman']:.2f}, "
          f"sickr {results['sickr']['spearman']:.2f}")


def test_semeval_folder_pools_its_subsets_and_skips_empty_gold(minilm_small, data_dir, tmp_path):
    rows = [json.loads(x) for x in (data_dir / "stsb" / "test.jsonl").open().readlines()[:60]]
    folder = tmp_path / "sts" / "STS12-en-test"
    folder.mkdir(parents=True)
    for name, part in (("MSRpar", rows[:30]), ("SMTeuroparl", rows[30:])):
        (folder / f"STS.input.{name}.txt").write_text(
            "".join(f"{r['text1']}\t{r['text2']}\n" for r in part))
        gold = [f"{r['label']}" for r in part]
        gold[3] = ""  # no gold score: the pair is left out
        (folder / f"STS.gs.{name}.txt").write_text("\n".join(gold) + "\n")
    results = run_tasks(minilm_small, "sts12", tmp_path, batch_size=32)
    kept = [r for i, r in enumerate(rows) if i not in (3, 33)]
    from angle_ray.eval.sts import sts_spearman

    expected = sts_spearman(minilm_small, [r["text1"] for r in kept], [r["text2"] for r in kept],
                            [r["label"] for r in kept], show_progress=False)
    assert results["tasks"]["sts12"]["spearman"] == pytest.approx(expected, abs=1e-6)
    assert "| sts12 | avg |" in markdown_table(results)


def test_unknown_task_is_an_error_listing_the_valid_ones(tmp_path):
    with pytest.raises(TaskError, match="unknown task.*stsb, sickr"):
        resolve_tasks("stsb,nope", tmp_path)


def test_cli_unknown_task_exits_2_before_loading_a_model(capsys, tmp_path):
    assert main(["eval", "--tasks", "bogus", "--data-dir", str(tmp_path)]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_missing_data_says_what_to_set(minilm_small, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaskError, match="ANGLE_RAY_DATA_DIR"):
        run_tasks(minilm_small, "stsb", tmp_path)


def test_all_runs_present_tasks_and_lists_the_rest(data_dir):
    run, absent = resolve_tasks("all", data_dir)
    assert {"stsb", "sickr", "scifact"} <= set(run)
    assert "sts12" in absent  # no SemEval folders in the shared data
