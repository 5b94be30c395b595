"""Corpus reading for angle-ray: raw rows -> validated, normalised Format A / B / C records.

    from angle_ray.data import RecordReader
    reader = RecordReader(DatasetConfig(path="../shared/data/stsb/train.jsonl", label_range=(0, 5)))
    records = list(reader)      # [{"text1", "text2", "label" in [0, 1], "_source"}, ...]

``readers`` streams rows out of JSONL / CSV / TSV / Parquet / datasets folders, ``formats``
validates and normalises them, ``semeval`` and ``beir`` read the evaluation layouts.
"""

from angle_ray.data.beir import BeirData, load_beir, read_qrels, split_qrels_by_query
from angle_ray.data.errors import DataError
from angle_ray.data.formats import (
    FORMAT_COLUMNS,
    BadRowReport,
    RecordReader,
    RowNormaliser,
    detect_format,
    read_records,
    rename_columns,
    resolve_format,
    sample_record,
)
from angle_ray.data.readers import SUPPORTED_SUFFIXES, iter_rows, list_files, row_unit
from angle_ray.data.semeval import StsPairs, read_sts_folder, read_sts_pairs

__all__ = [
    "FORMAT_COLUMNS",
    "SUPPORTED_SUFFIXES",
    "BadRowReport",
    "BeirData",
    "DataError",
    "RecordReader",
    "RowNormaliser",
    "StsPairs",
    "detect_format",
    "iter_rows",
    "list_files",
    "load_beir",
    "read_qrels",
    "read_records",
    "read_sts_folder",
    "read_sts_pairs",
    "rename_columns",
    "resolve_format",
    "row_unit",
    "sample_record",
    "split_qrels_by_query",
]
