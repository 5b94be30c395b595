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


# --- beir:DIR[:split] ----------------------------------------------------------------------------


def test_beir_task_with_a_split_scores_every_judgement_of_that_qrels_file(judged_scifact, tmp_path,
                                                                         capsys):
    from angle_ray.data.beir import load_beir
    from angle_ray.eval.retrieval import evaluate_retrieval
    from angle_ray.models.loader import load_model

    task = f"beir:{judged_scifact}:train"
    out = tmp_path / "eval.json"
    assert main(["eval", "--tasks", task, "--max-length", "64", "--output", str(out)]) == 0
    got = json.loads(out.read_text())["tasks"][task]
    data = load_beir(judged_scifact, split="train")
    assert len(data.qrels) == 60  # all judged queries, no dev split
    assert len(data.corpus) == 55 + 25
    expected = evaluate_retrieval(load_model("all-MiniLM-L6-v2", max_length=64), data.corpus,
                                  data.queries, data.qrels, show_progress=False)
    assert got == pytest.approx(expected, abs=1e-6)
    assert set(got) >= {"ndcg@10", "mrr@10"} and 0 < got["ndcg@10"] <= 100
    assert f"| {task} | avg |" in capsys.readouterr().out


def test_beir_task_without_a_split_is_the_dev_split_of_train(mini_scifact):
    from angle_ray.data.beir import load_beir, split_qrels_by_query
    from angle_ray.eval.tasks import SCIFACT_DEV_FRACTION, load_retrieval_task

    corpus, queries, qrels = load_retrieval_task(f"beir:{mini_scifact}", mini_scifact.parent)
    full = load_beir(mini_scifact, split="train")
    _, dev = split_qrels_by_query(full.qrels, SCIFACT_DEV_FRACTION, 0)
    assert qrels == dev and len(qrels) == round(0.2 * 60) == 12
    assert corpus == full.corpus and queries == full.queries


def test_beir_task_keeps_the_case_of_its_folder(mini_scifact, tmp_path):
    folder = tmp_path / "MixedCase"
    folder.symlink_to(mini_scifact, target_is_directory=True)
    names, _ = resolve_tasks(f"STSB, beir:{folder}:train", tmp_path)
    assert names == ["stsb", f"beir:{folder}:train"]


def test_beir_task_with_an_unknown_split_names_the_missing_qrels_file(mini_scifact, capsys):
    assert main(["eval", "--tasks", f"beir:{mini_scifact}:test"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: task 'beir:{mini_scifact}:test': no qrels file "
                   f"{mini_scifact / 'qrels' / 'test.tsv'} (splits in {mini_scifact / 'qrels'}: train)\n")


def test_beir_task_with_a_missing_folder_names_it(tmp_path, capsys):
    assert main(["eval", "--tasks", f"beir:{tmp_path / 'nope'}:test"]) == 2
    assert capsys.readouterr().err == (f"error: task 'beir:{tmp_path / 'nope'}:test': BEIR folder not "
                                       f"found: {tmp_path / 'nope'}\n")


# --- STS12-16 without a local folder ------------------------------------------------------------


def test_sts12_without_a_folder_offline_says_what_to_set(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["eval", "--tasks", "sts12", "--data-dir", str(tmp_path)]) == 2
    # the error is the last line; a model-loading progress bar may stand before it on stderr
    lines = capsys.readouterr().err.splitlines()
    err = lines[-1]
    assert err.startswith(f"error: task 'sts12': data not found at {tmp_path / 'sts' / 'STS12-en-test'}")
    assert "the public copy mteb/sts12-sts was not tried (HF_HUB_OFFLINE=1)" in err
    assert "Set --data-dir (or ANGLE_RAY_DATA_DIR) to a folder holding it" in err
    assert "unset HF_HUB_OFFLINE" in err
    assert [line for line in lines if line.startswith("error:")] == [err]  # one error line


# --- a sentence-transformers model keeps its own pooling ------------------------------------------


def test_eval_of_a_sentence_transformers_folder_uses_its_pooling(minilm_small, data_dir, tmp_path):
    from angle_ray.config import ModelConfig
    from angle_ray.eval.sts import sts_spearman
    from angle_ray.models.backbone import build_model
    from angle_ray.models.export import export_sentence_transformers

    rows = [json.loads(x) for x in (data_dir / "stsb" / "test.jsonl").open().readlines()[:40]]
    folder = tmp_path / "data" / "sts" / "STS12-en-test"
    folder.mkdir(parents=True)
    (folder / "STS.input.part.txt").write_text("".join(f"{r['text1']}\t{r['text2']}\n" for r in rows))
    (folder / "STS.gs.part.txt").write_text("".join(f"{r['label']}\n" for r in rows))
    cls_model = build_model(ModelConfig(pooling="cls"))
    export_sentence_transformers(cls_model, tmp_path / "st-cls")
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tmp_path / "st-cls"), "--tasks", "sts12",
                 "--data-dir", str(tmp_path / "data"), "--output", str(out)]) == 0
    got = json.loads(out.read_text())["tasks"]["sts12"]["spearman"]
    args = ([r["text1"] for r in rows], [r["text2"] for r in rows], [r["label"] for r in rows])
    with_cls = sts_spearman(cls_model, *args, show_progress=False)
    with_mean = sts_spearman(minilm_small, *args, show_progress=False)
    assert abs(with_cls - with_mean) > 0.5  # the two poolings give distinguishable figures
    assert got == pytest.approx(with_cls, abs=1e-6)
