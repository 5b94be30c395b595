"""angle_ray.data.semeval: SemEval STS test folders (STS.input.<name>.txt + STS.gs.<name>.txt),
built here from real STS-B test rows."""

import itertools
import json
import pickle

import pytest

from angle_ray.data import DataError, read_sts_folder, read_sts_pairs

EMPTY_GOLD_LINES = {"MSRvid": [3, 17], "headlines": [1]}


@pytest.fixture(scope="module")
def stsb_test(data_dir):
    with open(data_dir / "stsb" / "test.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in itertools.islice(f, 50)]


def _write_subset(folder, name, rows, empty_gold_lines=(), newline="\n"):
    inputs = [f"{r['text1']}\t{r['text2']}" for r in rows]
    golds = ["" if i in empty_gold_lines else f"{r['label']:.3f}" for i, r in enumerate(rows, start=1)]
    (folder / f"STS.input.{name}.txt").write_text(newline.join(inputs) + newline, encoding="utf-8", newline="")
    (folder / f"STS.gs.{name}.txt").write_text(newline.join(golds) + newline, encoding="utf-8", newline="")


@pytest.fixture
def sts_folder(tmp_path, stsb_test):
    folder = tmp_path / "STS-en-test"
    folder.mkdir()
    _write_subset(folder, "MSRvid", stsb_test[:30], EMPTY_GOLD_LINES["MSRvid"])
    _write_subset(folder, "headlines", stsb_test[30:50], EMPTY_GOLD_LINES["headlines"])
    (folder / "00-readme.txt").write_text("not a data file\n")
    return folder


def test_folder_reads_each_sub_dataset_and_skips_pairs_with_empty_gold_lines(sts_folder, stsb_test):
    subsets = read_sts_folder(sts_folder)
    assert list(subsets) == ["MSRvid", "headlines"]
    msr = subsets["MSRvid"]
    assert len(msr) == 28 and msr.skipped == 2 and msr.skipped_lines == [3, 17]
    assert len(subsets["headlines"]) == 19 and subsets["headlines"].skipped_lines == [1]
    kept = [r for i, r in enumerate(stsb_test[:30], start=1) if i not in (3, 17)]
    assert msr == [(r["text1"], r["text2"], pytest.approx(r["label"], abs=5e-4)) for r in kept]


def test_pairs_pickle_with_their_skipped_count(sts_folder):
    pairs = read_sts_folder(sts_folder)["MSRvid"]
    back = pickle.loads(pickle.dumps(pairs))
    assert back == pairs and back.skipped == 2


def test_crlf_line_endings_read_the_same_pairs(tmp_path, stsb_test):
    _write_subset(tmp_path, "crlf", stsb_test[:10], [5], newline="\r\n")
    pairs = read_sts_pairs(tmp_path / "STS.input.crlf.txt", tmp_path / "STS.gs.crlf.txt")
    assert len(pairs) == 9 and pairs.skipped_lines == [5]
    assert pairs[0][:2] == (stsb_test[0]["text1"], stsb_test[0]["text2"])


def test_mismatched_line_counts_name_the_file_and_the_line(tmp_path, stsb_test):
    _write_subset(tmp_path, "short", stsb_test[:10])
    gs = tmp_path / "STS.gs.short.txt"
    gs.write_text("".join(gs.read_text().splitlines(keepends=True)[:8]))
    with pytest.raises(DataError) as info:
        read_sts_folder(tmp_path)
    err = info.value
    assert (err.file, err.row) == (str(tmp_path / "STS.input.short.txt"), 9)
    assert "STS.input.short.txt has 10 lines but STS.gs.short.txt has 8" in str(err)


def test_non_numeric_gold_line_names_the_gold_file_and_line(tmp_path, stsb_test):
    _write_subset(tmp_path, "bad", stsb_test[:10])
    gs = tmp_path / "STS.gs.bad.txt"
    lines = gs.read_text().splitlines()
    lines[6] = "four"
    gs.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        read_sts_folder(tmp_path)
    assert str(info.value) == f"{gs} line 7: gold score 'four' is not a number"


def test_gold_score_outside_0_5_is_an_error(tmp_path, stsb_test):
    _write_subset(tmp_path, "range", stsb_test[:5])
    gs = tmp_path / "STS.gs.range.txt"
    lines = gs.read_text().splitlines()
    lines[1] = "7.5"
    gs.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"STS\.gs\.range\.txt line 2: gold score '7\.5' is outside \[0, 5\]"):
        read_sts_folder(tmp_path)


@pytest.mark.parametrize("line", ["only one sentence", "a\tb\tc"])
def test_input_line_without_exactly_one_tab_names_the_input_file_and_line(tmp_path, stsb_test, line):
    _write_subset(tmp_path, "tabs", stsb_test[:6])
    inp = tmp_path / "STS.input.tabs.txt"
    lines = inp.read_text().splitlines()
    lines[3] = line
    inp.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"STS\.input\.tabs\.txt line 4: expected two sentences separated by one tab"):
        read_sts_folder(tmp_path)


def test_missing_gold_file_is_an_error_naming_it(tmp_path, stsb_test):
    _write_subset(tmp_path, "lonely", stsb_test[:3])
    (tmp_path / "STS.gs.lonely.txt").unlink()
    with pytest.raises(DataError, match=r"STS\.gs\.lonely\.txt: missing gold file for STS\.input\.lonely\.txt"):
        read_sts_folder(tmp_path)


def test_folder_without_sts_input_files_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"no STS\.input\.<name>\.txt files"):
        read_sts_folder(tmp_path)
