"""angle_ray.data.formats: validation, normalisation, sampling and corpus reading."""

import collections
import csv
import gzip
import itertools
import json
import logging
import math
import pickle

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from angle_ray.config import DatasetConfig
from angle_ray.data import (
    FORMAT_COLUMNS,
    BadRowReport,
    DataError,
    RecordReader,
    RowNormaliser,
    detect_format,
    read_records,
    resolve_format,
    sample_record,
)


def _head(path, n):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in itertools.islice(f, n)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _strip_source(records):
    return [{k: v for k, v in r.items() if k != "_source"} for r in records]


def _read_error(cfg) -> DataError:
    with pytest.raises(DataError) as info:
        list(read_records(cfg))
    return info.value


@pytest.fixture(scope="module")
def stsb_rows(data_dir):
    return _head(data_dir / "stsb" / "train.jsonl", 30)


@pytest.fixture(scope="module")
def nli_rows(data_dir):
    return _head(data_dir / "nli" / "snli_dev_triples.jsonl", 30)


# ---------------------------------------------------------------- detection


def test_detect_format_recognises_each_format_by_its_columns():
    assert detect_format(["text1", "text2", "label"]) == "A"
    assert detect_format(["positive", "query"]) == "B"
    assert detect_format(["query", "positive", "negative"]) == "C"
    assert FORMAT_COLUMNS["C"] == ("query", "positive", "negative")


def test_detect_format_error_lists_the_columns_it_got():
    with pytest.raises(ValueError, match=r"columns \[sentence1, sentence2, score\].*column_rename_mapping"):
        detect_format(["sentence1", "sentence2", "score"])


def test_auto_format_is_detected_from_the_first_row_after_renames(tmp_path, nli_rows):
    path = _write_jsonl(tmp_path / "q.jsonl", [{"text": r["query"], "pos": r["positive"]} for r in nli_rows])
    cfg = DatasetConfig(path=str(path), column_rename_mapping={"text": "query", "pos": "positive"})
    assert resolve_format(cfg) == "B"


# ---------------------------------------------------------------- real data and labels


def test_stsb_train_reads_all_rows_with_labels_scaled_from_0_5(data_dir):
    cfg = DatasetConfig(path=str(data_dir / "stsb" / "train.jsonl"), label_range=(0, 5))
    records = list(read_records(cfg))
    assert len(records) == 5749
    assert records[0]["label"] == 1.0  # 5.0 -> 1.0 (line 1)
    assert records[141]["label"] == 0.0  # 0.0 -> 0.0 (line 142)
    assert records[1]["label"] == pytest.approx(3.8 / 5)
    assert set(records[0]) == {"text1", "text2", "label", "_source"}
    assert records[0]["_source"] == f"{cfg.path}:1"


def test_stsb_duplicate_rows_are_valid_records(data_dir):
    cfg = DatasetConfig(path=str(data_dir / "stsb" / "train.jsonl"), label_range=(0, 5))
    records = _strip_source(read_records(cfg))
    counts = collections.Counter(json.dumps(r, sort_keys=True) for r in records)
    assert sum(n - 1 for n in counts.values() if n > 1) == 39  # the README's 39 exact duplicates
    assert records[63] == records[64]  # lines 64 and 65 are identical


def test_sick_r_labels_scale_from_1_5_so_1_becomes_0_and_5_becomes_1(data_dir):
    cfg = DatasetConfig(path=str(data_dir / "sick_r" / "semeval2014" / "train.jsonl"), label_range=(1, 5))
    labels = [r["label"] for r in read_records(cfg)]
    assert len(labels) == 4500
    assert min(labels) == 0.0 and max(labels) == 1.0
    assert labels.count(0.0) == 153 and labels.count(1.0) == 135  # the raw 1s and 5s


def test_sick_r_splits_have_the_readme_counts(data_dir):
    folder = data_dir / "sick_r" / "semeval2014"
    counts = {
        split: sum(1 for _ in read_records(DatasetConfig(path=str(folder / f"{split}.jsonl"), label_range=(1, 5))))
        for split in ("train", "trial", "test")
    }
    assert counts == {"train": 4500, "trial": 500, "test": 4927}


def test_nli_dev_triples_read_as_format_c(data_dir):
    records = list(read_records(DatasetConfig(path=str(data_dir / "nli" / "snli_dev_triples.jsonl"))))
    assert len(records) == 3172
    assert set(records[0]) == {"query", "positive", "negative", "_source"}


def test_labels_already_in_0_1_need_no_label_range(tmp_path, stsb_rows):
    rows = [dict(r, label=r["label"] / 5) for r in stsb_rows]
    records = list(read_records(DatasetConfig(path=str(_write_jsonl(tmp_path / "unit.jsonl", rows)))))
    assert [r["label"] for r in records] == [r["label"] for r in rows]


def test_labels_outside_0_1_without_label_range_ask_the_user_to_set_it(data_dir):
    err = _read_error(DatasetConfig(path=str(data_dir / "stsb" / "train.jsonl")))
    assert (err.row, err.field) == (1, "label")
    assert "train.jsonl line 1, field 'label': label 5 is outside [0, 1]" in str(err)
    assert "set label_range" in str(err)


# ---------------------------------------------------------------- round trips through every reader


def test_same_rows_as_jsonl_gz_parquet_csv_tsv_and_datasets_folder_give_identical_records(tmp_path, data_dir):
    from datasets import Dataset

    src = data_dir / "stsb" / "train.jsonl"
    rows = _head(src, 600)
    df = pd.DataFrame(rows)
    with gzip.open(tmp_path / "s.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "s.parquet", row_group_size=250)
    df.to_csv(tmp_path / "s.csv", index=False)
    df.to_csv(tmp_path / "s.tsv", index=False, sep="\t")
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "s_ds"))

    def records(path):
        return list(read_records(DatasetConfig(path=str(path), label_range=(0, 5))))

    expected = _strip_source(records(src)[:600])
    for name in ("s.jsonl.gz", "s.parquet", "s.csv", "s.tsv", "s_ds"):
        got = records(tmp_path / name)
        assert _strip_source(got) == expected, name
    assert records(tmp_path / "s.csv")[0]["_source"].endswith("s.csv:2")  # header is line 1
    assert records(tmp_path / "s.parquet")[0]["_source"].endswith("s.parquet:0")  # 0-based rows


def test_a_folder_of_files_reads_every_file_in_name_order(tmp_path, stsb_rows):
    _write_jsonl(tmp_path / "b.jsonl", stsb_rows[10:20])
    _write_jsonl(tmp_path / "a.jsonl", stsb_rows[:10])
    records = list(read_records(DatasetConfig(path=str(tmp_path), label_range=(0, 5))))
    assert [r["text1"] for r in records] == [r["text1"] for r in stsb_rows[:20]]
    assert records[10]["_source"] == f"{tmp_path / 'b.jsonl'}:1"


# ---------------------------------------------------------------- one test per bad input


def _stsb_with(tmp_path, stsb_rows, line, change, name="bad.jsonl"):
    rows = [dict(r) for r in stsb_rows[:20]]
    change(rows[line - 1])
    return DatasetConfig(path=str(_write_jsonl(tmp_path / name, rows)), label_range=(0, 5))


def test_malformed_json_line_error_names_file_and_line(tmp_path, stsb_rows):
    path = _write_jsonl(tmp_path / "broken.jsonl", stsb_rows[:10])
    lines = path.read_text().splitlines(keepends=True)
    lines[6] = lines[6].replace('"label":', '"label"')
    path.write_text("".join(lines))
    err = _read_error(DatasetConfig(path=str(path), label_range=(0, 5)))
    assert str(err).startswith(f"{path} line 7: not valid JSON: Expecting ':' delimiter")


def test_missing_column_error_names_file_line_and_field(tmp_path, stsb_rows):
    cfg = _stsb_with(tmp_path, stsb_rows, 5, lambda r: r.pop("label"))
    err = _read_error(cfg)
    assert (err.file, err.row, err.field) == (cfg.path, 5, "label")
    assert str(err).startswith(f"{cfg.path} line 5, field 'label': missing column 'label'")
    assert "column_rename_mapping" in str(err)


def test_unexpected_column_error_names_it_and_says_how_to_rename_or_drop_it(tmp_path, stsb_rows):
    cfg = _stsb_with(tmp_path, stsb_rows, 9, lambda r: r.update(id="pair-9"))
    err = _read_error(cfg)
    assert (err.row, err.field) == (9, "id")
    assert f"{cfg.path} line 9, field 'id': unexpected column 'id'" in str(err)
    assert "column_rename_mapping {'id': '<column>'}" in str(err) and "{'id': ''}" in str(err)


def test_wrong_type_text_error_names_file_line_and_field(tmp_path, stsb_rows):
    cfg = _stsb_with(tmp_path, stsb_rows, 3, lambda r: r.update(text2=42))
    err = _read_error(cfg)
    assert str(err) == (
        f"{cfg.path} line 3, field 'text2': expected a string or a list of strings, got a int (42)"
    )


def test_non_numeric_label_is_a_wrong_type_error(tmp_path, stsb_rows):
    cfg = _stsb_with(tmp_path, stsb_rows, 4, lambda r: r.update(label="high"))
    assert str(_read_error(cfg)) == f"{cfg.path} line 4, field 'label': label 'high' is not a number"


def test_boolean_label_is_a_wrong_type_error(tmp_path, stsb_rows):
    cfg = _stsb_with(tmp_path, stsb_rows, 2, lambda r: r.update(label=True))
    assert str(_read_error(cfg)) == f"{cfg.path} line 2, field 'label': label True is a boolean; expected a number"


def test_list_item_of_the_wrong_type_is_an_error(tmp_path, nli_rows):
    rows = [dict(r) for r in nli_rows[:5]]
    rows[3]["negative"] = [rows[3]["negative"], None]
    path = _write_jsonl(tmp_path / "neg.jsonl", rows)
    err = _read_error(DatasetConfig(path=str(path)))
    assert (err.row, err.field) == (4, "negative")
    assert "item 1 of the list is a NoneType" in str(err)


def test_empty_text_error_names_file_line_and_field(tmp_path, stsb_rows):
    cfg = _stsb_with(tmp_path, stsb_rows, 11, lambda r: r.update(text1=""))
    assert str(_read_error(cfg)) == f"{cfg.path} line 11, field 'text1': empty text"


def test_whitespace_only_text_is_an_error(tmp_path, stsb_rows):
    cfg = _stsb_with(tmp_path, stsb_rows, 12, lambda r: r.update(text2=" \t "))
    assert str(_read_error(cfg)) == f"{cfg.path} line 12, field 'text2': whitespace-only text"


def test_empty_list_is_an_error(tmp_path, nli_rows):
    rows = [dict(r) for r in nli_rows[:5]]
    rows[2]["positive"] = []
    path = _write_jsonl(tmp_path / "empty_list.jsonl", rows)
    err = _read_error(DatasetConfig(path=str(path)))
    assert str(err).startswith(f"{path} line 3, field 'positive': empty list")


def test_nan_label_error_names_file_line_and_field(tmp_path, stsb_rows):
    cfg = _stsb_with(tmp_path, stsb_rows, 17, lambda r: r.update(label=float("nan")))
    with open(cfg.path) as f:
        assert '"label": NaN' in f.read().splitlines()[16]  # json writes a bare NaN
    assert str(_read_error(cfg)) == f"{cfg.path} line 17, field 'label': NaN label"


def test_infinite_label_is_an_error(tmp_path, stsb_rows):
    cfg = _stsb_with(tmp_path, stsb_rows, 6, lambda r: r.update(label=float("inf")))
    assert str(_read_error(cfg)).startswith(f"{cfg.path} line 6, field 'label': infinite label")


def test_nan_label_in_parquet_names_the_0_based_row(tmp_path, stsb_rows):
    rows = [dict(r) for r in stsb_rows[:10]]
    rows[3]["label"] = math.nan
    path = tmp_path / "nan.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    err = _read_error(DatasetConfig(path=str(path), label_range=(0, 5)))
    assert str(err) == f"{path} row 3 (0-based), field 'label': NaN label"


def test_label_outside_label_range_error_names_file_line_and_field(tmp_path, stsb_rows):
    cfg = _stsb_with(tmp_path, stsb_rows, 8, lambda r: r.update(label=5.5))
    assert str(_read_error(cfg)) == f"{cfg.path} line 8, field 'label': label 5.5 is outside label_range [0, 5]"


def test_bad_csv_row_error_names_file_and_line(tmp_path, stsb_rows):
    path = tmp_path / "bad.csv"
    pd.DataFrame(stsb_rows[:10]).to_csv(path, index=False)
    lines = path.read_text().splitlines(keepends=True)
    lines[5] = lines[5].rstrip("\n") + ",extra\n"  # line 6
    path.write_text("".join(lines))
    err = _read_error(DatasetConfig(path=str(path), label_range=(0, 5)))
    assert str(err) == f"{path} line 6: expected 3 fields (header: text1, text2, label), got 4"


def test_csv_label_that_is_not_a_number_names_the_csv_line(tmp_path, stsb_rows):
    path = tmp_path / "label.csv"
    rows = [dict(r) for r in stsb_rows[:5]]
    rows[1]["label"] = "n/a"
    pd.DataFrame(rows).to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC)
    err = _read_error(DatasetConfig(path=str(path), label_range=(0, 5)))
    assert str(err) == f"{path} line 3, field 'label': label 'n/a' is not a number"


def test_error_policy_raises_the_first_bad_row(tmp_path, stsb_rows):
    rows = [dict(r) for r in stsb_rows[:20]]
    rows[4]["text1"] = ""
    rows[9]["label"] = 9
    cfg = DatasetConfig(path=str(_write_jsonl(tmp_path / "two.jsonl", rows)), label_range=(0, 5))
    reader = iter(read_records(cfg))
    assert len([next(reader) for _ in range(4)]) == 4
    with pytest.raises(DataError) as info:
        next(reader)
    assert info.value.row == 5


# ---------------------------------------------------------------- skip policy


def test_skip_policy_skips_bad_rows_and_reports_exact_count_and_locations(tmp_path, stsb_rows, caplog):
    rows = [json.dumps(r) for r in stsb_rows[:25]]
    rows[2] = rows[2][:-1]  # line 3: malformed JSON
    rows[6] = json.dumps(dict(stsb_rows[6], label=float("nan")))  # line 7
    rows[19] = json.dumps({"text1": stsb_rows[19]["text1"], "label": 1.0})  # line 20
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(rows) + "\n")
    cfg = DatasetConfig(path=str(path), label_range=(0, 5), on_bad_rows="skip")
    reader = RecordReader(cfg)
    with caplog.at_level(logging.WARNING, logger="angle_ray.data.formats"):
        records = list(reader)
    assert len(records) == 22
    assert [int(r["_source"].rsplit(":", 1)[1]) for r in records] == [
        n for n in range(1, 26) if n not in (3, 7, 20)
    ]
    assert reader.report.count == 3
    assert [(f, row) for f, row, _ in reader.report.first] == [(str(path), 3), (str(path), 7), (str(path), 20)]
    assert reader.report.first[1][2] == "field 'label': NaN label"
    assert reader.report.first[2][2].startswith("field 'text2': missing column 'text2'")
    assert "skipped 3 bad row(s)" in caplog.text
    for line in (3, 7, 20):
        assert f"{path} line {line}:" in caplog.text


def test_skip_policy_counts_every_bad_row_but_lists_only_the_first_20(tmp_path, stsb_rows):
    rows = [dict(r) for r in stsb_rows[:30]]
    for r in rows[:25]:
        r["label"] = -1
    report = BadRowReport()
    cfg = DatasetConfig(
        path=str(_write_jsonl(tmp_path / "many.jsonl", rows)), label_range=(0, 5), on_bad_rows="skip"
    )
    assert len(list(read_records(cfg, report))) == 5
    assert report.count == 25
    assert [row for _, row, _ in report.first] == list(range(1, 21))
    assert "... and 5 more" in report.summary(cfg.path)


def test_skip_policy_covers_bad_csv_rows(tmp_path, stsb_rows):
    path = tmp_path / "skip.csv"
    pd.DataFrame(stsb_rows[:8]).to_csv(path, index=False)
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = lines[3].rstrip("\n") + ",x\n"  # line 4
    path.write_text("".join(lines))
    reader = RecordReader(DatasetConfig(path=str(path), label_range=(0, 5), on_bad_rows="skip"))
    assert len(list(reader)) == 7
    assert reader.report.count == 1 and reader.report.first[0][:2] == (str(path), 4)


def test_skip_policy_with_no_usable_row_is_an_error(tmp_path, stsb_rows):
    rows = [dict(r, label=7) for r in stsb_rows[:3]]
    path = _write_jsonl(tmp_path / "all_bad.jsonl", rows)
    cfg = DatasetConfig(path=str(path), label_range=(0, 5), on_bad_rows="skip")
    with pytest.raises(DataError, match=r"no usable rows \(3 bad row\(s\) skipped\)"):
        list(read_records(cfg))


# ---------------------------------------------------------------- renames and prompts


def test_rename_mapping_maps_source_columns_to_format_columns(tmp_path, nli_rows):
    rows = [{"premise": r["query"], "entailment": r["positive"], "contradiction": r["negative"]} for r in nli_rows]
    path = _write_jsonl(tmp_path / "snli.jsonl", rows)
    cfg = DatasetConfig(
        path=str(path),
        column_rename_mapping={"premise": "query", "entailment": "positive", "contradiction": "negative"},
    )
    assert _strip_source(read_records(cfg)) == nli_rows


def test_rename_text_to_query_style_gives_format_b(tmp_path, nli_rows):
    path = _write_jsonl(tmp_path / "b.jsonl", [{"text": r["query"], "positive": r["positive"]} for r in nli_rows])
    cfg = DatasetConfig(path=str(path), column_rename_mapping={"text": "query"})
    records = list(read_records(cfg))
    assert set(records[0]) == {"query", "positive", "_source"}
    assert records[0]["query"] == nli_rows[0]["query"]


def test_rename_to_empty_string_drops_a_column(tmp_path, stsb_rows):
    rows = [dict(r, id=i) for i, r in enumerate(stsb_rows)]
    cfg = DatasetConfig(
        path=str(_write_jsonl(tmp_path / "ids.jsonl", rows)), label_range=(0, 5), column_rename_mapping={"id": ""}
    )
    assert len(list(read_records(cfg))) == len(stsb_rows)


def test_errors_on_renamed_fields_name_the_source_column(tmp_path, nli_rows):
    rows = [{"text": r["query"], "positive": r["positive"]} for r in nli_rows[:4]]
    rows[1]["text"] = ""
    cfg = DatasetConfig(path=str(_write_jsonl(tmp_path / "r.jsonl", rows)), column_rename_mapping={"text": "query"})
    assert str(_read_error(cfg)) == f"{cfg.path} line 2, field 'query': empty text (source column 'text')"


def test_rename_onto_an_existing_column_is_an_error(tmp_path, nli_rows):
    rows = [{"text": r["query"], "query": r["query"], "positive": r["positive"]} for r in nli_rows[:3]]
    cfg = DatasetConfig(
        path=str(_write_jsonl(tmp_path / "clash.jsonl", rows)), format="B", column_rename_mapping={"text": "query"}
    )
    assert "columns 'text' and 'query' both become 'query'" in str(_read_error(cfg))


def test_explicit_format_b_rejects_the_negative_column_of_a_triple(data_dir):
    err = _read_error(DatasetConfig(path=str(data_dir / "nli" / "snli_dev_triples.jsonl"), format="B"))
    assert (err.row, err.field) == (1, "negative")


def test_text_prompt_applies_to_both_texts_of_format_a(tmp_path, stsb_rows):
    cfg = DatasetConfig(
        path=str(_write_jsonl(tmp_path / "p.jsonl", stsb_rows[:3])),
        label_range=(0, 5),
        text_prompt='Represent: {text} {"json": "braces stay"}',
    )
    record = next(read_records(cfg))
    assert record["text1"] == 'Represent: A plane is taking off. {"json": "braces stay"}'
    assert record["text2"] == 'Represent: An air plane is taking off. {"json": "braces stay"}'


def test_query_and_doc_prompts_apply_to_every_item_of_format_c(tmp_path, nli_rows):
    row = dict(nli_rows[0], negative=[nli_rows[0]["negative"], nli_rows[1]["negative"]])
    cfg = DatasetConfig(
        path=str(_write_jsonl(tmp_path / "c.jsonl", [row])), query_prompt="query: {text}", doc_prompt="passage: {text}"
    )
    record = next(read_records(cfg))
    assert record["query"] == "query: " + row["query"]
    assert record["positive"] == "passage: " + row["positive"]
    assert record["negative"] == ["passage: " + t for t in row["negative"]]


# ---------------------------------------------------------------- list fields and sampling


@pytest.fixture(scope="module")
def grouped_nli(data_dir):
    """SNLI dev premises that occur several times: one row per premise with lists."""
    groups = collections.defaultdict(lambda: {"positive": [], "negative": []})
    for r in _head(data_dir / "nli" / "snli_dev_triples.jsonl", 3172):
        groups[r["query"]]["positive"].append(r["positive"])
        groups[r["query"]]["negative"].append(r["negative"])
    return [{"query": q, **g} for q, g in groups.items() if len(g["positive"]) >= 2]


def test_list_fields_are_kept_as_lists_by_the_reader(tmp_path, grouped_nli):
    path = _write_jsonl(tmp_path / "lists.jsonl", grouped_nli)
    records = _strip_source(read_records(DatasetConfig(path=str(path))))
    assert len(records) == 226
    assert records == grouped_nli


def test_sampling_is_reproducible_for_the_same_seed_epoch_and_key(grouped_nli):
    rec = grouped_nli[0]
    picks = {json.dumps(sample_record(rec, seed=42, epoch=3, key="f:1")) for _ in range(5)}
    assert len(picks) == 1
    one = sample_record(rec, seed=42, epoch=3, key="f:1")
    assert one["positive"] in rec["positive"]
    assert isinstance(one["negative"], list) and len(one["negative"]) == 1
    assert one["query"] == rec["query"]
    assert rec["positive"] == grouped_nli[0]["positive"]  # the input record is not modified


def test_sampling_over_many_epochs_picks_every_item(grouped_nli):
    rec = next(r for r in grouped_nli if len(r["positive"]) == 3)
    picked = {sample_record(rec, seed=0, epoch=e, key="f:7")["positive"] for e in range(200)}
    assert picked == set(rec["positive"])
    by_seed = [sample_record(rec, seed=s, epoch=0, key="f:7")["positive"] for s in range(50)]
    assert len(set(by_seed)) > 1


def test_sampling_negatives_is_without_replacement_when_the_list_is_long_enough(grouped_nli):
    rec = next(r for r in grouped_nli if len(r["negative"]) == 3)
    for epoch in range(30):
        negs = sample_record(rec, seed=1, epoch=epoch, key="k", num_negatives=3)["negative"]
        assert sorted(negs) == sorted(rec["negative"])
    five = sample_record(rec, seed=1, epoch=0, key="k", num_negatives=5)["negative"]
    assert len(five) == 5 and set(five) == set(rec["negative"])


def test_string_negative_becomes_a_list_after_sampling(nli_rows):
    rec = dict(nli_rows[0])
    assert sample_record(rec, seed=0, epoch=0, key="x")["negative"] == [rec["negative"]]
    assert sample_record(rec, seed=0, epoch=0, key="x", num_negatives=2)["negative"] == [rec["negative"]] * 2
    stsb = {"text1": "a", "text2": "b", "label": 0.5, "_source": "f:1"}
    assert sample_record(stsb, seed=0, epoch=0, key="f:1") == stsb


def test_row_normaliser_pickles_for_ray_workers(stsb_rows):
    norm = RowNormaliser(DatasetConfig(path="x.jsonl", label_range=(0, 5)), "A")
    back = pickle.loads(pickle.dumps(norm))
    row = stsb_rows[0]
    assert back(row, "x.jsonl", 1) == {"text1": row["text1"], "text2": row["text2"], "label": 1.0}
