"""angle_ray.data.beir: BEIR-layout loading (real SciFact) and the query-disjoint dev split."""

import gzip
import json

import pytest

from angle_ray.data import DataError, load_beir, split_qrels_by_query


@pytest.fixture(scope="module")
def scifact(data_dir):
    return load_beir(data_dir / "scifact", split="train")


@pytest.fixture(scope="module")
def scifact_raw(data_dir):
    with gzip.open(data_dir / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    with open(data_dir / "scifact" / "queries.jsonl", encoding="utf-8") as f:
        queries = [json.loads(line) for line in f]
    qrels = (data_dir / "scifact" / "qrels" / "train.tsv").read_text().splitlines()
    return docs, queries, qrels


def test_scifact_loads_with_the_readme_counts(scifact):
    assert len(scifact.corpus) == 5183
    assert len(scifact.queries) == 1109
    assert len(scifact.qrels) == 809
    assert sum(len(d) for d in scifact.qrels.values()) == 919


def test_document_text_is_title_space_text(scifact, scifact_raw):
    doc = scifact_raw[0][0]
    assert doc["title"]
    assert scifact.corpus[doc["id"]] == f"{doc['title']} {doc['text']}"


def test_qrels_map_query_to_judged_documents_with_integer_scores(scifact, scifact_raw):
    qid, doc_id, score = scifact_raw[2][1].split("\t")  # first judgement after the header
    assert scifact.qrels[qid][doc_id] == int(score) == 1
    assert all(isinstance(s, int) for d in scifact.qrels.values() for s in d.values())


def test_dev_split_is_deterministic_and_disjoint_by_query(scifact):
    train, dev = split_qrels_by_query(scifact.qrels, dev_fraction=0.2, seed=0)
    again_train, again_dev = split_qrels_by_query(scifact.qrels, dev_fraction=0.2, seed=0)
    assert (train, dev) == (again_train, again_dev)
    assert not set(train) & set(dev)
    assert set(train) | set(dev) == set(scifact.qrels)
    assert len(dev) == round(0.2 * 809) == 162
    assert {q: d for part in (train, dev) for q, d in part.items()} == scifact.qrels
    _, other_dev = split_qrels_by_query(scifact.qrels, dev_fraction=0.2, seed=1)
    assert set(other_dev) != set(dev)


def test_dev_split_does_not_depend_on_dict_order(scifact):
    reversed_qrels = dict(reversed(list(scifact.qrels.items())))
    assert set(split_qrels_by_query(reversed_qrels, seed=3)[1]) == set(split_qrels_by_query(scifact.qrels, seed=3)[1])


def test_dev_fraction_must_be_between_0_and_1(scifact):
    with pytest.raises(ValueError, match="dev_fraction"):
        split_qrels_by_query(scifact.qrels, dev_fraction=1.0)


@pytest.fixture
def small_beir(tmp_path, scifact_raw):
    """A SciFact slice in BEIR layout: the docs of the first 20 judgements, all queries, with
    `_id` keys (the other BEIR spelling) and a plain corpus.jsonl."""
    docs, queries, qrels = scifact_raw
    lines = qrels[:21]
    wanted = {line.split("\t")[1] for line in lines[1:]}
    folder = tmp_path / "scifact_small"
    (folder / "qrels").mkdir(parents=True)
    kept = [{"_id": d["id"], "title": d["title"], "text": d["text"]} for d in docs if d["id"] in wanted]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in kept))
    renamed = [{"_id": q["id"], "text": q["text"]} for q in queries]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in renamed))
    (folder / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_underscore_id_and_plain_corpus_jsonl_are_read(small_beir):
    data = load_beir(small_beir)
    judged_docs = {doc for docs in data.qrels.values() for doc in docs}
    assert set(data.corpus) == judged_docs and len(judged_docs) == 15  # some docs are judged twice
    assert len(data.queries) == 1109
    assert sum(len(d) for d in data.qrels.values()) == 20


def test_qrels_entry_with_an_unknown_document_is_an_error_naming_file_and_line(small_beir, scifact_raw):
    path = small_beir / "qrels" / "train.tsv"
    qid = scifact_raw[2][1].split("\t")[0]
    with open(path, "a") as f:
        f.write(f"{qid}\tno-such-doc\t1\n")
    with pytest.raises(DataError) as info:
        load_beir(small_beir)
    assert str(info.value) == f"{path} line 22, field 'corpus-id': unknown document id 'no-such-doc' (not in corpus)"


def test_qrels_entry_with_an_unknown_query_is_an_error(small_beir, scifact_raw):
    path = small_beir / "qrels" / "train.tsv"
    doc_id = scifact_raw[2][1].split("\t")[1]
    with open(path, "a") as f:
        f.write(f"q-missing\t{doc_id}\t1\n")
    with pytest.raises(DataError, match=r"train\.tsv line 22, field 'query-id': unknown query id 'q-missing'"):
        load_beir(small_beir)


def test_malformed_qrels_row_is_an_error_naming_file_and_line(small_beir):
    path = small_beir / "qrels" / "train.tsv"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace("\t", " ")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.tsv line 5: expected 3 tab-separated fields, got 1"):
        load_beir(small_beir)


def test_non_integer_qrels_score_is_an_error(small_beir):
    path = small_beir / "qrels" / "train.tsv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\trelevant"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.tsv line 4, field 'score': score 'relevant' is not an integer"):
        load_beir(small_beir)


def test_malformed_corpus_line_is_an_error_naming_file_and_line(small_beir):
    path = small_beir / "corpus.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:40]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl line 3: not valid JSON"):
        load_beir(small_beir)


def test_corpus_row_without_an_id_or_text_is_an_error(small_beir):
    path = small_beir / "corpus.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[1])
    lines[1] = json.dumps({"title": row["title"], "text": row["text"]})
    row = json.loads(lines[5])
    lines[5] = json.dumps({"_id": row["_id"], "title": row["title"]})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl line 2, field 'id': missing or invalid id"):
        load_beir(small_beir)
    lines[1] = json.dumps(dict(row, _id="fresh-id", text="x"))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl line 6, field 'text': missing 'text'"):
        load_beir(small_beir)


def test_duplicate_document_id_is_an_error(small_beir):
    path = small_beir / "corpus.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[0]]) + "\n")
    with pytest.raises(DataError, match=rf"corpus\.jsonl line {len(lines) + 1}: duplicate id"):
        load_beir(small_beir)


def test_missing_split_names_the_available_ones(small_beir):
    with pytest.raises(FileNotFoundError, match=r"no qrels for split 'test'.*available: train"):
        load_beir(small_beir, split="test")


def test_qrels_without_the_beir_header_is_an_error(small_beir):
    path = small_beir / "qrels" / "train.tsv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(DataError, match=r"train\.tsv line 1: expected the header 'query-id<TAB>corpus-id<TAB>score'"):
        load_beir(small_beir)
