"""angle_ray.data.readers: streaming rows out of JSONL / CSV / TSV / Parquet / datasets folders."""

import gzip
import itertools
import json
import logging
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from angle_ray.data import DataError, iter_rows, list_files, row_unit
from angle_ray.data.errors import ROW


def _jsonl_lines(path, n):
    with open(path, encoding="utf-8") as f:
        return [line for line in itertools.islice(f, n)]


@pytest.fixture(scope="module")
def stsb_head(data_dir):
    """The first 40 rows of the real STS-B train file."""
    return [json.loads(line) for line in _jsonl_lines(data_dir / "stsb" / "train.jsonl", 40)]


@pytest.mark.parametrize(
    ("relpath", "rows"),
    [
        ("stsb/train.jsonl", 5749),
        ("stsb/validation.jsonl", 1500),
        ("stsb/test.jsonl", 1379),
        ("sick_r/semeval2014/train.jsonl", 4500),
        ("sick_r/semeval2014/trial.jsonl", 500),
        ("sick_r/semeval2014/test.jsonl", 4927),
        ("nli/snli_dev_triples.jsonl", 3172),
    ],
)
def test_real_jsonl_files_have_the_row_counts_of_the_data_readme(data_dir, relpath, rows):
    numbers = [n for n, _ in iter_rows(data_dir / relpath)]
    assert len(numbers) == rows
    assert numbers == list(range(1, rows + 1))  # 1-based physical lines, no gaps


def test_jsonl_rows_are_the_parsed_objects_numbered_by_line(data_dir, stsb_head):
    rows = list(itertools.islice(iter_rows(data_dir / "stsb" / "train.jsonl"), 3))
    assert rows == [(1, stsb_head[0]), (2, stsb_head[1]), (3, stsb_head[2])]


def test_jsonl_gz_reads_the_same_rows_as_plain_jsonl(tmp_path, data_dir, stsb_head):
    gz = tmp_path / "stsb.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.writelines(_jsonl_lines(data_dir / "stsb" / "train.jsonl", 40))
    assert [r for _, r in iter_rows(gz)] == stsb_head


def test_iter_rows_streams_rows_before_reaching_a_later_bad_line(tmp_path, data_dir):
    lines = _jsonl_lines(data_dir / "stsb" / "train.jsonl", 5)
    path = tmp_path / "late_error.jsonl"
    path.write_text("".join(lines[:3]) + "{not json\n" + lines[3])
    rows = iter_rows(path)
    assert [next(rows)[0] for _ in range(3)] == [1, 2, 3]  # served lazily, line by line
    with pytest.raises(DataError):
        next(rows)


def test_blank_lines_in_jsonl_are_not_rows_but_keep_line_numbers(tmp_path, data_dir):
    lines = _jsonl_lines(data_dir / "stsb" / "train.jsonl", 2)
    path = tmp_path / "blank.jsonl"
    path.write_text(lines[0] + "\n   \n" + lines[1])
    assert [n for n, _ in iter_rows(path)] == [1, 4]


def test_malformed_json_line_error_names_file_line_and_reason(tmp_path, data_dir):
    lines = _jsonl_lines(data_dir / "stsb" / "train.jsonl", 20)
    lines[16] = lines[16].rstrip("\n")[:-5] + "\n"  # line 17 loses its closing characters
    path = tmp_path / "broken.jsonl"
    path.write_text("".join(lines))
    with pytest.raises(DataError) as info:
        list(iter_rows(path))
    err = info.value
    assert (err.file, err.row) == (str(path), 17)
    assert str(err).startswith(f"{path} line 17: not valid JSON")


def test_json_line_that_is_not_an_object_is_an_error(tmp_path, data_dir):
    row = json.loads(_jsonl_lines(data_dir / "stsb" / "train.jsonl", 1)[0])
    path = tmp_path / "array.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(list(row.values())) + "\n")
    with pytest.raises(DataError, match=r"array\.jsonl line 2: expected a JSON object, got an array"):
        list(iter_rows(path))


def test_invalid_utf8_line_error_names_the_line(tmp_path, data_dir):
    lines = _jsonl_lines(data_dir / "stsb" / "train.jsonl", 2)
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(lines[0].encode() + '{"text1": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.jsonl line 2: not valid UTF-8"):
        list(iter_rows(path))


def test_on_bad_row_callback_receives_the_error_and_reading_goes_on(tmp_path, data_dir):
    lines = _jsonl_lines(data_dir / "stsb" / "train.jsonl", 6)
    lines[1] = "{oops\n"
    lines[4] = "[1, 2]\n"
    path = tmp_path / "two_bad.jsonl"
    path.write_text("".join(lines))
    bad = []
    numbers = [n for n, _ in iter_rows(path, on_bad_row=bad.append)]
    assert numbers == [1, 3, 4, 6]
    assert [(e.file, e.row) for e in bad] == [(str(path), 2), (str(path), 5)]


def test_csv_header_is_line_1_and_quoted_multiline_fields_keep_physical_line_numbers(tmp_path, stsb_head):
    path = tmp_path / "multi.csv"
    a, b, c = stsb_head[:3]
    path.write_text(
        "text1,text2,label\n"
        f'"{a["text1"]}","{a["text2"]}",{a["label"]}\n'
        f'"two\nlines, with comma","{b["text2"]}",{b["label"]}\n'  # lines 3-4
        f'{c["text1"]},{c["text2"]},{c["label"]}\n'  # line 5
    )
    rows = list(iter_rows(path))
    assert [n for n, _ in rows] == [2, 3, 5]
    assert rows[1][1] == {"text1": "two\nlines, with comma", "text2": b["text2"], "label": str(b["label"])}


def test_csv_row_with_wrong_number_of_fields_error_names_file_and_line(tmp_path, stsb_head):
    path = tmp_path / "extra_field.csv"
    body = [f'"{r["text1"]}","{r["text2"]}",{r["label"]}' for r in stsb_head[:5]]
    body[2] += ",surplus"  # line 4 (header is line 1)
    path.write_text("text1,text2,label\n" + "\n".join(body) + "\n")
    with pytest.raises(DataError) as info:
        list(iter_rows(path))
    assert info.value.row == 4
    assert str(info.value) == (
        f"{path} line 4: expected 3 fields (header: text1, text2, label), got 4"
    )


def test_tsv_with_too_few_fields_is_an_error(tmp_path, stsb_head):
    path = tmp_path / "short.tsv"
    r = stsb_head[0]
    path.write_text(f"text1\ttext2\tlabel\n{r['text1']}\t{r['text2']}\t{r['label']}\n{r['text1']}\t{r['label']}\n")
    with pytest.raises(DataError, match=r"short\.tsv line 3: expected 3 fields .* got 2"):
        list(iter_rows(path))


def test_csv_header_with_a_repeated_column_is_an_error(tmp_path):
    path = tmp_path / "dupe.csv"
    path.write_text("text1,text1,label\na,b,1\n")
    with pytest.raises(DataError, match=r"dupe\.csv line 1: the header repeats column\(s\) text1"):
        list(iter_rows(path))


def test_parquet_rows_are_numbered_from_0_across_row_groups(tmp_path, data_dir):
    rows = [r for _, r in itertools.islice(iter_rows(data_dir / "stsb" / "train.jsonl"), 2500)]
    path = tmp_path / "stsb.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=700)
    got = list(iter_rows(path))
    assert [n for n, _ in got] == list(range(2500))
    assert [r for _, r in got] == rows
    assert row_unit(str(path)) == ROW


def test_corrupt_parquet_file_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        list(iter_rows(path))


def test_datasets_save_to_disk_folder_is_listed_as_itself_and_read_row_by_row(tmp_path, stsb_head):
    from datasets import Dataset

    folder = tmp_path / "stsb_ds"
    Dataset.from_list(stsb_head).save_to_disk(str(folder))
    assert list_files(folder) == [str(folder)]
    assert list(iter_rows(folder)) == list(enumerate(stsb_head))
    assert row_unit(str(folder)) == ROW


def test_datasets_dict_folder_asks_for_one_split(tmp_path, stsb_head):
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "dd"
    DatasetDict({"train": Dataset.from_list(stsb_head[:5])}).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"DatasetDict folder \(splits: train\); point the path at one split"):
        list(iter_rows(folder))


def test_list_files_of_a_folder_returns_supported_files_sorted_and_warns_about_others(tmp_path, caplog):
    for name in ("b.parquet", "a.jsonl", "c.csv", "notes.txt", ".hidden.jsonl", "_SUCCESS"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    with caplog.at_level(logging.WARNING, logger="angle_ray.data.readers"):
        files = list_files(tmp_path)
    assert files == [str(tmp_path / n) for n in ("a.jsonl", "b.parquet", "c.csv")]
    assert "notes.txt" in caplog.text


def test_list_files_of_the_real_stsb_folder_is_its_three_splits(data_dir):
    assert [p.rsplit("/", 1)[1] for p in list_files(data_dir / "stsb")] == [
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]


def test_unsupported_extension_error_lists_the_supported_ones(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("[]")
    for call in (lambda: list_files(path), lambda: iter_rows(path)):
        with pytest.raises(DataError) as info:
            call()
        msg = str(info.value)
        assert msg.startswith(f"{path}: unsupported file type; supported: ")
        for suffix in (".jsonl", ".jsonl.gz", ".csv", ".tsv", ".parquet", "save_to_disk"):
            assert suffix in msg


def test_folder_without_readable_files_is_an_error_naming_what_it_found(tmp_path):
    (tmp_path / "data.json").write_text("[]")
    with pytest.raises(DataError, match=r"no readable data files \(found data\.json\)"):
        list_files(tmp_path)


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        list_files(tmp_path / "nope.jsonl")


def test_data_error_pickles_with_all_its_attributes():
    err = DataError("stsb/train.jsonl", 17, "label", "NaN label")
    assert str(err) == "stsb/train.jsonl line 17, field 'label': NaN label"
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is DataError and isinstance(back, ValueError)
    assert (back.file, back.row, back.field, back.reason, back.unit) == (
        "stsb/train.jsonl", 17, "label", "NaN label", "line"
    )
    assert str(back) == str(err)


def test_data_error_for_columnar_data_says_the_row_is_0_based():
    err = DataError("part-0.parquet", 3, "text1", "empty text", ROW)
    assert str(err) == "part-0.parquet row 3 (0-based), field 'text1': empty text"
    assert str(pickle.loads(pickle.dumps(err))) == str(err)
